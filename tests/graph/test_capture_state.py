"""Capture reads every kind of model state from the right place of the ExportedProgram,
drops export's assertion nodes, and the deploy format carries all of it."""

from __future__ import annotations

import asyncio

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lopinfer
from helpers import assert_exact, reference
from lopinfer.errors import CaptureError
from lopinfer.graph import pack, unpack
from lopinfer.runtime import TiledExecutor

KINDS = ("parameter", "buffer", "nonpersistent", "constant")


class Stateful(nn.Module):
    """A conv net whose per-channel scales and offsets are held as ``kinds`` (one each),
    plus a non-persistent int64 index buffer (like Swin's relative-position index) and
    no-op casts that torch.export turns into ``_assert_tensor_metadata``."""

    def __init__(self, kinds: list[str], channels: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1)
                                   for _ in kinds)
        self.kinds = kinds
        gen = torch.Generator().manual_seed(len(kinds))
        for i, kind in enumerate(kinds):
            value = torch.rand(1, channels, 1, 1, generator=gen) + 0.5
            if kind == "parameter":
                setattr(self, f"s{i}", nn.Parameter(value))
            elif kind == "buffer":
                self.register_buffer(f"s{i}", value)
            elif kind == "nonpersistent":
                self.register_buffer(f"s{i}", value, persistent=False)
            else:  # a plain tensor attribute: torch.export lifts it as a tensor constant
                setattr(self, f"s{i}", value)
        self.register_buffer("order", torch.randperm(channels, generator=gen), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(x.dtype)  # a no-op cast
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x)) * getattr(self, f"s{i}")
        x = x.float().index_select(1, self.order)
        keep = torch.zeros(x.shape[-1], dtype=torch.float32).to(dtype=torch.bool)
        return torch.where(keep, x.new_zeros(()), x)


def _targets(graph) -> set[str]:
    return {n.target for n in graph}


def test_every_kind_of_state_is_captured():
    model = Stateful(list(KINDS)).eval()
    x = torch.randn(1, 4, 19, 13)
    graph = lopinfer.capture(model, (x,))
    # every value the model holds reaches the graph, by its own name
    held = {p.data_ptr() for p in graph.params.values()}
    for i in range(len(KINDS)):
        assert getattr(model, f"s{i}").data_ptr() in held
    assert any(p.dtype == torch.int64 for p in graph.params.values())
    assert not any("assert" in t for t in _targets(graph))
    ref = reference(model, x)
    for tiles in (1, 4, 7):
        assert_exact(TiledExecutor(graph, tiles)(x), ref)


def test_state_survives_pack_and_unpack():
    model = Stateful(list(KINDS)).eval()
    x = torch.randn(1, 4, 23, 11)
    graph = lopinfer.capture(model, (x,))
    text, weights, digest = pack(graph)
    loaded = unpack(text, weights)
    assert set(loaded.params) == set(graph.params)
    for name, t in graph.params.items():
        assert loaded.params[name].dtype == t.dtype and torch.equal(loaded.params[name], t)
    assert lopinfer.graph.content_hash(loaded) == digest
    assert_exact(TiledExecutor(loaded, 5)(x), reference(model, x))


def test_nonpersistent_buffer_reaches_the_server():
    from lopinfer.runtime import Server, connect
    from lopinfer.scheduler import offload_plan

    model = Stateful(["nonpersistent", "constant"]).eval()
    x = torch.randn(1, 4, 17, 9)
    ref = reference(model, x)

    async def main():
        async with Server() as server:
            (url,) = await server.start("mem://state-test")
            async with connect(url, timeout=30) as client:
                session = await client.deploy(model, (x,))
                await session.use_plan(offload_plan(session.graph, 3))
                out = await session.infer(x)
                assert not session.last_report.fell_back, session.last_report.reason
                assert_exact(out, ref)

    asyncio.run(main())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=4),
       rows=st.integers(5, 24), tiles=st.integers(1, 6))
def test_random_graphs_with_random_state_kinds(kinds, rows, tiles):
    model = Stateful(kinds).eval()
    x = torch.randn(1, 4, rows, 7)
    graph = lopinfer.capture(model, (x,))
    loaded = unpack(*pack(graph)[:2])
    ref = reference(model, x)
    assert_exact(TiledExecutor(graph, tiles)(x), ref)
    assert_exact(TiledExecutor(loaded, tiles)(x), ref)


# -- errors inside capture: one line, the op and the module path ---------------------
@torch.library.custom_op("lopinfer_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _(x):
    return torch.empty_like(x)


class Outer(nn.Module):
    class Inner(nn.Module):
        def forward(self, x):
            return torch.ops.lopinfer_test.twice(x)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 2, 1), Outer.Inner())

    def forward(self, x):
        return self.body(x)


def test_unknown_op_is_a_one_line_capture_error_naming_op_and_module():
    with pytest.raises(CaptureError) as info:
        lopinfer.capture(Outer().eval(), (torch.randn(1, 2, 5, 5),))
    msg = str(info.value)
    assert "\n" not in msg
    assert "lopinfer_test" in msg and "twice" in msg
    assert "body.1 (Inner)" in msg


class Mutates(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(1))

    def forward(self, x):
        self.count.add_(1)
        return x + self.count


def test_state_mutation_is_a_capture_error():
    with pytest.raises(CaptureError, match="mutates state .*count"):
        lopinfer.capture(Mutates().eval(), (torch.randn(1, 2, 4, 4),))
