"""Tiles aligned with the wavefront (lopinfer.scheduler.wavefront): each node's tile k is
computable from the input's first k pieces, the plans run exact, and streaming one
predicts no slower than equal tiles on a deep net."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lopinfer
from helpers import assert_exact, reference
from lopinfer.runtime import TiledExecutor
from lopinfer.scheduler.builders import cut_plan, offload_plan, partition, split_plan
from lopinfer.scheduler.cost import CostModel, Link, flop_costs
from lopinfer.scheduler.energy import Objective
from lopinfer.scheduler.planners import evaluate
from lopinfer.scheduler.wavefront import align, prefix_edges
from nets import REFERENCE_NETS


def _chain(layers: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Conv2d(4, 4, 3, padding=1) for _ in range(layers))).eval()


def test_each_layer_lags_by_its_halo_not_by_a_tile():
    layers, rows, steps = 5, 40, 4
    x = torch.randn(1, 4, rows, 9)
    g = lopinfer.capture(_chain(layers), (x,))
    edges = prefix_edges(g, steps)
    pieces = partition(rows, steps)[1:]
    convs = [n.name for n in g if n.locality is not None]
    assert len(convs) == layers
    for j, name in enumerate(convs, start=1):
        # a 3x3 conv's row r needs input row r + 1: each layer is one row behind the last
        want = [rows if e == rows else max(0, e - j) for e in pieces]
        assert edges[name] == want, (name, edges[name], want)


def test_edges_are_monotone_and_end_at_the_size():
    model, x = REFERENCE_NETS["resnet"]()
    g = lopinfer.capture(model, (x,))
    nodes = {n.name for n in g}
    for steps in (1, 3, 8):
        for name, e in prefix_edges(g, steps).items():
            assert len(e) == steps and e == sorted(e)
            size = g[name].locality.size if name in nodes else g.inputs[name].shape[2]
            assert e[-1] == size


@pytest.mark.parametrize("net", ["vgg", "unet", "resnet"])
def test_aligned_plans_run_exact(net):
    model, x = REFERENCE_NETS[net]()
    g = lopinfer.capture(model, (x,))
    ref = reference(model, x)
    n = len(g)
    for base in (offload_plan(g, 1), cut_plan(g, n // 3, 1),
                 split_plan(g, 0.4, 0, n // 2, 1, halo="send"),
                 split_plan(g, 0.6, 0, n // 2, 1, halo="recompute", after="client")):
        for steps in (3, 8):
            plan = align(g, base, steps)
            assert plan.name.endswith(f"~w{steps}")
            assert_exact(TiledExecutor(g, plan=plan)(x), ref)


def test_streaming_a_deep_net_no_slower_than_equal_tiles():
    """Equal tiles lag one tile per layer; aligned ones do not (same piece count)."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 96, 32)
    g = lopinfer.capture(_chain(12), (x,))
    server = flop_costs(g, 1e11, name="server")
    client = flop_costs(g, 1e11 / 18, name="client")
    cm = CostModel(client, server, Link(2e6), Link(2e6))
    for steps in (4, 8):
        equal = evaluate(g, offload_plan(g, steps), cm, Objective()).latency_s
        aligned = evaluate(g, align(g, offload_plan(g, 1), steps), cm, Objective()).latency_s
        assert aligned < equal, (steps, aligned, equal)
