#!/usr/bin/env python3
"""How close the planners come to the physical limit, on the simulator.

For each workload (the lab's ``lopinfer:kapao``, ``agrnav``, ``segment``; a VGG19-BN
at 224x224 built here; the reference nets of ``tests/nets.py`` when run from a
checkout), FLOP-based costs: the server at ``--server-flops`` (an edge GPU), the device
``--slowdown`` times slower (``--device-fixed same``: the same 20 us per kernel call as
the server; ``scaled``: 18x that too, as ``PeerCosts.scaled``), a link of
``--bandwidth`` both ways (default 11 MB/s, the seed's indoor median, ``bench.traces``).
Prints the limit (:func:`~lopinfer.scheduler.limit.physical_limit`, with every plan
found), the old grid search's and the new search's predicted latency and their ratio
to the limit, the candidates each simulated and the seconds each took.

    PYTHONPATH=src scripts/plan_vs_limit.py [--models kapao,agrnav] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from deploy_time import vgg19_bn  # torchvision's layers, written out (scripts/)
from torch import nn

import lopinfer
from lopinfer.scheduler.cost import CostModel, Link, flop_costs
from lopinfer.scheduler.limit import physical_limit
from lopinfer.scheduler.planners import plan_all, plan_lopinfer_grid
from lopinfer.scheduler.search import Budget

LAB = ("kapao", "agrnav", "segment")
REF = ("vgg", "resnet", "densenet", "mobilenet_v3", "unet")


def load(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "vgg19_bn":
        return vgg19_bn(), torch.randn(1, 3, 224, 224)
    if name in LAB:
        from lopinfer.workloads import build

        w = build(name)
        return w.make(), w.example()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from nets import REFERENCE_NETS

    return REFERENCE_NETS[name]()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join((*LAB, "vgg19_bn", *REF)))
    p.add_argument("--bandwidth", type=float, default=11e6, help="bytes/s both ways")
    p.add_argument("--server-flops", type=float, default=4e12)
    p.add_argument("--slowdown", type=float, default=18.0)
    p.add_argument("--device-fixed", choices=("same", "scaled"), default="same")
    p.add_argument("--candidates", type=int, default=Budget().candidates)
    p.add_argument("--seconds", type=float, default=Budget().seconds)
    p.add_argument("--no-old", action="store_true", help="skip the old grid search")
    p.add_argument("--json")
    args = p.parse_args()
    budget = Budget(candidates=args.candidates, seconds=args.seconds)
    rows = []
    head = (f"{'workload':14s} {'MB/s':>5s} {'limit ms':>9s} {'old ms':>9s} {'old x':>6s} "
            f"{'new ms':>9s} {'new x':>6s} {'cands old/new':>13s} {'plan s old/new':>14s}  new plan")
    print(head)
    for name in args.models.split(","):
        model, x = load(name)
        g = lopinfer.capture(model, (x,))
        server = flop_costs(g, args.server_flops, name="server")
        if args.device_fixed == "scaled":
            client = server.scaled(args.slowdown, "client")
        else:
            client = flop_costs(g, args.server_flops / args.slowdown, name="client",
                                bytes_per_s=5e9 / args.slowdown)
        bw = args.bandwidth
        cm = CostModel(client, server, Link(bw), Link(bw))
        base = plan_all(g, cm, methods=["local", "offload", "neurosurgeon", "dads"])
        old = None
        if not args.no_old:
            old = plan_lopinfer_grid(g, cm, _obj(), list(base.values()))
        new = plan_all(g, cm, methods=["local", "offload", "neurosurgeon", "dads", "lopinfer"],
                       budget=budget)["lopinfer"]
        lim = physical_limit(g, cm, also=[new.plan] + ([old.plan] if old else []))
        L = lim.seconds
        row = {"workload": name, "nodes": len(g), "bandwidth": bw, "limit_ms": 1e3 * L,
               "limit_plan": lim.best.plan,
               "new_ms": 1e3 * new.latency_s, "new_x": new.latency_s / L,
               "new_candidates": new.plan.candidates, "new_s": new.plan.search_s,
               "new_plan": new.plan.name}
        if old is not None:
            row.update(old_ms=1e3 * old.latency_s, old_x=old.latency_s / L,
                       old_candidates=old.plan.candidates, old_s=old.plan.search_s,
                       old_plan=old.plan.name)
        rows.append(row)
        o = (f"{row['old_ms']:9.2f} {row['old_x']:6.3f}" if old else f"{'-':>9s} {'-':>6s}")
        oc = f"{row['old_candidates']}" if old else "-"
        os_ = f"{row['old_s']:.2f}" if old else "-"
        print(f"{name:14s} {bw / 1e6:5.1f} {row['limit_ms']:9.2f} {o} {row['new_ms']:9.2f} "
              f"{row['new_x']:6.3f} {oc + '/' + str(row['new_candidates']):>13s} "
              f"{os_ + '/' + format(row['new_s'], '.2f'):>14s}  {row['new_plan']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def _obj():  # type: ignore[no-untyped-def]
    from lopinfer.scheduler.energy import Objective

    return Objective()


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
