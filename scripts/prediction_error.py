#!/usr/bin/env python3
"""Predicted vs measured latency per planner, from a ``lopinfer bench`` output folder.

    scripts/prediction_error.py bench-out/            # reads bench-out/records.jsonl

Per (model, scenario, method): the median measured latency, the median prediction (the
simulator at the estimate in force before each inference) and the error of the median,
(pred - meas) / meas; then the median |error| per planner and over everything.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(folder: str) -> int:
    records = [json.loads(line) for line in (Path(folder) / "records.jsonl").read_text().splitlines()
               if line.strip()]
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in records:
        if r.get("predicted_s") and not r.get("fell_back"):
            groups[(r["model"], r["scenario"], r["method"])].append(r)
    per_method: dict[str, list[float]] = defaultdict(list)
    print(f"{'model':<20} {'scenario':<14} {'method':<16} {'meas ms':>9} {'pred ms':>9} {'error':>7}  plan")
    for (model, scen, method), rs in sorted(groups.items()):
        meas = statistics.median(r["latency_s"] for r in rs)
        pred = statistics.median(r["predicted_s"] for r in rs)
        err = (pred - meas) / meas
        per_method[method].append(abs(err))
        plan = statistics.mode(r["plan"] for r in rs)
        print(f"{model:<20} {scen:<14} {method:<16} {meas * 1e3:9.1f} {pred * 1e3:9.1f} {err:+7.1%}  {plan}")
    print()
    for method, errs in sorted(per_method.items()):
        print(f"median |error| {method:<16} {statistics.median(errs):6.1%}  over {len(errs)} cells")
    everything = [e for errs in per_method.values() for e in errs]
    print(f"median |error| {'all':<16} {statistics.median(everything):6.1%}  over {len(everything)} cells")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "bench-out"))
