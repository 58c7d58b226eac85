#!/usr/bin/env python3
"""The issue's targets and a Markdown table in testbed milliseconds, from a
``lopinfer bench`` output folder (edge lab, time-dilated).

    scripts/testbed_table.py bench-out/            # reads bench-out/records.jsonl

Table: per (model, scenario) the median latency of each method divided by the run's
dilation (the research testbed's milliseconds), and lopinfer's speedup over the best
other method (planners only: lopinfer-energy is lopinfer's own energy variant). Then
the targets, each as a ratio measured in the same run:

- lopinfer's median <= the best other method's, per model and scenario;
- >= 1.3x over the best other method on vgg19_bn at the indoor median (fixed:11MB/s);
- lopinfer's measured latency within 1.25x of its plan's pipeline bound on vgg19_bn;
- lopinfer-energy: device energy <= offload's at no more than offload's latency.

A miss where lopinfer ran the same plan as the best other method (most often, in
every repetition) is marked "same plan": the two ran identical work, interleaved,
and the difference is the device's throttling noise, not the planner's choice.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

BASELINES = ("local", "offload", "neurosurgeon", "dads")
ORDER = (*BASELINES, "lopinfer", "lopinfer-energy")


def _median(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs)


def _plan(rs: list[dict]) -> str:
    return statistics.mode(r["plan"] for r in rs)


def main(folder: str) -> int:
    records = [json.loads(line) for line in (Path(folder) / "records.jsonl").read_text().splitlines()
               if line.strip()]
    cells: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        cells[(r["model"], r["scenario"])][r["method"]].append(r)
    methods = [m for m in ORDER if any(m in c for c in cells.values())]
    print("| model | scenario | " + " | ".join(methods) + " | lopinfer vs best other |")
    print("|---|---|" + "---:|" * (len(methods) + 1))
    misses, notes = [], []
    for (model, scen), by in cells.items():
        ms = {m: _median(rs, "latency_s") / rs[0]["dilation"] * 1e3 for m, rs in by.items()}
        others = [ms[m] for m in BASELINES if m in ms]
        ratio = min(others) / ms["lopinfer"] if others and "lopinfer" in ms else float("nan")
        row = " | ".join(f"{ms[m]:.1f}" if m in ms else "-" for m in methods)
        print(f"| {model} | {scen} | {row} | {ratio:.2f}x |")
        if ratio < 1:
            best = min((m for m in BASELINES if m in ms), key=ms.__getitem__)
            same = _plan(by["lopinfer"]) == _plan(by[best])
            misses.append(f"{model} {scen}: lopinfer {ms['lopinfer']:.1f} vs {best} "
                          f"{ms[best]:.1f} ({ratio:.2f}x"
                          + (", same plan)" if same else f"; {_plan(by['lopinfer'])} vs "
                             f"{_plan(by[best])})"))
        lop = by.get("lopinfer", [])
        if model.startswith("vgg19") and lop:
            meas, bound = _median(lop, "latency_s"), _median(lop, "bound_s")
            notes.append(f"{model} {scen}: lopinfer {ratio:.2f}x the best other; "
                         f"measured/bound {meas / bound:.2f} (target <= 1.25)")
        en, off = by.get("lopinfer-energy", []), by.get("offload", [])
        if en and off:
            e_en, e_off = _median(en, "energy_j"), _median(off, "energy_j")
            t_en, t_off = _median(en, "latency_s"), _median(off, "latency_s")
            ok = e_en <= e_off and t_en <= t_off
            verdict = "met" if ok else "same plan as offload (noise)" \
                if _plan(en) == _plan(off) else "missed"
            notes.append(f"{model} {scen}: energy {e_en:.2f} J vs offload {e_off:.2f} J at "
                         f"{t_en * 1e3:.0f} vs {t_off * 1e3:.0f} ms (dilated) -> {verdict}")
    print()
    differ = sum("same plan" not in m for m in misses)
    print(f"lopinfer slower than the best other method in {len(misses)} of {len(cells)} cells, "
          f"{differ} of them with a different plan" + (":" if misses else ""))
    for m in misses:
        print(f"  {m}")
    for n in notes:
        print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "bench-out"))
