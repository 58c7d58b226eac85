"""Sliding windows (convolution, transposed convolution, max/avg pooling) and
adaptive pooling: output rows need a window of input rows, padded only at true borders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._kernel import Interval, Kernel, bind_call, lowest, pad_rows, window_rows
from ..ir import Graph, Node, Ref
from .base import (
    TD,
    Dep,
    Locality,
    on_device,
    per_dim,
    primary,
    same_rows,
    whole_deps,
    with_pre,
)

__all__ = [
    "Window", "ConvWindow", "TransposedWindow", "MaxPoolWindow", "AvgPoolWindow", "Adaptive",
    "convolution", "max_pool", "avg_pool", "adaptive_pool",
]


# -- sliding windows: convolution, pooling -------------------------------------------
class Window(Locality):
    """Output row o reads input rows [o*s - p, o*s - p + d*(k-1) + 1)."""

    rule = "window"
    pad_value = 0.0

    def __init__(self, node: Node, dim: int, deps: list[Dep], *, k: int, s: int, p: int,
                 d: int, in_size: int, axis: int, pad_arg: int) -> None:
        super().__init__(node, dim, deps)
        self.k, self.s, self.p, self.d, self.in_size = k, s, p, d, in_size
        self.axis = axis  # index of the tiled dim among the spatial dims
        self.pad_arg = pad_arg  # position of the padding list in node.args

    def rows(self, a: int, b: int) -> tuple[int, int, int, int]:
        return window_rows(a, b, self.k, self.s, self.p, self.d, self.in_size)

    def need(self, a: int, b: int) -> list[Interval | None]:
        c, e, _, _ = self.rows(a, b)
        return [(c, e) if dep.dim is not None else None for dep in self.deps]

    def _args(self) -> tuple[Any, ...]:
        args = list(self.node.args)
        while len(args) <= self.pad_arg:  # trailing defaults: stride=[] (kernel), padding=0
            args.append([] if len(args) == 2 else 0)
        n = len(self.node.meta.shape) - self.dim + self.axis  # number of spatial dims
        pad = per_dim(args[self.pad_arg], n)
        pad[self.axis] = 0
        args[self.pad_arg] = pad
        return tuple(args)

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        _, _, top, bottom = self.rows(a, b)
        call = bind_call(self.node, slots, static, args=self._args())
        if top == 0 and bottom == 0:
            return call
        dim, value = self.deps[0].dim, self.pad_value
        assert dim is not None  # a window reads its first dep in rows
        if value == "lowest":
            value = lowest(self.node.meta.dtype)
        return with_pre(call, slots[self.deps[0].ref],
                         lambda x: pad_rows(x, dim, top, bottom, value))


class ConvWindow(Window):
    """Convolution tiles. On CPU (float32, 2D/3D) the weight is reordered once into
    oneDNN's blocked layout and shared by every tile: eager ``aten.convolution``
    reorders it on each call, a cost that would otherwise be paid once per tile."""

    rule = "window(conv)"
    # set by convolution() / on first pack; read with getattr (absent until set)
    in_shape: tuple[int, ...]
    _packs: tuple[torch.Tensor, dict[int, Any]]

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        c, e, top, bottom = self.rows(a, b)
        call = self._packed(static, top + (e - c) + bottom) if len(slots) == 1 else None
        if call is None:
            return super().make(a, b, slots, static)
        if top == 0 and bottom == 0:
            return call
        dim = self.deps[0].dim
        assert dim is not None  # a window reads its first dep in rows
        return lambda x: call(pad_rows(x, dim, top, bottom, 0.0))

    def _packed(self, static: Mapping[str, Any], rows: int) -> Kernel | None:
        """oneDNN call with the weight reordered for this tile's input shape: oneDNN
        picks its weight layout by input shape, and a weight packed for another shape
        is silently repacked on every call (slowly). Packs are shared by equal tiles."""
        args = self._args()
        w_ref, b_ref = args[1], args[2]
        w = static.get(w_ref.name) if isinstance(w_ref, Ref) else None
        bias = static.get(b_ref.name) if isinstance(b_ref, Ref) else None
        in_shape = list(getattr(self, "in_shape", ()))
        if (w is None or w.dim() not in (4, 5) or w.dtype != torch.float32 or w.is_cuda
                or (isinstance(b_ref, Ref) and bias is None) or not _ONEDNN or not in_shape):
            return None
        n = w.dim() - 2
        stride, pad, dil = (per_dim(args[i], n) for i in (3, 4, 5))
        groups = args[8]
        in_shape[self.dim] = rows
        packs: tuple[torch.Tensor, dict[int, Any]] | None = getattr(self, "_packs", None)
        if packs is None or packs[0] is not w:
            self._packs = packs = (w, {})
        packed = packs[1].get(rows)
        if packed is None:
            try:
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    w, pad, stride, dil, groups, in_shape)
            except RuntimeError:
                return None
            packs[1][rows] = packed
        op = torch.ops.mkldnn._convolution_pointwise
        return lambda x: op(x, packed, bias, pad, stride, dil, groups, "none", [], None)


_ONEDNN = bool(torch.backends.mkldnn.is_available()) and hasattr(
    torch.ops.mkldnn, "_convolution_pointwise")


class MaxPoolWindow(Window):
    rule = "window(max)"
    pad_value = "lowest"  # type: ignore[assignment]


class AvgPoolWindow(Window):
    """Explicit zero rows at borders, then the divisor is corrected per row as ATen's."""

    rule = "window(avg)"

    def __init__(self, *args: Any, count_include_pad: bool, divisor: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.count_include_pad = count_include_pad
        self.divisor = divisor

    def _count(self, o: int) -> int:
        start = o * self.s - self.p
        end = min(start + self.k, self.in_size + self.p)
        if self.count_include_pad:
            return end - start
        return min(end, self.in_size) - max(start, 0)

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        call = super().make(a, b, slots, static)
        _, _, top, bottom = self.rows(a, b)
        if self.divisor or (top == 0 and bottom == 0):
            return call
        factors = [self.k / self._count(o) for o in range(a, b)]
        if all(f == 1.0 for f in factors):
            return call
        shape = [1] * len(self.node.meta.shape)
        shape[self.dim] = b - a
        scale = torch.tensor(factors, dtype=self.node.meta.dtype).reshape(shape)

        def fn(*xs: torch.Tensor) -> torch.Tensor:
            y = call(*xs)
            return y * on_device(scale, y)

        return fn


def convolution(node: Node, g: Graph, td: TD) -> Locality | None:
    # convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    x = primary(node)
    d = td.get(x)
    if d is None:
        return None
    if d == 0:
        return same_rows(node, g, td, x, lambda d: 0)
    if d < 2 or d >= len(node.meta.shape):
        return None
    weight = g.meta(node.args[1].name).shape if isinstance(node.args[1], Ref) else None
    if weight is None or any(isinstance(r, Ref) and r.name == x for r in node.args[1:3]):
        return None
    n = len(weight) - 2
    i = d - 2
    k = weight[2 + i]
    s, p, dil = (per_dim(node.args[j], n)[i] for j in (3, 4, 5))
    deps = whole_deps(node, x, d)
    if deps[0].ref != x:
        return None
    if node.args[6]:  # transposed
        op = per_dim(node.args[7], n)[i]
        return TransposedWindow(node, d, deps, k=k, s=s, p=p, d=dil, in_size=g.meta(x).shape[d],
                                axis=i, pad_arg=4, output_padding=op)
    loc = ConvWindow(node, d, deps, k=k, s=s, p=p, d=dil, in_size=g.meta(x).shape[d], axis=i,
                     pad_arg=4)
    loc.in_shape = g.meta(x).shape
    return loc


class TransposedWindow(Window):
    """Input row i adds into output rows [i*s - p, i*s - p + d*(k-1) + 1)."""

    rule = "window(transposed)"

    def __init__(self, *args: Any, output_padding: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.output_padding = output_padding

    def rows(self, a: int, b: int) -> tuple[int, int, int, int]:
        dk = self.d * (self.k - 1) + 1
        s, p = self.s, self.p
        c = max(0, -(-(a + p - dk + 1) // s))
        c = min(c, (a + p) // s, self.in_size - 1)  # crop start stays >= 0
        e = min(self.in_size, (b - 1 + p) // s + 1)
        e = max(e, c + 1)
        return c, e, 0, 0

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        c, e, _, _ = self.rows(a, b)
        dk = self.d * (self.k - 1) + 1
        produced = (e - c - 1) * self.s + dk  # rows of the tile's output, unpadded coords
        start = a + self.p - c * self.s  # first wanted row in those coords
        extra = max(0, start + (b - a) - produced)
        args = list(self._args())
        n = len(self.node.meta.shape) - 2
        op = per_dim(args[7], n)
        op[self.axis] = extra  # rows past the last input (ATen's output_padding)
        args[7] = op
        call = bind_call(self.node, slots, static, args=tuple(args))
        dim = self.dim
        return lambda *xs: call(*xs).narrow(dim, start, b - a)


def max_pool(node: Node, g: Graph, td: TD) -> Locality | None:
    # max_pool2d_with_indices(x, kernel, stride=[], padding=0, dilation=1, ceil_mode=False)
    if node.index not in (None, 0):
        return None  # indices: global (only max_unpool reads them)
    return _pool(node, g, td, MaxPoolWindow, dilation_arg=4)


def avg_pool(node: Node, g: Graph, td: TD) -> Locality | None:
    # avg_pool2d(x, kernel, stride=[], padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None)
    a = list(node.args) + [None] * 7
    cip = True if a[5] is None else bool(a[5])
    return _pool(node, g, td, AvgPoolWindow, dilation_arg=None, count_include_pad=cip,
                 divisor=a[6])


def _pool(node: Node, g: Graph, td: TD, cls: type[Window], dilation_arg: int | None,
          **extra: Any) -> Locality | None:
    x = primary(node)
    d = td.get(x)
    if d is None:
        return None
    rank = len(node.meta.shape)
    kernel = list(node.args[1])
    n = len(kernel)
    if d < rank - n:
        return same_rows(node, g, td, x, lambda d: d) if d == 0 and rank == n + 2 else None
    i = d - (rank - n)
    args = list(node.args) + [None] * 5
    k = per_dim(kernel, n)[i]
    s = per_dim(args[2] or kernel, n)[i]
    p = per_dim(args[3] if args[3] is not None else 0, n)[i]
    dil = per_dim(args[dilation_arg] if dilation_arg and args[dilation_arg] is not None else 1, n)[i]
    return cls(node, d, whole_deps(node, x, d), k=k, s=s, p=p, d=dil,
               in_size=g.meta(x).shape[d], axis=i, pad_arg=3, **extra)


# -- adaptive pooling ----------------------------------------------------------------
class Adaptive(Locality):
    """Output row o reads [floor(o*H/O), ceil((o+1)*H/O)): windows of varying size."""

    rule = "adaptive"

    def __init__(self, node: Node, dim: int, deps: list[Dep], in_size: int, axis: int) -> None:
        super().__init__(node, dim, deps)
        self.in_size, self.axis = in_size, axis

    def _start(self, o: int) -> int:
        return (o * self.in_size) // self.size

    def _end(self, o: int) -> int:
        return -(-((o + 1) * self.in_size) // self.size)

    def need(self, a: int, b: int) -> list[Interval | None]:
        c, e = self._start(a), self._end(b - 1)
        return [(c, e) if d.dim is not None else None for d in self.deps]

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        args = list(self.node.args)
        osize = list(args[1])
        dim = self.dim
        if self.in_size % self.size == 0:  # uniform windows: one call on the slice
            osize[self.axis] = b - a
            args[1] = osize
            return bind_call(self.node, slots, static, args=tuple(args))
        osize[self.axis] = 1
        args[1] = osize
        call = bind_call(self.node, slots, static, args=tuple(args))
        c = self._start(a)
        spans = [(self._start(o) - c, self._end(o) - self._start(o)) for o in range(a, b)]
        return lambda x: torch.cat([call(x.narrow(dim, s, n)) for s, n in spans], dim)


def adaptive_pool(node: Node, g: Graph, td: TD) -> Locality | None:
    if node.index not in (None, 0):
        return None
    x = primary(node)
    d = td.get(x)
    if d is None:
        return None
    rank = len(node.meta.shape)
    n = len(node.args[1])
    if d < rank - n:
        return same_rows(node, g, td, x, lambda d: d) if d == 0 and rank == n + 2 else None
    if node.meta.shape[d] <= 1:
        return None  # output size 1 along the tiled dim: a global pooling, a barrier
    return Adaptive(node, d, whole_deps(node, x, d), g.meta(x).shape[d], d - (rank - n))

