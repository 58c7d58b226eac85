"""The physical limit: plan bounds from rows agree with the compiled programs' bounds,
and the limit is the least over every family."""

from __future__ import annotations

import pytest

import lopinfer
from lopinfer.scheduler.builders import (
    cut_plan,
    local_plan,
    local_segments,
    offload_plan,
    split_plan,
)
from lopinfer.scheduler.compile import compile_program
from lopinfer.scheduler.cost import CostModel, Link, flop_costs
from lopinfer.scheduler.limit import physical_limit, plan_bound
from lopinfer.scheduler.simulator import lower_bound
from nets import REFERENCE_NETS


def _cost(graph, up=2e6, down=2e6):
    client = flop_costs(graph, 1e9, name="device")
    server = flop_costs(graph, 18e9, name="server")
    cm = CostModel(client, server, Link(up), Link(down))
    cm.compression = "off"  # the program bound judges LZ4 per piece, the limit per value
    return cm


@pytest.fixture(scope="module", params=["vgg", "resnet", "unet"])
def graph(request):
    if request.param not in REFERENCE_NETS:
        pytest.skip(f"no reference net {request.param}")
    model, x = REFERENCE_NETS[request.param]()
    return lopinfer.capture(model, (x,))


def _plans(g):
    start, stop = max(local_segments(g), key=lambda s: s[1] - s[0])
    mid = (start + stop) // 2
    yield local_plan(g)
    yield offload_plan(g, 4)
    yield cut_plan(g, len(g) // 3, 3)
    for halo in ("send", "recompute"):
        yield split_plan(g, 0.37, start, stop, 3, halo=halo)
        yield split_plan(g, 0.6, start, mid, 2, halo=halo, after="client")


def test_plan_bound_is_the_program_bound(graph):
    cm = _cost(graph)
    for plan in _plans(graph):
        ours = plan_bound(graph, plan, cm).seconds
        theirs = lower_bound(compile_program(graph, plan), cm)
        assert ours == pytest.approx(theirs, rel=1e-6), plan.name


def test_limit_is_the_least_bound(graph):
    cm = _cost(graph)
    lim = physical_limit(graph, cm, points=3, fractions=3)
    assert set(lim.family_best) >= {"local", "offload", "cut", "split"}
    assert lim.seconds == min(lim.family_best.values())
    for plan in _plans(graph):
        assert lim.seconds <= plan_bound(graph, plan, cm).seconds * (1 + 1e-9)
    # a faster link can only lower it; with no link, nothing beats local
    assert physical_limit(graph, _cost(graph, 2e9, 2e9), points=3, fractions=3).seconds <= lim.seconds
    slow = physical_limit(graph, _cost(graph, 1.0, 1.0), points=3, fractions=3)
    assert slow.seconds == pytest.approx(plan_bound(graph, local_plan(graph), cm).seconds)


@pytest.mark.parametrize("name", sorted(REFERENCE_NETS))
def test_every_cut_bounded_in_one_sweep_equals_its_own_bound(name):
    """``_Model.cut_bounds`` (a difference array over the cut position) gives each cut
    the bound ``plan_bound`` computes from the cut's rows, LZ4 on and off, both ways."""
    from lopinfer.scheduler.limit import _Model

    model, x = REFERENCE_NETS[name]()
    g = lopinfer.capture(model, (x,))
    for compression in ("off", "auto"):
        cost = _cost(g, up=3e6, down=1e6)
        cost.compression = compression
        m = _Model(g, cost)
        swept = m.cut_bounds()
        assert len(swept) == len(g) + 1
        for k in range(len(g) + 1):
            one = m.bound(cut_plan(g, k, 1))
            for resource in ("client", "server", "up", "down"):
                assert getattr(swept[k], resource) == pytest.approx(
                    getattr(one, resource), rel=1e-9, abs=1e-12), (k, resource)
