"""Tasks ordered by their critical path (``Plan.ranks``): scored as they run, exact,
never worse than the deepest-first order, and refused when malformed."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

import lopinfer
from helpers import assert_exact, reference
from lopinfer.errors import PlanError
from lopinfer.runtime import TiledExecutor
from lopinfer.scheduler import local_segments, split_plan
from lopinfer.scheduler.compile import compile_program, with_ranks
from lopinfer.scheduler.cost import CostModel, Link, flop_costs
from lopinfer.scheduler.energy import Objective
from lopinfer.scheduler.plan import CRITICAL, Plan
from lopinfer.scheduler.planners import evaluate, evaluate_ordered
from lopinfer.scheduler.simulator import critical_ranks, simulate
from nets import REFERENCE_NETS


@pytest.fixture(scope="module", params=["resnet", "unet"])
def net(request):
    model, x = REFERENCE_NETS[request.param]()
    g = lopinfer.capture(model, (x,))
    cm = CostModel(flop_costs(g, 2e8), flop_costs(g, 4e9), Link(1e6), Link(1e6))
    seg = max(local_segments(g), key=lambda s: s[1] - s[0])
    return model, x, g, cm, split_plan(g, 0.5, seg[0], seg[1], 4, halo="send")


def test_the_split_is_faster_ordered_by_its_critical_path(net):
    _, _, g, cm, plan = net
    plain = evaluate(g, plan, cm, Objective())
    best = evaluate_ordered(g, plan, cm, Objective())
    # measured on these nets: 5% (resnet) and 8% (unet) shorter
    assert best.latency_s < 0.98 * plain.latency_s
    assert best.plan.name == plan.name + CRITICAL and best.plan.ranks


def test_a_ranked_plan_compiles_as_it_was_scored(net):
    """The server compiles the plan from its JSON: the ranks it gets, and so the order
    its worker follows, are the ones the planner simulated."""
    _, _, g, cm, plan = net
    ranks = critical_ranks(compile_program(g, plan), cm)
    scored = with_ranks(compile_program(g, plan), ranks)
    back = Plan.from_json(replace(plan, ranks=ranks).to_json())
    compiled = compile_program(g, back)
    assert [t.rank for t in compiled.tasks] == [t.rank for t in scored.tasks]
    assert compiled.order == scored.order
    assert simulate(compiled, cm).latency_s == simulate(scored, cm).latency_s
    depth = compile_program(g, plan)
    assert compiled.order != depth.order  # the ranks do change the order


def test_critical_ranks_are_the_longest_chain_to_the_end(net):
    """Each tile's rank is its own cost plus its longest-waiting reader's (HEFT's upward
    rank); transfers count through the receive between peers."""
    from lopinfer.scheduler.simulator import task_cost

    _, _, g, cm, plan = net
    prog = compile_program(g, plan)
    ranks = critical_ranks(prog, cm)
    for name, r in ranks.items():
        assert len(r) == len(plan.nodes[name].client) + len(plan.nodes[name].server)
        assert all(x > 0 and math.isfinite(x) for x in r)
    ranked = with_ranks(prog, ranks).tasks
    readers: dict[int, list[int]] = {}
    for t in ranked:
        for d in t.deps:
            readers.setdefault(d, []).append(t.id)
    checked = 0
    for t in ranked:
        local = [ranked[u] for u in readers.get(t.id, ()) if ranked[u].kind in ("tile", "whole")]
        if t.kind in ("tile", "whole") and local:
            own = task_cost(prog, t, cm)
            assert t.rank >= own + max(u.rank for u in local) - 1e-12
            checked += 1
    assert checked > 10
    # the first node waits on everything after it: its tiles rank above the last node's
    assert max(ranks[g.nodes[0].name]) > max(ranks[g.nodes[-1].name])


def test_never_worse_than_deepest_first(net):
    _, _, g, cm, plan = net
    for bw in (1e5, 1e7):
        c = cm.with_bandwidth(bw, bw)
        assert (evaluate_ordered(g, plan, c, Objective()).latency_s
                <= evaluate(g, plan, c, Objective()).latency_s)


def test_ranked_plans_run_exact(net):
    model, x, g, cm, plan = net
    best = evaluate_ordered(g, plan, cm, Objective())
    assert best.plan.ranks
    assert_exact(TiledExecutor(g, plan=Plan.from_json(best.plan.to_json()))(x),
                 reference(model, x))


def test_malformed_ranks_are_refused(net):
    _, _, g, _, plan = net
    name = g.nodes[0].name
    tiles = len(plan.nodes[name].client) + len(plan.nodes[name].server)
    doc = plan.to_dict()
    doc["ranks"] = {name: [float("nan")] * tiles}
    with pytest.raises(PlanError, match="finite"):
        Plan.from_json(doc)
    doc["ranks"] = {name: ["x"]}
    with pytest.raises(PlanError, match="malformed"):
        Plan.from_json(doc)
    short = replace(plan, ranks={name: (1.0,) * (tiles + 1)})
    with pytest.raises(PlanError, match=f"ranks for node {name}"):
        compile_program(g, short)
    with pytest.raises(PlanError, match="not a node"):
        compile_program(g, replace(plan, ranks={"no-such-node": ()}))
