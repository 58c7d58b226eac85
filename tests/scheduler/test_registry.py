"""Planners come from one registry: plan_all runs what it lists, the docs list all of
it, and plan metadata is typed (never parsed out of the plan's name)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lopinfer
from lopinfer.errors import PlanError
from lopinfer.scheduler import cut_plan, offload_plan, split_plan
from lopinfer.scheduler.cost import CostModel, Link, flop_costs
from lopinfer.scheduler.plan import Plan, Split
from lopinfer.scheduler.planners import plan_all
from lopinfer.scheduler.registry import available, baselines, default_methods, planner, registered
from nets import REFERENCE_NETS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "planner.md"


def test_the_docs_table_lists_every_registered_planner():
    rows = re.findall(r"^\| `([\w-]+)` \|", DOCS.read_text(), re.M)
    assert rows == list(registered())


def test_baselines_and_defaults_come_from_the_registry():
    assert baselines() == ("local", "offload", "neurosurgeon", "dads")
    assert "lopinfer" in default_methods() and "lopinfer-energy" not in default_methods()
    assert not available("no-such-planner")
    with pytest.raises(ValueError, match="registered twice"):
        planner("local")(lambda g, c, o: None)


def test_plan_all_runs_the_registry_and_refuses_unknown_names():
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    cm = CostModel(flop_costs(graph, 1e9), flop_costs(graph, 2e10), Link(5e6), Link(5e6))
    out = plan_all(graph, cm, methods=[*default_methods(), "lopinfer-energy"])
    expected = [m for m in (*default_methods(), "lopinfer-energy") if available(m)]
    assert sorted(out) == sorted(expected)
    best_baseline = min(out[m].latency_s for m in baselines() if m in out)
    assert out["lopinfer"].latency_s <= best_baseline
    assert out["lopinfer"].plan.planner == "lopinfer" and out["lopinfer"].plan.candidates > 10
    assert out["lopinfer-energy"].latency_s <= out["offload"].latency_s * (1 + 1e-9)
    with pytest.raises(PlanError, match="unknown planner"):
        plan_all(graph, cm, methods=["local", "nope"])


def test_plan_metadata_is_typed_and_survives_json():
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    cut = cut_plan(graph, 5, 4)
    assert (cut.kind, cut.cut, cut.tiles) == ("cut", 5, 4)
    split = split_plan(graph, 0.25, 0, 4, 2, halo="recompute")
    assert split.split == Split(0.25, 0, 4, "recompute") and split.tiles == 2
    assert offload_plan(graph, 8).tiles == 8
    for plan in (cut, split):
        back = Plan.from_json(plan.to_json())
        assert (back.cut, back.tiles, back.split) == (plan.cut, plan.tiles, plan.split)
