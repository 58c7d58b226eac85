"""Link estimator (EWMA, outliers, hysteresis) and profiler fits."""

from __future__ import annotations

import pytest
import torch

import lopinfer
from helpers import assert_exact, reference
from lopinfer.runtime import TiledExecutor
from lopinfer.runtime.profiler import costs_from_json, costs_to_json, fit_line, profile
from lopinfer.scheduler import local_plan
from lopinfer.scheduler.compile import compile_program
from lopinfer.scheduler.cost import CostModel, Link
from lopinfer.scheduler.link import Hysteresis, LinkEstimator
from lopinfer.scheduler.simulator import simulate
from nets import REFERENCE_NETS


def test_estimator_tracks_the_link_and_rejects_outliers():
    est = LinkEstimator()
    for _ in range(20):
        assert est.observe(1 << 20, (1 << 20) / 10e6)  # 10 MB/s
    assert est.bandwidth == pytest.approx(10e6)
    assert not est.observe(1 << 20, (1 << 20) / 500e6)  # one wild sample
    assert est.bandwidth == pytest.approx(10e6) and est.rejected == 1
    assert not est.observe(100, 1.0)  # too small to count
    for _ in range(40):  # the link really changes: the estimate follows
        est.observe(1 << 20, (1 << 20) / 2e6)
    assert est.bandwidth == pytest.approx(2e6, rel=0.05)
    est.observe_rtt(0.002)
    assert est.rtt == pytest.approx(0.002) and "MB/s" in repr(est)


def test_hysteresis_does_not_flap():
    h = Hysteresis([1e6, 4e6, 16e6], margin=0.3)
    assert h.choose(4e6) == (1, True)
    assert h.choose(2.2e6) == (1, False)  # nearer 1e6 in log scale, but within the margin
    assert h.choose(1.1e6) == (0, True)
    assert h.choose(1.9e6) == (0, False)


def test_fit_line_recovers_fixed_and_per_row():
    c = fit_line([(1, 0.011), (4, 0.014), (16, 0.026)])
    assert c.fixed == pytest.approx(0.010, rel=1e-6) and c.per_row == pytest.approx(0.001)
    assert fit_line([(8, 0.8)]).per_row == pytest.approx(0.1)


def test_profile_predicts_the_measured_local_time(tmp_path, monkeypatch):
    monkeypatch.setenv("LOPINFER_CACHE", str(tmp_path))
    monkeypatch.setattr("lopinfer.runtime.profiler._MEMO", {})  # measured afresh here
    model, x = REFERENCE_NETS["vgg"]()
    g = lopinfer.capture(model, (x,))
    costs = profile(g, (x,), repeats=2)
    assert set(costs.nodes) == {n.name for n in g}
    assert all(c.fixed >= 0 and c.per_row >= 0 for c in costs.nodes.values())
    # cached: a second call does not measure again (same object), and it is on disk
    assert profile(g, (x,)) is costs
    assert list(tmp_path.rglob("*.json"))
    again = costs_from_json(costs_to_json(costs))
    assert again.nodes == costs.nodes
    cm = CostModel(costs, costs, Link(1e9), Link(1e9))
    pred = simulate(compile_program(g, local_plan(g, 1)), cm).latency_s
    assert pred > 0
    assert_exact(TiledExecutor(g, 1)(x), reference(model, x))
    assert torch.is_tensor(x)


def test_a_torn_profile_cache_file_is_measured_again(tmp_path, monkeypatch):
    # In loopback both peers share the cache directory; a reader must never fail on a
    # file another process is writing (CI saw "Extra data" from a half-read file).
    monkeypatch.setenv("LOPINFER_CACHE", str(tmp_path))
    monkeypatch.setattr("lopinfer.runtime.profiler._MEMO", {})
    model, x = REFERENCE_NETS["vgg"]()
    g = lopinfer.capture(model, (x,))
    first = profile(g, (x,), repeats=1)
    (path,) = tmp_path.rglob("*.json")
    path.write_text(costs_to_json(first) + costs_to_json(first)[:40])  # torn: extra data
    monkeypatch.setattr("lopinfer.runtime.profiler._MEMO", {})
    again = profile(g, (x,), repeats=1)
    assert set(again.nodes) == set(first.nodes)
    assert costs_from_json(path.read_text()).nodes == again.nodes  # rewritten whole
    assert not list(tmp_path.rglob("*.tmp"))
