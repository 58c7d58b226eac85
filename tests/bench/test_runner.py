"""``lopinfer bench`` end to end on a tiny model over the user-space shaped link: a
server process and a device process, methods interleaved, records exact, the report."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lopinfer.bench.runner import scenarios
from lopinfer.runtime.chrome_trace import save_trace

MODEL = str(Path(__file__).resolve().parents[1] / "cli" / "_cli_models.py") + ":make_cnn"


def test_bench_runs_every_method_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "lopinfer.cli", "bench", "--models", MODEL,
         "--methods", "local,offload,lopinfer", "--scenario", "fixed:5MB/s,fixed:50MB/s",
         "--repeats", "2", "--lab", "userspace", "--dilation", "1", "--no-plots",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "user-space shaped link" in proc.stderr  # it says which lab it used
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 2 * 2  # methods x scenarios x repeats
    assert all(r["exact"] and not r["fell_back"] for r in records)
    assert {r["method"] for r in records} == {"local", "offload", "lopinfer"}
    offload = [r for r in records if r["method"] == "offload"]
    assert all(r["bytes_up"] > 0 and r["predicted_s"] > 0 and r["bound_s"] > 0 for r in offload)
    # the link was measured, not told: near the asked rate
    r5 = [r["bandwidth_up"] for r in offload if r["scenario"] == "fixed:5MB/s"]
    assert all(2.5e6 < bw < 10e6 for bw in r5), r5
    # the limit beside every number, no higher than any plan's own bound
    assert all(0 < r["limit_s"] <= r["bound_s"] * (1 + 1e-6) for r in records if r["bound_s"])
    # link rows: offload sends its input up and its output down
    for r in offload:
        rows_seen = {s["peer"] for s in r["timeline"]}
        assert {"link-up", "link-down", "server"} <= rows_seen, rows_seen
        up = sum(s["bytes"] for s in r["timeline"] if s["peer"] == "link-up")
        assert up >= 0.9 * r["bytes_up"] * min(1.0, r.get("lz4_ratio") or 0.01)
    trace = json.loads(save_trace(offload[0]["timeline"], tmp_path / "t.json").read_text())
    cats = {e.get("cat") for e in trace["traceEvents"] if e["ph"] == "X"}
    assert {"transfer", "compute"} <= cats and all(
        e["dur"] >= 0 for e in trace["traceEvents"] if e["ph"] == "X")
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2
    assert all(float(r["x_limit"]) > 0 for r in rows)
    assert "lopinfer" in (out / "table.txt").read_text()


def test_scenarios_parse_and_sample_traces():
    fixed, indoor = scenarios("fixed:11MB/s,seed-indoor", repeats=4)
    assert fixed["rates"] == [11e6] and fixed["kind"] == "fixed"
    assert indoor["kind"] == "trace" and len(indoor["rates"]) == 4
    assert all(0.05e6 <= r <= 80e6 for r in indoor["rates"])
    with pytest.raises(SystemExit, match="unknown scenario"):
        scenarios("moon-base", 1)


def test_bench_methods_come_from_the_registry():
    import argparse

    from lopinfer.bench.runner import add_arguments
    from lopinfer.scheduler.registry import default_methods, methods

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([])
    assert args.methods.split(",") == list(default_methods())
    helps = {a.dest: a.help for a in p._actions}
    assert helps["methods"].endswith(",".join(methods()))
