"""Constant, reflection and replication padding: output rows are shifted (mirrored,
clamped) input rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._kernel import Interval, Kernel, bind_call
from ..ir import Graph, Node
from .base import (
    TD,
    Dep,
    Locality,
    on_device,
    primary,
    same_rows,
    whole_deps,
)

__all__ = ["ConstantPad", "IndexPad", "pad"]


# -- padding -------------------------------------------------------------------------
def _pad_pair(pad: list[int], rank: int, d: int) -> tuple[int, int] | None:
    q = rank - 1 - d
    if 2 * q + 1 >= len(pad):
        return None
    return pad[2 * q], pad[2 * q + 1]


class ConstantPad(Locality):
    """Output row o is input row o - before, or the pad value outside the input."""

    rule = "pad(constant)"

    def __init__(self, node: Node, dim: int, deps: list[Dep], before: int, in_size: int) -> None:
        super().__init__(node, dim, deps)
        self.before, self.in_size = before, in_size

    def need(self, a: int, b: int) -> list[Interval | None]:
        c = min(max(a - self.before, 0), self.in_size)
        e = min(max(b - self.before, c), self.in_size)
        return [(c, e) if d.dim is not None else None for d in self.deps]

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        c, e = self.need(a, b)[0] or (0, 0)
        top = max(0, min(b, self.before) - a)
        bottom = (b - a) - top - (e - c)
        args = list(self.node.args)
        pad = list(args[1])
        q = len(self.node.meta.shape) - 1 - self.dim
        pad[2 * q], pad[2 * q + 1] = top, bottom
        args[1] = pad
        return bind_call(self.node, slots, static, args=tuple(args))


class IndexPad(Locality):
    """Reflection / replication padding: output row o reads one mapped input row."""

    rule = "pad(index)"

    def __init__(self, node: Node, dim: int, deps: list[Dep], before: int, in_size: int,
                 reflect: bool, pad_index: int) -> None:
        super().__init__(node, dim, deps)
        i = torch.arange(self.size) - before
        if reflect:
            i = i.abs()
            i = torch.where(i >= in_size, 2 * (in_size - 1) - i, i)
        self.src = i.clamp(0, in_size - 1)
        self.pad_index = pad_index

    def need(self, a: int, b: int) -> list[Interval | None]:
        rows = self.src[a:b]
        c, e = int(rows.min()), int(rows.max()) + 1
        return [(c, e) if d.dim is not None else None for d in self.deps]

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        c = int(self.src[a:b].min())
        idx = self.src[a:b] - c
        dim = self.dim
        pad = list(self.node.args[1])
        pad[self.pad_index], pad[self.pad_index + 1] = 0, 0
        if not any(pad):
            return lambda x: x.index_select(dim, on_device(idx, x))
        call = bind_call(self.node, slots, static, args=(self.node.args[0], pad))
        return lambda x: call(x.index_select(dim, on_device(idx, x)))


def pad(node: Node, g: Graph, td: TD) -> Locality | None:
    x = primary(node)
    d = td.get(x)
    if d is None:
        return None
    rank = len(node.meta.shape)
    pair = _pad_pair(list(node.args[1]), rank, d)
    if pair is None or pair == (0, 0):
        return same_rows(node, g, td, x, lambda d: d)
    deps = whole_deps(node, x, d)
    in_size = g.meta(x).shape[d]
    if node.target.startswith("aten.constant_pad_nd"):
        return ConstantPad(node, d, deps, pair[0], in_size)
    if min(pair) < 0:
        return None
    q = rank - 1 - d
    return IndexPad(node, d, deps, pair[0], in_size, "reflection" in node.target, 2 * q)

