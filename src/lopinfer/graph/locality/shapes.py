"""Shape ops (cat, split, slice, select, permute, (un)squeeze, expand, view/reshape):
the tracked dim followed through them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .._kernel import Interval, Kernel, bind_call, norm_dim
from ..ir import Graph, Node, Ref
from .base import (
    TD,
    Dep,
    Locality,
    primary,
    same_rows,
    whole_deps,
)

__all__ = [
    "Along", "Resized", "View", "cat", "slice_", "split", "select", "permute", "unsqueeze",
    "squeeze", "expand", "view",
]


# -- shape ops: cat, split, slice, select, permute, views ----------------------------
class Along(Locality):
    """Rows of the output are a strided/offset range of rows of one input (slice,
    split piece) or pieces of several inputs (cat along the tiled dim)."""

    rule = "along"

    def __init__(self, node: Node, dim: int, deps: list[Dep], pieces: list[tuple[int, int, int]],
                 lengths: list[int]) -> None:
        # per row-read dep, in dep order: (output offset, input start, step) and the
        # number of output rows it gives
        super().__init__(node, dim, deps)
        self.pieces = pieces
        self.piece_len = lengths

    def _spans(self, a: int, b: int) -> list[tuple[int, int]]:
        out = []
        for (off, start, step), length in zip(self.pieces, self.piece_len):
            lo, hi = max(a, off), min(b, off + length)
            if lo >= hi:
                out.append((start, start))
            else:
                out.append((start + (lo - off) * step, start + (hi - 1 - off) * step + 1))
        return out

    def need(self, a: int, b: int) -> list[Interval | None]:
        spans = iter(self._spans(a, b))
        return [next(spans) if d.dim is not None else None for d in self.deps]

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        dim = self.dim
        steps = [step for _, _, step in self.pieces]
        live = [i for i, (c, e) in enumerate(self._spans(a, b)) if e > c]
        order = [slots[d.ref] for d in self.deps if d.dim is not None]
        if len(order) == 1:
            step = steps[0]
            if step == 1:
                return lambda x: x
            index = (slice(None),) * dim + (slice(None, None, step),)
            return lambda x: x[index]
        sel = [order[i] for i in live]
        return lambda *xs: torch.cat([xs[i] for i in sel], dim)


def cat(node: Node, g: Graph, td: TD) -> Locality | None:
    tensors = node.args[0]
    rank = len(node.meta.shape)
    cd = norm_dim(node.args[1] if len(node.args) > 1 else 0, rank)
    refs = [t.name for t in tensors if isinstance(t, Ref)]
    dims = [td[r] for r in refs if td.get(r) is not None]
    # a piece tracked along the cat dim (tokens after a patch embedding, beside a class
    # token) makes the cat itself local along it: prefer that to another piece's dim
    d = cd if cd in dims else next(iter(dims), None)
    if d is None or len(refs) != len(tensors):
        return None
    if d != cd:
        if node.meta.shape[d] <= 1:
            return None
        deps = [Dep(r, d) for r in dict.fromkeys(refs)]
        if any(g.meta(r).shape[d] != node.meta.shape[d] for r in refs):
            return None
        return Locality(node, d, deps)
    if len(set(refs)) != len(refs):
        return None  # the same tensor twice along the tiled dim: keep global
    pieces, lengths, off = [], [], 0
    for r in refs:
        n = g.meta(r).shape[d]
        pieces.append((off, 0, 1))
        lengths.append(n)
        off += n
    return Along(node, d, [Dep(r, d) for r in refs], pieces, lengths)


def slice_(node: Node, g: Graph, td: TD) -> Locality | None:
    # slice.Tensor(x, dim=0, start=None, end=None, step=1)
    x = primary(node)
    d = td.get(x)
    if d is None:
        return None
    a = list(node.args) + [None] * 5
    rank = len(node.meta.shape)
    sd = norm_dim(a[1] or 0, rank)
    if sd != d:
        return same_rows(node, g, td, x, lambda d: d)
    size = g.meta(x).shape[d]
    start, _, step = slice(a[2], a[3], a[4] or 1).indices(size)
    return Along(node, d, whole_deps(node, x, d), [(0, start, step)], [node.meta.shape[d]])


def split(node: Node, g: Graph, td: TD) -> Locality | None:
    # split_with_sizes(x, sizes, dim=0)[i] / split.Tensor(x, size, dim=0)[i]
    x = primary(node)
    d = td.get(x)
    if d is None or node.index is None:
        return None
    rank = len(g.meta(x).shape)
    sd = norm_dim(node.args[2] if len(node.args) > 2 else 0, rank)
    if sd != d:
        return same_rows(node, g, td, x, lambda d: d)
    size = g.meta(x).shape[d]
    if isinstance(node.args[1], int):
        sizes = [min(node.args[1], size - s) for s in range(0, size, node.args[1])]
    else:
        sizes = list(node.args[1])
    start = sum(sizes[: node.index])
    return Along(node, d, whole_deps(node, x, d), [(0, start, 1)], [sizes[node.index]])


def select(node: Node, g: Graph, td: TD) -> Locality | None:
    x = primary(node)
    d = td.get(x)
    if d is None:
        return None
    sd = norm_dim(node.args[1], len(g.meta(x).shape))
    if sd == d:
        return None
    return same_rows(node, g, td, x, lambda d: d - (sd < d))


def permute(node: Node, g: Graph, td: TD) -> Locality | None:
    x = primary(node)
    rank = len(node.meta.shape)
    perm = [norm_dim(p, rank) for p in node.args[1]]
    return same_rows(node, g, td, x, lambda d: perm.index(d))


def unsqueeze(node: Node, g: Graph, td: TD) -> Locality | None:
    u = norm_dim(node.args[1], len(node.meta.shape))
    return same_rows(node, g, td, primary(node), lambda d: d + (u <= d))


def squeeze(node: Node, g: Graph, td: TD) -> Locality | None:
    x = primary(node)
    shape = g.meta(x).shape
    rank = len(shape)
    if len(node.args) < 2:
        dims = [i for i, s in enumerate(shape) if s == 1]
    else:
        v = node.args[1]
        dims = [norm_dim(i, rank) for i in (v if isinstance(v, (list, tuple)) else [v])]
        dims = [i for i in dims if shape[i] == 1]
    return same_rows(node, g, td, x, lambda d: None if d in dims else d - sum(i < d for i in dims))


class Resized(Locality):
    """An identity-family op whose arguments name the tiled dim's length (expand)."""

    rule = "rows(resized)"

    def __init__(self, node: Node, dim: int, deps: list[Dep], size_arg: int) -> None:
        super().__init__(node, dim, deps)
        self.size_arg = size_arg

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        args = list(self.node.args)
        sizes = list(args[self.size_arg])
        sizes[self.dim] = b - a
        args[self.size_arg] = sizes
        return bind_call(self.node, slots, static, args=tuple(args))


def expand(node: Node, g: Graph, td: TD) -> Locality | None:
    x = primary(node)
    d = td.get(x)
    if d is None:
        return None
    rank, xr = len(node.meta.shape), len(g.meta(x).shape)
    od = d + rank - xr
    if node.meta.shape[od] != g.meta(x).shape[d]:
        return None
    return Resized(node, od, whole_deps(node, x, d), 1)


class View(Locality):
    """view/reshape following the tracked dim through a merge or split of dims: the
    group's flat index runs ``inner_in`` per input row and ``inner_out`` per output row."""

    rule = "view"

    def __init__(self, node: Node, dim: int, deps: list[Dep], *, in_shape: tuple[int, ...],
                 in_dim: int, group_in: tuple[int, int], inner_in: int, inner_out: int) -> None:
        super().__init__(node, dim, deps)
        self.in_shape, self.in_dim = in_shape, in_dim
        self.group_in, self.inner_in, self.inner_out = group_in, inner_in, inner_out

    def need(self, a: int, b: int) -> list[Interval | None]:
        c = (a * self.inner_out) // self.inner_in
        e = -(-(b * self.inner_out) // self.inner_in)
        return [(c, e) if d.dim is not None else None for d in self.deps]

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        (c, e), = [n for n in self.need(a, b) if n is not None]
        out_shape = list(self.node.meta.shape)
        out_shape[self.dim] = b - a
        i0, i1 = self.group_in
        flat_shape = [*self.in_shape[:i0], (e - c) * self.inner_in, *self.in_shape[i1:]]
        lo = a * self.inner_out - c * self.inner_in
        n = (b - a) * self.inner_out
        if lo == 0 and n == (e - c) * self.inner_in:
            return lambda x: x.reshape(out_shape)
        return lambda x: x.reshape(flat_shape).narrow(i0, lo, n).reshape(out_shape)


def view(node: Node, g: Graph, td: TD) -> Locality | None:
    x = primary(node)
    d = td.get(x)
    if d is None:
        return None
    src, dst = g.meta(x).shape, node.meta.shape
    groups = _view_groups(src, dst)
    if groups is None:
        return None
    for (i0, i1), (j0, j1) in groups:
        if not i0 <= d < i1:
            continue
        if math.prod(src[i0:d]) != 1:
            return None  # rows of d are not contiguous in the group
        j = next((j for j in range(j0, j1) if dst[j] > 1), None)
        if j is None:
            return None
        return View(node, j, whole_deps(node, x, d), in_shape=src, in_dim=d,
                    group_in=(i0, i1), inner_in=math.prod(src[d + 1:i1]),
                    inner_out=math.prod(dst[j + 1:j1]))
    return None


def _view_groups(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[tuple[int, int], tuple[int, int]]] | None:
    """Pair minimal runs of dims with equal products: [((i0, i1), (j0, j1)), ...]."""
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        i0, j0 = i, j
        p = src[i] if i < len(src) else 1
        q = dst[j] if j < len(dst) else 1
        i, j = min(i + 1, len(src)), min(j + 1, len(dst))
        while p != q:
            if p < q and i < len(src):
                p *= src[i]
                i += 1
            elif q < p and j < len(dst):
                q *= dst[j]
                j += 1
            else:
                return None
        groups.append(((i0, i), (j0, j)))
        if i0 == i and j0 == j:
            break
    return groups

