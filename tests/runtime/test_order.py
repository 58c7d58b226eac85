"""Each peer runs its tasks in the order the simulator predicts: one set of rules.

Two checks on real plans, run on two compute threads (``run_two_peers``):

- where timing cannot change the order (everything on the device; everything on the
  server with the input pieces in before it starts), each peer's measured task order
  equals :func:`simulate`'s, which shares nothing with the run but the program and
  :mod:`lopinfer.scheduler.order`;
- where it can (splits and cuts: which halo arrives first is a race), each peer's
  trace of completions and choices, in the order they happened under its lock, is
  replayed through the simulator's queue: every choice the run made is the one the
  rules make given what had completed by then.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_peer import run_two_peers

import lopinfer
from helpers import assert_exact, reference
from lopinfer.scheduler import (
    cut_plan,
    local_plan,
    local_segments,
    offload_plan,
    simulator,
    split_plan,
)
from lopinfer.scheduler.compile import compile_program
from lopinfer.scheduler.cost import CostModel, Link, NodeCost, PeerCosts, flop_costs
from nets import REFERENCE_NETS

NETS = ["vgg", "resnet", "unet", "densenet"]


def _cost(graph) -> CostModel:
    # any positive task costs; transfers free and instant, as the threads' handover is
    costs = PeerCosts({n.name: NodeCost(1e-4, 1e-5) for n in graph})
    free = Link(float("inf"), 0.0, 0.0)
    return CostModel(costs, costs, free, free, compression="off")


def _measured(run) -> list[int]:
    return [tid for kind, tid, _, _ in run.spans]


def _simulated(prog, graph, peer) -> list[int]:
    pred = simulator.simulate(prog.program, _cost(graph), timeline=True)
    return [s["task"] for s in pred.timeline if s["peer"] == peer]


@pytest.mark.parametrize("name", NETS)
def test_timing_free_orders_equal_the_simulation(name):
    model, x = REFERENCE_NETS[name]()
    graph = lopinfer.capture(model, (x,))
    ref = reference(model, x)
    for plan in (local_plan(graph, 1), local_plan(graph, 4), offload_plan(graph, 1),
                 offload_plan(graph, 4)):
        out, runs, prog = run_two_peers(graph, plan, x, trace=True, program=True)
        assert_exact(out, ref)
        for peer in ("client", "server"):
            measured = _measured(runs[peer])
            assert measured == _simulated(prog, graph, peer), (plan.name, peer)
            assert len(measured) == sum(1 for t in prog.peer_tasks(peer)
                                        if t.kind not in ("input", "recv"))


def _replay(prog, peer: str, trace: list[tuple[str, int]]) -> list[int]:
    """The choices the simulator's queue makes, given the run's completions in order."""
    queue = simulator.peer_queue(prog.program, peer)
    chosen = []
    for event, tid in trace:
        if event == "done":
            queue.complete(tid)
        else:
            chosen.append(queue.pop())
    return chosen


@pytest.mark.parametrize("name", NETS)
def test_racy_orders_follow_the_rules(name):
    model, x = REFERENCE_NETS[name]()
    graph = lopinfer.capture(model, (x,))
    ref = reference(model, x)
    seg = max(local_segments(graph), key=lambda s: s[1] - s[0])
    plans = [cut_plan(graph, len(graph) // 2, 3),
             split_plan(graph, 0.5, seg[0], seg[1], 2, halo="send"),
             split_plan(graph, 0.4, seg[0], seg[1], 3, halo="recompute")]
    # ordered by the critical path (Plan.ranks): the run follows the plan's ranks too
    cost = CostModel(flop_costs(graph, 2e8), flop_costs(graph, 4e9), Link(1e6), Link(1e6))
    plans.append(replace(plans[1], ranks=simulator.critical_ranks(
        compile_program(graph, plans[1]), cost)))
    for plan in plans:
        out, runs, prog = run_two_peers(graph, plan, x, trace=True, program=True)
        assert_exact(out, ref)
        if plan.ranks:
            ranks = [t.rank for t in prog.program.tasks]
            assert ranks == [t.rank for t in compile_program(graph, plan).tasks]
            assert ranks != [t.rank for t in compile_program(graph, plans[1]).tasks]
        for peer in ("client", "server"):
            trace = runs[peer].trace
            ran = [tid for event, tid in trace if event == "run"]
            assert ran == _measured(runs[peer])
            assert _replay(prog, peer, trace) == ran, (plan.name, peer)
