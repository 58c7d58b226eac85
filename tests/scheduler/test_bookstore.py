"""Plan books on disk: a second book for the same graph, costs and link plans nothing;
another cost model, or a quick first plan, is never taken for a stored one."""

from __future__ import annotations

import json

import lopinfer
from lopinfer.graph.serialize import content_hash
from lopinfer.scheduler import planners
from lopinfer.scheduler.adapt import PlanBook
from lopinfer.scheduler.bookstore import BookStore, book_key
from lopinfer.scheduler.cost import CostModel, Link, flop_costs
from lopinfer.scheduler.energy import Objective
from nets import REFERENCE_NETS


def _book(graph, cost, root, methods=("local", "offload", "lopinfer")):
    obj = Objective()
    return PlanBook(graph, cost, obj, methods, grid=[1e6, 4e6],
                    store=BookStore(book_key(content_hash(graph), cost, obj, methods), root))


def test_a_second_book_plans_nothing(tmp_path, monkeypatch):
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    cost = CostModel(flop_costs(graph, 1e9), flop_costs(graph, 2e10), Link(2e6), Link(2e6))
    first = _book(graph, cost, tmp_path)
    first.fill()
    calls = []
    real = planners.plan_all
    monkeypatch.setattr("lopinfer.scheduler.adapt.plan_all",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    second = _book(graph, cost, tmp_path)
    second.fill()
    assert calls == [] and second.store.hits == 2
    for i in range(2):
        a, b = first.plans_at(i), second.plans_at(i)
        assert {m: s.plan.to_json() for m, s in a.items()} == {m: s.plan.to_json() for m, s in b.items()}
        assert all(abs(a[m].latency_s - b[m].latency_s) < 1e-12 for m in a)
    # another device speed is another book
    slower = CostModel(cost.client.scaled(3.0), cost.server, cost.up, cost.down)
    third = _book(graph, slower, tmp_path)
    third.plans_at(0)
    assert calls and third.store.hits == 0


def test_quick_first_points_serve_a_second_deploy_until_planned_again_fully(tmp_path,
                                                                            monkeypatch):
    """A quick first plan is stored as quick: a second deploy's first point takes it
    (it waits for nothing), a full search never does, and the filler's full plans
    replace it."""
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    cost = CostModel(flop_costs(graph, 1e9), flop_costs(graph, 2e10), Link(2e6), Link(2e6))
    book = _book(graph, cost, tmp_path)
    quick = book.plans_at(0, quick=True)
    files = list((tmp_path / "plans").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["quick"] is True
    calls = []
    real = planners.plan_all
    monkeypatch.setattr("lopinfer.scheduler.adapt.plan_all",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    second = _book(graph, cost, tmp_path)
    got = second.plans_at(0, quick=True)
    assert calls == [] and 0 in second._quick
    assert got["lopinfer"].plan.to_json() == quick["lopinfer"].plan.to_json()
    book.fill()  # the full search of point 0 replaces the stored quick one
    assert len(calls) == 2 and not book._quick
    stored = [json.loads(f.read_text()) for f in (tmp_path / "plans").glob("*.json")]
    assert len(stored) == 2 and not any(d["quick"] for d in stored)
    third = _book(graph, cost, tmp_path)
    third.plans_at(0)  # full, from the store
    assert len(calls) == 2 and not third._quick


def test_choosing_a_quick_point_does_not_plan_it_again(tmp_path, monkeypatch):
    """The first inference runs the quick plan it waited for; the full search of that
    point is the background filler's (it cost a deploy 3.3 s of waiting)."""
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    cost = CostModel(flop_costs(graph, 1e9), flop_costs(graph, 2e10), Link(2e6), Link(2e6))
    book = _book(graph, cost, tmp_path)
    quick = book.plans_at(0, quick=True)
    calls = []
    real = planners.plan_all
    monkeypatch.setattr("lopinfer.scheduler.adapt.plan_all",
                        lambda *a, **k: calls.append(k.get("budget")) or real(*a, **k))
    choice = book.choose("lopinfer", 1e6)
    assert calls == [] and choice.scored is quick["lopinfer"]
    book.fill()  # the filler plans it again, fully
    assert len(calls) == 2 and not book._quick
