"""Plans as data: every kind exact when run (both peers in one process), JSON round
trip, transfers derived from the rows, invalid plans rejected naming the node."""

from __future__ import annotations

import pytest
import torch

import lopinfer
from helpers import assert_exact, reference
from lopinfer.errors import PlanError
from lopinfer.runtime import TiledExecutor, compile_plan
from lopinfer.scheduler import (
    WHOLE,
    NodeRows,
    Plan,
    cut_plan,
    local_plan,
    local_segments,
    offload_plan,
    split_plan,
)
from nets import REFERENCE_NETS


@pytest.fixture(scope="module", params=sorted(REFERENCE_NETS))
def net(request):
    model, x = REFERENCE_NETS[request.param]()
    return model, x, lopinfer.capture(model, (x,)), reference(model, x)


def _plans(graph):
    n = len(graph)
    seg = max(local_segments(graph), key=lambda s: s[1] - s[0])
    mid = (seg[0] + seg[1]) // 2
    yield local_plan(graph, 3)
    yield offload_plan(graph, 1)
    yield offload_plan(graph, 4)
    for k in (0, 1, n // 3, mid, n - 1, n):
        yield cut_plan(graph, k, tiles=3)
    for halo in ("send", "recompute"):
        yield split_plan(graph, 0.5, seg[0], seg[1], tiles=2, halo=halo)
        yield split_plan(graph, 0.3, seg[0], mid, tiles=3, halo=halo, after="client")
        yield split_plan(graph, 0.7, mid, seg[1], tiles=[1, 2], halo=halo, before="server",
                         after="server")


def test_every_plan_kind_is_exact(net):
    model, x, graph, ref = net
    for plan in _plans(graph):
        out = TiledExecutor(graph, plan=plan)(x)
        assert_exact(out, ref)


def test_plan_json_round_trip(net):
    _, x, graph, ref = net
    for plan in _plans(graph):
        again = Plan.from_json(plan.to_json())
        assert again.to_json() == plan.to_json()
        assert again.nodes == plan.nodes and again.input_edges == plan.input_edges
        assert repr(again) == repr(plan)


def test_transfers_follow_the_rows():
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    assert not compile_plan(graph, local_plan(graph, 4)).transfers
    off = compile_plan(graph, offload_plan(graph, 4))
    moved = off.bytes_moved()
    assert moved["up"] == x.numel() * 4  # the input, once, in pieces
    assert moved["down"] == graph.meta(graph.outputs[0]).nbytes
    up = [t for t in off.transfers if t.peer == "server"]
    assert len(up) == 4 and sorted((t.a, t.b) for t in up) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    # an intra-layer split that sends halos moves a few rows of the segment both ways,
    # one that recomputes moves only the input rows the server needs
    seg = local_segments(graph)[0]
    send = compile_plan(graph, split_plan(graph, 0.5, seg[0], seg[1] - 3, 2, halo="send"))
    recompute = compile_plan(graph, split_plan(graph, 0.5, seg[0], seg[1] - 3, 2, halo="recompute"))
    inside = {n.name for n in graph.nodes[seg[0]:seg[1] - 4]}  # the last one feeds the server
    assert any(t.value in inside and t.peer == "server" for t in send.transfers)
    assert any(t.value in inside and t.peer == "client" for t in send.transfers)
    assert not any(t.value in inside and t.peer == "server" for t in recompute.transfers)


def test_missing_rows_name_the_node():
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    plan = local_plan(graph, 2)
    victim = graph.nodes[3].name
    rows = plan.nodes[victim]
    plan.nodes[victim] = NodeRows(client=rows.client[:1])  # drop the second tile
    with pytest.raises(PlanError, match=victim):
        compile_plan(graph, plan)


def test_partial_global_node_rejected():
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    plan = local_plan(graph, 2)
    g = next(n for n in graph if not n.local)
    plan.nodes[g.name] = NodeRows(client=((0, 1),), server=((0, 1),))  # whole on both: fine
    compile_plan(graph, plan)
    plan.nodes[g.name] = NodeRows(client=((0, 2),))
    with pytest.raises(PlanError, match=f"global node {g.name} partially"):
        compile_plan(graph, plan)
    assert WHOLE == (0, 1)


def test_overlapping_tiles_on_one_peer_rejected():
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    plan = local_plan(graph, 2)
    name = graph.nodes[0].name
    plan.nodes[name] = NodeRows(client=((0, 20), (10, 32)))
    with pytest.raises(PlanError, match="twice"):
        compile_plan(graph, plan)


@pytest.mark.parametrize("text", ["{", "[]", '{"format": "lopinfer.plan", "version": 2}',
                                  '{"format": "lopinfer.plan", "version": 1, "name": "x", '
                                  '"nodes": {"a": {"client": [[0]]}}}'])
def test_malformed_plan_json(text):
    with pytest.raises(PlanError):
        Plan.from_json(text)


def test_unknown_node_in_plan():
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    plan = local_plan(graph, 2)
    plan.nodes["nope"] = NodeRows(client=(WHOLE,))
    with pytest.raises(PlanError, match="'nope'"):
        compile_plan(graph, plan)


def test_describe_is_readable():
    model, x = REFERENCE_NETS["resnet"]()
    graph = lopinfer.capture(model, (x,))
    text = cut_plan(graph, 5, 3).describe(graph)
    assert "client" in text and "server" in text and "in 3" in text
    assert torch.is_tensor(x)
