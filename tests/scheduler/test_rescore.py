"""A searching method's plan is re-scored at the link estimate, not taken as planned
at the nearest grid point: the best of every method's plans around the estimate,
simulated there. Classic methods run their own plan; a switch needs a real gain."""

from __future__ import annotations

import pytest

import lopinfer
from lopinfer.scheduler import adapt
from lopinfer.scheduler.adapt import ESTIMATE_STEP, PlanBook
from lopinfer.scheduler.cost import CostModel, Link, flop_costs
from lopinfer.scheduler.energy import Objective, score
from lopinfer.scheduler.planners import evaluate
from nets import REFERENCE_NETS

METHODS = ("local", "offload", "neurosurgeon", "dads", "lopinfer", "lopinfer-energy")
LOW, HIGH = 1e5, 1e7  # two grid points: local wins at the first, the server at the second
ESTIMATE = 3e6


@pytest.fixture(scope="module")
def unet():
    model, x = REFERENCE_NETS["unet"]()
    graph = lopinfer.capture(model, (x,))
    cost = CostModel(flop_costs(graph, 1e9), flop_costs(graph, 2e10), Link(1e6), Link(1e6))
    return graph, cost


def _book(unet, rescoring: str) -> PlanBook:
    graph, cost = unet
    # a wide hysteresis margin holds the first grid point while the estimate moves
    book = PlanBook(graph, cost, Objective(), METHODS, grid=[LOW, HIGH], margin=5.0)
    book.rescoring = rescoring
    book.plans_at(0), book.plans_at(1)
    return book


def _candidates_at(book: PlanBook, bandwidth: float, objective: Objective):
    q = ESTIMATE_STEP ** round(__import__("math").log(bandwidth, ESTIMATE_STEP))
    cost = book.cost_at(q)
    plans = {id(s.plan): s.plan for i in (0, 1) for s in book.plans_at(i).values()}
    return [evaluate(book.graph, p, cost, objective) for p in plans.values()], cost


def test_the_choice_is_the_best_candidate_at_the_estimate(unet):
    held = _book(unet, "off")
    held.choose("lopinfer", LOW)
    planned = held.choose("lopinfer", ESTIMATE).scored  # the held point's own plan
    assert planned.plan is held.plans_at(0)["lopinfer"].plan

    book = _book(unet, "now")
    book.choose("lopinfer", LOW)
    choice = book.choose("lopinfer", ESTIMATE)
    assert "re-scored at the estimate" in choice.reason and choice.changed
    everything, cost = _candidates_at(book, ESTIMATE, Objective())
    best = min(s.latency_s for s in everything)
    assert choice.scored.latency_s == pytest.approx(best, rel=1e-9)
    # here the held point's plan is far from the best at the estimate
    at_estimate = evaluate(book.graph, planned.plan, cost, Objective())
    assert choice.scored.latency_s < 0.9 * at_estimate.latency_s
    assert choice.scored.plan is not planned.plan


def test_classic_methods_run_their_own_plan(unet):
    book = _book(unet, "now")
    for method in ("local", "offload", "neurosurgeon", "dads"):
        book.choose(method, LOW)
        choice = book.choose(method, ESTIMATE)
        assert choice.scored is book.plans_at(0)[method]
        assert "re-scored" not in choice.reason


def test_energy_choice_is_the_least_energy_no_slower_than_offload(unet):
    book = _book(unet, "now")
    book.choose("lopinfer-energy", LOW)
    choice = book.choose("lopinfer-energy", ESTIMATE)
    _, cost = _candidates_at(book, ESTIMATE, Objective())
    offload = min(evaluate(book.graph, book.plans_at(i)["offload"].plan, cost, Objective()).latency_s
                  for i in (0, 1))
    goal = Objective("energy", offload)
    everything, _ = _candidates_at(book, ESTIMATE, goal)
    meeting = [s for s in everything if s.latency_s <= offload]
    assert meeting and choice.scored.latency_s <= offload
    assert choice.scored.energy_j == pytest.approx(min(s.energy_j for s in meeting), rel=1e-9)


def test_background_rescoring_serves_the_next_choice(unet):
    book = _book(unet, "background")
    book.choose("lopinfer", LOW)
    first = book.choose("lopinfer", ESTIMATE)  # nothing re-scored yet: the planned plan
    assert first.scored is book.plans_at(0)["lopinfer"]
    assert book.settle(30)
    second = book.choose("lopinfer", ESTIMATE)
    assert "re-scored at the estimate" in second.reason
    assert second.scored.latency_s < first.scored.latency_s * 0.9  # both as predicted at the point
    same = book.choose("lopinfer", ESTIMATE * ESTIMATE_STEP ** 0.2)  # the same quantum
    assert same.scored is second.scored and not same.changed
    # the next quantum, not re-scored yet: the neighbour's ranking, not the grid's plan
    nearby = book.choose("lopinfer", ESTIMATE * ESTIMATE_STEP)
    assert nearby.scored.plan is second.scored.plan and not nearby.changed
    assert book.settle(30)
    assert len(book._rescored) == 3  # LOW, ESTIMATE and its neighbour


def test_the_running_plan_stays_unless_the_gain_is_real(unet, monkeypatch):
    book = _book(unet, "now")
    running = book.choose("lopinfer", LOW).scored.plan
    monkeypatch.setattr(adapt, "STICK", 10.0)  # "within 10x of the best": keep it
    kept = book.choose("lopinfer", ESTIMATE)
    assert kept.scored.plan is running and not kept.changed
    monkeypatch.setattr(adapt, "STICK", 0.01)
    book2 = _book(unet, "now")
    book2.choose("lopinfer", LOW)
    assert book2.choose("lopinfer", ESTIMATE).scored.plan is not running


def test_a_replanned_point_invalidates_the_rescoring(unet):
    """A quick point planned fully later is re-scored again, not served from before."""
    graph, cost = unet
    book = PlanBook(graph, cost, Objective(), METHODS, grid=[LOW, HIGH], margin=5.0)
    book.rescoring = "now"
    book.plans_at(0, quick=True)
    book.choose("lopinfer", LOW)
    before = len(book._rescored)
    book.plans_at(0)  # the full search replaces the quick plans
    book.choose("lopinfer", LOW)
    assert len(book._rescored) == before + 1


def test_rescoring_scores_as_the_objective_says(unet):
    book = _book(unet, "now")
    objective, ranked = book.rescore("lopinfer", ESTIMATE, 0)
    keys = [score(objective, s.latency_s, s.energy_j) for s in ranked]
    assert keys == sorted(keys) and len(ranked) >= 3
