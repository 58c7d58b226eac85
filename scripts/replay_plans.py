#!/usr/bin/env python3
"""Plan a ``lopinfer bench`` run's cells again with today's planners, from the profiles
the run cached: which plan each method would choose now, and its prediction, beside
what the run chose and measured. The tool that found stop 25's search faults (the cut
bounds that ate the budget, offload never streamed under the energy objective).

    scripts/replay_plans.py bench-out/                     # every model of the run
    scripts/replay_plans.py bench-out/ --models resnet152 --seconds 10

Reads ``bench-out/spec.json``, ``records.jsonl`` and both peers' profiles
(``bench-out/cache/{device,server}/profiles``). A profile is matched to a model by its
nodes, not by the content hash: the bench seeds once for all its models, so a model
loaded alone has other weights (another hash) but the same graph and the same costs.
The link is each cell's median estimate of lopinfer's inferences (``--rtt`` round trip);
the planners run with the default search budget unless ``--seconds`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import lopinfer
from lopinfer.models import load_model
from lopinfer.scheduler.cost import CostModel, Link, PeerCosts, costs_from_json
from lopinfer.scheduler.energy import Objective
from lopinfer.scheduler.planners import plan_all
from lopinfer.scheduler.search import Budget


def matching_profile(folder: Path, names: set[str]) -> PeerCosts | None:
    """The profile in ``folder`` whose nodes are the graph's (None if none is)."""
    for f in sorted(folder.glob("*.json")):
        costs = costs_from_json(f.read_text())
        if set(costs.nodes) == names:
            return costs
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a `lopinfer bench --out` folder")
    ap.add_argument("--models", help="comma-separated model names (default: all the run's)")
    ap.add_argument("--seconds", type=float, default=Budget().seconds, help="search budget")
    ap.add_argument("--rtt", type=float, default=1.0, help="round trip in ms")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = json.loads((args.folder / "spec.json").read_text())
    records = [json.loads(line) for line in
               (args.folder / "records.jsonl").read_text().splitlines() if line.strip()]
    methods = list(spec["methods"])
    wanted = set(args.models.split(",")) if args.models else None
    cache = args.folder / "cache"
    for m in spec["models"]:
        loaded = load_model(m["spec"])
        if wanted is not None and loaded.name not in wanted:
            continue
        graph = lopinfer.capture(loaded.module, (loaded.example_input(m.get("input_shape")),))
        names = {n.name for n in graph}
        device = matching_profile(cache / "device" / "profiles", names)
        server = matching_profile(cache / "server" / "profiles", names)
        if device is None or server is None:
            print(f"{loaded.name}: no cached profile with this graph's nodes")
            continue
        for scenario in dict.fromkeys(r["scenario"] for r in records
                                      if r["model"] == loaded.name):
            cell = [r for r in records if r["model"] == loaded.name
                    and r["scenario"] == scenario and not r.get("fell_back")]
            ours = [r for r in cell if r["method"] == "lopinfer"] or cell
            up = statistics.median(r["bandwidth_up"] for r in ours)
            down = statistics.median(r["bandwidth_down"] for r in ours)
            half = args.rtt / 2e3
            cost = CostModel(device, server, Link(up, half), Link(down, half))
            t = time.perf_counter()
            now = plan_all(graph, cost, Objective(), methods=methods,
                           budget=Budget(seconds=args.seconds))
            print(f"== {loaded.name} {scenario}: estimate up {up / 1e6:.3f} MB/s, down "
                  f"{down / 1e6:.3f} MB/s; planned in {time.perf_counter() - t:.1f} s")
            print(f"   {'method':<16} {'ran (most often)':<36} {'p50 ms':>9} "
                  f"{'now':<36} {'pred ms':>9} {'energy J':>9} {'cands':>5}")
            for method in methods:
                rs = [r for r in cell if r["method"] == method]
                ran = max({r["plan"] for r in rs}, key=[r["plan"] for r in rs].count) \
                    if rs else "-"
                p50 = statistics.median(r["latency_s"] for r in rs) * 1e3 if rs else float("nan")
                s = now.get(method)
                if s is None:
                    print(f"   {method:<16} {ran:<36} {p50:9.1f} (not planned here)")
                    continue
                print(f"   {method:<16} {ran:<36} {p50:9.1f} {s.plan.name:<36} "
                      f"{s.latency_s * 1e3:9.1f} {s.energy_j:9.3f} {s.plan.candidates or '':>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
