#!/usr/bin/env python3
"""Replay a ``lopinfer bench`` run's plans under today's cost model, beside the model
that ran them: which rule of the simulator explains a prediction error.

    scripts/prediction_replay.py bench-out/ lopinfer:kapao

Reads the run's records, both peers' profiles and plan books (``bench-out/cache``),
recompiles each method's plan, and simulates it at the median link estimates of its
inferences twice: with the current staged transfers (encode, wire and decode overlap
across frames, ``CostModel.stages``) and with one FIFO per direction (the model before
2026-12-03). Prints per method the measured median, the prediction recorded during the
run, and each replay with its error. The profiles are the run's own; a cache copied
from another run carries that run's device stretch and mispredicts local work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import lopinfer
from lopinfer.models import load_model
from lopinfer.runtime.program import compile_plan
from lopinfer.scheduler.cost import CostModel, Link, Stages, costs_from_json
from lopinfer.scheduler.plan import Plan
from lopinfer.scheduler.simulator import simulate


class OneFifo(CostModel):
    """The transfer rule before 2026-12-03: a frame's encode, wire and decode in a row."""

    def stages(self, receiver: str, nbytes: int, value: str | None = None) -> Stages:
        st = super().stages(receiver, nbytes, value)
        return st._replace(encode=0.0, wire=st.encode + st.wire + st.decode, decode=0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("model", help="the MODEL string the run measured, e.g. lopinfer:kapao")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = args.folder / "cache"
    loaded = load_model(args.model)
    graph = lopinfer.capture(loaded.module, (loaded.example_input(),))
    (srv_file,) = (cache / "server" / "profiles").glob("*.json")
    (dev_file,) = (cache / "device" / "profiles").glob("*.json")
    server, device = (costs_from_json(f.read_text()) for f in (srv_file, dev_file))
    plans = {}
    for f in (cache / "device" / "plans").glob("*.json"):
        for v in json.loads(f.read_text())["plans"].values():
            plans[v["plan"]["name"]] = v["plan"]
    records = [json.loads(line) for line in (args.folder / "records.jsonl").read_text().splitlines()
               if line.strip()]
    print(f"{'method':<12} {'plan':<24} {'measured s':>10} {'recorded':>9} "
          f"{'one FIFO':>17} {'staged':>17}")
    for method in sorted({r["method"] for r in records}):
        rs = [r for r in records if r["method"] == method and not r.get("fell_back")]
        if not rs or rs[0]["plan"] not in plans:
            print(f"{method:<12} (plan not in the run's books)")
            continue
        meas = statistics.median(r["latency_s"] for r in rs)
        recorded = statistics.median(r["predicted_s"] for r in rs)
        program = compile_plan(graph, Plan.from_json(json.dumps(plans[rs[0]["plan"]])))
        up = statistics.median(r["bandwidth_up"] for r in rs)
        down = statistics.median(r["bandwidth_down"] for r in rs)
        cells = []
        for cls in (OneFifo, CostModel):
            cm = cls(device, server, Link(up), Link(down))
            pred = simulate(getattr(program, "program", program), cm).latency_s
            cells.append(f"{pred:8.3f} ({(pred - meas) / meas:+6.1%})")
        print(f"{method:<12} {rs[0]['plan']:<24} {meas:10.3f} {recorded:9.3f} "
              f"{cells[0]:>17} {cells[1]:>17}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
