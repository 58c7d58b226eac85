"""Tiled execution equals the unsplit model on every reference net and tiling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lopinfer
from helpers import assert_exact, reference
from lopinfer.errors import InputError
from lopinfer.runtime import TiledExecutor, partition
from nets import REFERENCE_NETS

TILINGS = [1, 2, 3, 4, 7, 16, [1, 3, 2], [5, 1, 1, 1], [0.1, 0.6, 0.3]]


@pytest.fixture(scope="module", params=sorted(REFERENCE_NETS))
def captured(request):
    model, x = REFERENCE_NETS[request.param]()
    return request.param, model, x, lopinfer.capture(model, (x,)), reference(model, x)


@pytest.mark.parametrize("tiles", TILINGS, ids=str)
def test_reference_nets_exact(captured, tiles):
    _, _, x, graph, ref = captured
    assert_exact(TiledExecutor(graph, tiles)(x), ref)


def test_reference_nets_are_mostly_local(captured):
    name, _, _, graph, _ = captured
    local = sum(1 for n in graph if n.local)
    assert local / len(graph) > 0.6, graph.describe()


def test_tiles_really_split_rows(captured):
    _, _, x, graph, _ = captured
    ex = TiledExecutor(graph, 4)
    tiled = [t for t in ex.tasks if t.kind == "tile"]
    assert len(tiled) > 2 * sum(1 for n in graph if n.local)
    # every row of every local node is computed exactly once
    for node in graph:
        if node.local:
            rows = sorted((t.a, t.b) for t in tiled if t.value == node.name)
            assert rows[0][0] == 0 and rows[-1][1] == node.locality.size
            assert all(p[1] == q[0] for p, q in zip(rows, rows[1:]))


def test_per_node_edges_mapping_and_callable(captured):
    _, _, x, graph, ref = captured
    # uneven, node-dependent partitions: first row alone, then the rest in two
    def edges(node):
        n = node.locality.size
        return sorted({0, 1, (n + 1) // 2, n}) if n > 2 else [0, n]

    assert_exact(TiledExecutor(graph, edges)(x), ref)
    mapping = {n.name: edges(n) for n in graph if n.local and n.locality.size > 4}
    assert_exact(TiledExecutor(graph, mapping)(x), ref)


@pytest.mark.parametrize("name", ["resnet", "unet", "convnext"])
def test_batch_channels_last_float64(name):
    model, x = REFERENCE_NETS[name]()
    model = model.double()
    x = torch.cat([x, x.flip(2)]).double().to(memory_format=torch.channels_last)
    graph = lopinfer.capture(model, (x,))
    ref = reference(model, x)
    for tiles in (1, 5):
        out = TiledExecutor(graph, tiles)(x)
        assert out.dtype == torch.float64
        assert_exact(out, ref)


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 5, padding=2, stride=1)
        self.c = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x, y):
        s = torch.relu(self.a(x)) + self.b(y) * 0.5
        return {"full": s, "half": self.c(s).sigmoid()}


def test_several_inputs_and_outputs():
    m = TwoInTwoOut().eval()
    x, y = torch.randn(2, 3, 19, 13), torch.randn(2, 2, 19, 13)
    graph = lopinfer.capture(m, (x, y))
    ref = reference(m, x, y)
    for tiles in (1, 3, 6):
        out = TiledExecutor(graph, tiles)(x, y)
        assert set(out) == {"full", "half"}
        assert_exact(out, ref)


def test_wrong_inputs_are_input_errors():
    model, x = REFERENCE_NETS["vgg"]()
    ex = TiledExecutor(lopinfer.capture(model, (x,)), 4)
    with pytest.raises(InputError, match="captured as float32"):
        ex(torch.randn(1, 3, 30, 32))
    with pytest.raises(InputError, match="expected 1 input"):
        ex(x, x)
    with pytest.raises(InputError, match="not a torch.Tensor"):
        ex([1, 2])


def test_partition():
    assert partition(10, 1) == [0, 10]
    assert partition(10, 4) == [0, 2, 5, 8, 10]  # round-half-even, all tiles non-empty
    assert partition(3, 7) == [0, 1, 2, 3]
    assert partition(10, [1, 0, 1]) == [0, 5, 10]
    with pytest.raises(ValueError):
        partition(10, 0)
    # edges from a callable are clipped to the node's rows and closed at both ends
    model, x = REFERENCE_NETS["vgg"]()
    ex = TiledExecutor(lopinfer.capture(model, (x,)), lambda node: [0, 1])
    conv = next(t for t in ex.tasks if t.kind == "tile")
    assert (conv.a, conv.b) == (0, 1)
    assert_exact(ex(x), reference(model, x))


def test_min_rows_caps_thin_tiles():
    edges = partition(14, 16, min_rows=2)
    assert all(b - a >= 2 for a, b in zip(edges, edges[1:]))
    assert len(partition(14, 16, min_rows=2)) - 1 == 7
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    ex = TiledExecutor(graph, 16, min_rows=4)
    assert all(t.b - t.a >= 4 for t in ex.tasks if t.kind == "tile" and
               graph[t.value].locality.size >= 4)
    assert_exact(ex(x), reference(model, x))
