"""Synthetic WiFi traces: seeded, and with the research testbed's percentiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lopinfer.bench import traces

ROOT = Path(__file__).resolve().parents[2]
TARGETS_MBPS = {"indoor": (2.0, 11.0, 21.0), "outdoor": (1.0, 9.0, 28.0)}


def _assert_targets(trace, kind):
    got = traces.stats(trace)
    for key, want in zip(("p5", "p50", "p95"), TARGETS_MBPS[kind]):
        assert got[key] / traces.MB == pytest.approx(want, rel=0.10), (kind, key, got)


@pytest.mark.parametrize("kind", ["indoor", "outdoor"])
def test_generate_is_seeded(kind):
    a = traces.generate(kind, seed=7, duration_s=60, step_s=0.5)
    assert a == traces.generate(kind, seed=7, duration_s=60, step_s=0.5)
    assert a != traces.generate(kind, seed=8, duration_s=60, step_s=0.5)
    assert len(a) == 120 and a[0][0] == 0.0 and a[1][0] == 0.5


@pytest.mark.parametrize("kind", ["indoor", "outdoor"])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_generate_percentiles(kind, seed):
    _assert_targets(traces.generate(kind, seed, duration_s=300, step_s=1), kind)


@pytest.mark.parametrize("kind", ["indoor", "outdoor"])
def test_unmatched_process_converges_to_targets(kind):
    # Without rank matching the quantile map alone must give the targets in the long run.
    trace = traces.generate(kind, seed=3, duration_s=50_000, step_s=1, match_marginal=False)
    _assert_targets(trace, kind)


def test_traces_vary_in_time():
    rates = [r for _, r in traces.generate("indoor", 1, 300, 1)]
    # correlated, not constant: neighbours close on average, the whole range wide
    steps = sorted(abs(b - a) for a, b in zip(rates, rates[1:]))
    assert steps[len(steps) // 2] < (max(rates) - min(rates)) / 4


@pytest.mark.parametrize("kind", ["indoor", "outdoor"])
def test_committed_traces(kind):
    path = ROOT / "src" / "lopinfer" / "bench" / "data" / f"seed-{kind}.csv"
    trace = traces.load(path)
    assert len(trace) == 300 and trace[0][0] == 0.0
    _assert_targets(trace, kind)


def test_make_traces_reproduces_committed_files(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_traces"), "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    for kind in ("indoor", "outdoor"):
        name = f"seed-{kind}.csv"
        assert (tmp_path / name).read_bytes() == (ROOT / "src" / "lopinfer" / "bench" / "data" / name).read_bytes()


def test_save_load_roundtrip(tmp_path):
    trace = traces.generate("outdoor", 5, 10, 0.25)
    traces.save(tmp_path / "t.csv", trace)
    back = traces.load(tmp_path / "t.csv")
    assert [t for t, _ in back] == [t for t, _ in trace]
    assert all(abs(a - b) <= 100 for (_, a), (_, b) in zip(back, trace))  # 1e-4 MB/s rounding


@pytest.mark.parametrize("text, match", [
    ("t,rate\n0,1\n", "expected columns"),
    ("t_s,rate_MBps\n0,x\n", "bad number"),
    ("t_s,rate_MBps\n0,1\n0,2\n", "must increase"),
    ("t_s,rate_MBps\n0,-1\n", ">= 0"),
    ("t_s,rate_MBps\n", "no samples"),
])
def test_load_rejects_bad_files(tmp_path, text, match):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        traces.load(tmp_path / "bad.csv")


def test_unknown_kind():
    with pytest.raises(ValueError, match="valid: indoor, outdoor"):
        traces.generate("space", 0)
