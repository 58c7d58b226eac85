#!/usr/bin/env python3
"""What the physical limit leaves out: dependencies, or per-tile costs?

The limit (:func:`~lopinfer.scheduler.limit.physical_limit`) is each plan's busiest
resource, as if every resource could be busy from the first instant to the last. A
real schedule also waits on dependencies: an output row needs the input rows of its
receptive field first, and a halo crosses the link before the next layer's tile can
start. This script separates the two costs on the simulator, with the costs of
``scripts/plan_vs_limit.py`` (FLOPs, the device ``--slowdown`` times slower, 11 MB/s):

- ``fluid``: the limit's own plan (and offload's, and the planner's) simulated with
  every per-call, per-frame, codec and latency cost set to zero, at fine tiles (the
  wavefront of the input in 8-64 pieces, or 16/64 equal tiles per node), the best
  of them. What is left above the limit is the dependencies' cost: no tiling and no
  overhead cut can take a plan of that assignment below it.
- ``planned``: the planner's prediction with every cost (``plan_vs_limit``'s ``new``).

    PYTHONPATH=src scripts/fluid_gap.py [--models kapao,agrnav,segment,vgg19_bn]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import lopinfer
from lopinfer.scheduler.cost import CostModel, Link, NodeCost, PeerCosts, flop_costs
from lopinfer.scheduler.energy import Objective
from lopinfer.scheduler.limit import physical_limit, plan_bound
from lopinfer.scheduler.plan import Plan
from lopinfer.scheduler.planners import evaluate_ordered, plan_all
from lopinfer.scheduler.search import retile
from lopinfer.scheduler.wavefront import align

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from plan_vs_limit import load  # noqa: E402  (scripts/)


def overhead_free(cm: CostModel) -> CostModel:
    """``cm`` with only the per-row compute and the wire bytes left."""
    def peer(pc: PeerCosts) -> PeerCosts:
        return PeerCosts({k: NodeCost(0.0, v.per_row) for k, v in pc.nodes.items()}, 0.0,
                         f"{pc.name}-free", 0.0, 0.0, 0.0, 0.0, dict(pc.lz4_ratio), {})

    return CostModel(peer(cm.client), peer(cm.server), Link(cm.up.bandwidth, 0.0, 0.0),
                     Link(cm.down.bandwidth, 0.0, 0.0), dict(cm.info), cm.compression)


def fluid(graph, plan: Plan, free: CostModel) -> tuple[float, str]:
    """The best overhead-free latency of ``plan``'s assignment over fine tilings."""
    obj = Objective()
    base = replace(plan, ranks={}, tiles=None, name=plan.base_name)
    tilings = {f"w{s}": (lambda p, s=s: align(graph, p, s)) for s in (8, 16, 32, 64)}
    tilings |= {f"t{k}": (lambda p, k=k: retile(graph, p, lambda n, peer, rows: k,
                                                 name=f"{p.base_name}~t{k}"))
                for k in (16, 64)}
    best = (float("inf"), "")
    for label, tile in tilings.items():
        try:
            s = evaluate_ordered(graph, tile(base), free, obj)
        except Exception as exc:  # a tiling this assignment cannot take: skip it
            print(f"  ({plan.base_name} {label}: {exc})", file=sys.stderr)
            continue
        best = min(best, (s.latency_s, f"{s.plan.name}"))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="kapao,agrnav,segment,vgg19_bn")
    p.add_argument("--bandwidth", type=float, default=11e6)
    p.add_argument("--server-flops", type=float, default=4e12)
    p.add_argument("--slowdown", type=float, default=18.0)
    args = p.parse_args()
    print(f"{'workload':10s} {'limit ms':>9s} {'plan':>8s} {'fluid ms':>9s} {'x limit':>7s}  "
          f"tiling")
    for name in args.models.split(","):
        t0 = time.perf_counter()
        model, x = load(name)
        g = lopinfer.capture(model, (x,))
        server = flop_costs(g, args.server_flops, name="server")
        client = flop_costs(g, args.server_flops / args.slowdown, name="client",
                            bytes_per_s=5e9 / args.slowdown)
        cm = CostModel(client, server, Link(args.bandwidth), Link(args.bandwidth))
        free = overhead_free(cm)
        chosen = plan_all(g, cm, methods=["local", "offload", "neurosurgeon", "dads",
                                          "lopinfer"])
        lim = physical_limit(g, cm, also=[chosen["lopinfer"].plan])
        L = lim.seconds
        assert lim.plan is not None
        rows = [("limit's", lim.plan)] + [(k, chosen[k].plan) for k in ("offload", "lopinfer")
                                         if chosen[k].plan.uses_server()]
        for label, plan in rows:
            f, how = fluid(g, plan, free)
            b = plan_bound(g, plan, cm).seconds
            print(f"{name:10s} {1e3 * L:9.1f} {label:>8s} {1e3 * f:9.1f} {f / L:7.3f}  "
                  f"{how} (bound {b / L:.3f}x)", flush=True)
        lp = chosen["lopinfer"]
        print(f"{name:10s} {1e3 * L:9.1f} {'planned':>8s} {1e3 * lp.latency_s:9.1f} "
              f"{lp.latency_s / L:7.3f}  {lp.plan.name} (every cost; "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
