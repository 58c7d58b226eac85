"""Locality analysis: one small rule per ATen op family.

For a node, a rule decides whether its output can be computed in tiles of rows along
one dimension (*local*) and, if so, returns a :class:`Locality`: the tiled output dim,
for each value read (:class:`Dep`) which of its dims is read in rows (``None``: read
whole), the map from output rows [a, b) to the input rows needed (``need``), and a
kernel that computes exactly those output rows from exactly those input rows
(``make``), padding only at true borders. A rule that does not apply returns ``None``
and the node is *global* (a barrier): safe by default. Ops not in :data:`RULES` are
global.

The tracked dim starts at each input's first spatial dim (dim 2 of N,C,H,W or of
N,C,D,H,W; ``analyse(tiled_dim=...)`` picks another) and is followed through permutes,
views and reshapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ._kernel import Interval, Kernel, bind_call, lowest, norm_dim, pad_rows, window_rows
from .ir import Graph, Node, Ref

__all__ = ["Dep", "Locality", "analyse", "RULES", "rule_for"]

TD = Mapping[str, "int | None"]  # value name -> tracked dim (None: not tracked)


@dataclass(frozen=True, slots=True)
class Dep:
    """A value a local node reads: along ``dim`` in rows, or whole when ``dim`` is None."""

    ref: str
    dim: int | None


class Locality:
    """Output rows [a, b) along ``dim`` need the same rows of each dep (the identity
    family: pointwise, per-channel, shape ops); subclasses override ``need``/``make``."""

    rule = "rows"

    def __init__(self, node: Node, dim: int, deps: list[Dep]) -> None:
        self.node = node
        self.dim = dim
        self.deps = tuple(deps)
        self.size = node.meta.shape[dim]

    def need(self, a: int, b: int) -> list[Interval | None]:
        return [(a, b) if d.dim is not None else None for d in self.deps]

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        """Kernel ``fn(*xs)`` for output rows [a, b); ``xs[slots[ref]]`` holds exactly
        the rows ``need(a, b)`` of each activation, ``static`` the parameters."""
        return bind_call(self.node, slots, static)

    def halo(self) -> int:
        """Rows two adjacent tiles both read from the first row-read dep (0: none)."""
        if self.size < 2:
            return 0
        m = self.size // 2
        for lo, hi in zip(self.need(0, m), self.need(m, self.size)):
            if lo is not None and hi is not None:
                return max(0, lo[1] - hi[0])
        return 0

    def __repr__(self) -> str:
        deps = ", ".join(f"{d.ref}:{'whole' if d.dim is None else d.dim}" for d in self.deps)
        return f"<{type(self).__name__} {self.rule} dim={self.dim} deps=({deps})>"


# -- helpers -------------------------------------------------------------------------
def _refs(node: Node) -> list[str]:
    return list(dict.fromkeys(node.refs()))


def _x(node: Node) -> str:
    a = node.args[0]
    return a.name if isinstance(a, Ref) else ""


def _whole_deps(node: Node, primary: str, in_dim: int) -> list[Dep]:
    return [Dep(r, in_dim if r == primary else None) for r in _refs(node)]


def _expand(v: Any, n: int) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = list(v)
    return v * n if len(v) == 1 else v


def _with_pre(call: Kernel, slot: int, pre: Callable[[torch.Tensor], torch.Tensor]) -> Kernel:
    """Kernel applying ``pre`` to activation ``slot`` before ``call``."""
    if slot == 0:
        return lambda x, *rest: call(pre(x), *rest)

    def fn(*xs: torch.Tensor) -> torch.Tensor:
        xs2 = list(xs)
        xs2[slot] = pre(xs[slot])
        return call(*xs2)

    return fn


def _same_rows(node: Node, g: Graph, td: TD, x: str, out_dim_of: Callable[[int], int | None]) -> Locality | None:
    """Identity-family rule on primary input ``x``: output dim = out_dim_of(td[x])."""
    d = td.get(x)
    if d is None:
        return None
    od = out_dim_of(d)
    if od is None or node.meta.shape[od] != g.meta(x).shape[d]:
        return None
    return Locality(node, od, _whole_deps(node, x, d))


def _on(const: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A kernel constant (made on the CPU at compile time) on the activation's device."""
    return const if const.device == like.device else const.to(like.device)


# -- pointwise and per-channel ops ---------------------------------------------------
POINTWISE = set(
    """abs neg relu relu6 gelu sigmoid tanh hardswish hardsigmoid silu mish elu celu selu
    leaky_relu hardtanh softplus exp exp2 expm1 log log1p log2 log10 sqrt rsqrt reciprocal
    sin cos tan asin acos atan sinh cosh erf erfc erfinv sign sgn floor ceil round trunc frac
    clamp clamp_min clamp_max logical_not bitwise_not isnan isinf isfinite nan_to_num
    _to_copy clone alias lift_fresh_copy detach square logit threshold add sub rsub mul div
    pow maximum minimum fmax fmin remainder fmod atan2 eq ne lt le gt ge logical_and
    logical_or logical_xor bitwise_and bitwise_or bitwise_xor where masked_fill lerp
    addcmul addcdiv copy hypot xlogy fill native_dropout""".split()
)


def pointwise(node: Node, g: Graph, td: TD) -> Locality | None:
    """Elementwise maths with broadcasting; batch norm (inference) is per-channel."""
    shape = node.meta.shape
    rank = len(shape)
    refs = _refs(node)
    out_dim = None
    for r in refs:
        d = td.get(r)
        if d is None:
            continue
        m = g.meta(r).shape
        od = d + rank - len(m)
        if 0 <= od < rank and m[d] == shape[od] and shape[od] > 1:
            out_dim = od
            break
    if out_dim is None:
        return None
    deps = []
    for r in refs:
        m = g.meta(r).shape
        ad = out_dim - (rank - len(m))
        if ad < 0 or m[ad] == 1:
            deps.append(Dep(r, None))
        elif m[ad] == shape[out_dim]:
            deps.append(Dep(r, ad))
        else:
            return None
    return Locality(node, out_dim, deps)


def per_channel(node: Node, g: Graph, td: TD) -> Locality | None:
    """Batch norm (inference), prelu: parameters index channels (dim 1), not broadcast."""
    if node.target.startswith("aten.native_batch_norm.") and node.args[5]:
        return None  # training-mode statistics are over every row: global
    x = _x(node)
    return _same_rows(node, g, td, x, lambda d: d if d != 1 else None)


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
        pad = _expand(args[self.pad_arg], n)
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
        return _with_pre(call, slots[self.deps[0].ref],
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
        stride, pad, dil = (_expand(args[i], n) for i in (3, 4, 5))
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
            return y * _on(scale, y)

        return fn


def convolution(node: Node, g: Graph, td: TD) -> Locality | None:
    # convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    x = _x(node)
    d = td.get(x)
    if d is None:
        return None
    if d == 0:
        return _same_rows(node, g, td, x, lambda d: 0)
    if d < 2 or d >= len(node.meta.shape):
        return None
    weight = g.meta(node.args[1].name).shape if isinstance(node.args[1], Ref) else None
    if weight is None or any(isinstance(r, Ref) and r.name == x for r in node.args[1:3]):
        return None
    n = len(weight) - 2
    i = d - 2
    k = weight[2 + i]
    s, p, dil = (_expand(node.args[j], n)[i] for j in (3, 4, 5))
    deps = _whole_deps(node, x, d)
    if deps[0].ref != x:
        return None
    if node.args[6]:  # transposed
        op = _expand(node.args[7], n)[i]
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
        op = _expand(args[7], n)
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
    x = _x(node)
    d = td.get(x)
    if d is None:
        return None
    rank = len(node.meta.shape)
    kernel = list(node.args[1])
    n = len(kernel)
    if d < rank - n:
        return _same_rows(node, g, td, x, lambda d: d) if d == 0 and rank == n + 2 else None
    i = d - (rank - n)
    args = list(node.args) + [None] * 5
    k = _expand(kernel, n)[i]
    s = _expand(args[2] or kernel, n)[i]
    p = _expand(args[3] if args[3] is not None else 0, n)[i]
    dil = _expand(args[dilation_arg] if dilation_arg and args[dilation_arg] is not None else 1, n)[i]
    return cls(node, d, _whole_deps(node, x, d), k=k, s=s, p=p, d=dil,
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
    x = _x(node)
    d = td.get(x)
    if d is None:
        return None
    rank = len(node.meta.shape)
    n = len(node.args[1])
    if d < rank - n:
        return _same_rows(node, g, td, x, lambda d: d) if d == 0 and rank == n + 2 else None
    if node.meta.shape[d] <= 1:
        return None  # output size 1 along the tiled dim: a global pooling, a barrier
    return Adaptive(node, d, _whole_deps(node, x, d), g.meta(x).shape[d], d - (rank - n))


# -- upsampling ----------------------------------------------------------------------
class Upsample(Locality):
    """Nearest / nearest-exact / linear interpolation along the tiled dim, done here with
    ATen's source-index formulas; the other spatial dims by the op itself."""

    rule = "upsample"

    def __init__(self, node: Node, dim: int, deps: list[Dep], *, mode: str, in_size: int,
                 axis: int, n: int, scales: list[float] | None, align: bool,
                 source: torch.Tensor | None = None) -> None:
        super().__init__(node, dim, deps)
        self.mode, self.axis, self.n, self.scales, self.align = mode, axis, n, scales, align
        out = self.size
        scale = scales[axis] if scales else None
        ct = torch.float64 if node.meta.dtype == torch.float64 else torch.float32
        if mode == "linear":
            i0, i1, lam = _linear_source(in_size, out, scale, align, ct)
            self.lam1 = lam.to(node.meta.dtype)
            self.lam0 = (1 - lam).to(node.meta.dtype)
        else:
            assert source is not None
            i0 = i1 = source
        self.i0, self.i1 = i0, i1

    def need(self, a: int, b: int) -> list[Interval | None]:
        c, e = int(self.i0[a]), int(self.i1[b - 1]) + 1
        return [(c, e) if d.dim is not None else None for d in self.deps]

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        c = int(self.i0[a])
        dim = self.dim
        idx0 = self.i0[a:b] - c
        shape = [1] * len(self.node.meta.shape)
        shape[dim] = b - a
        if self.mode == "linear":
            idx1 = self.i1[a:b] - c
            l0 = self.lam0[a:b].reshape(shape)
            l1 = self.lam1[a:b].reshape(shape)

            def along(x: torch.Tensor) -> torch.Tensor:
                return (x.index_select(dim, _on(idx0, x)) * _on(l0, x)
                        + x.index_select(dim, _on(idx1, x)) * _on(l1, x))
        else:

            def along(x: torch.Tensor) -> torch.Tensor:
                return x.index_select(dim, _on(idx0, x))

        if self.n == 1:
            return along
        rest = self._rest_call(b - a, slots, static)
        return lambda x: rest(along(x))

    def _rest_call(self, rows: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        """The op itself with the identity along the tiled dim (scale 1 / same size)."""
        target = self.node.target.rsplit(".", 1)[0] + ".vec"
        out_spatial = list(self.node.meta.shape[-self.n:])
        if self.scales:
            osize, scales = None, list(self.scales)
            scales[self.axis] = 1.0
        else:
            out_spatial[self.axis] = rows
            osize, scales = out_spatial, None
        x = self.node.args[0]
        args = (x, osize, scales) if self.mode != "linear" else (x, osize, self.align, scales)
        from .ir import resolve_op

        return bind_call(self.node, slots, static, args=args, kwargs={}, op=resolve_op(target))


def _linear_source(in_size: int, out: int, scale: float | None, align: bool,
                   ct: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows and weights of linear interpolation, as ATen's CPU kernels compute them
    (UpSample.h: ``area_pixel_compute_scale``, ``compute_source_index_and_lambda``).

    The scale is rounded to ``ct`` first (``1/scale`` or ``in/out`` in double, then cast);
    ``scale * (o + 0.5) - 0.5`` is a fused multiply-add in the vectorised kernels, so it is
    computed in float64 (exact for float32 operands) and rounded to ``ct`` once.
    """
    o = torch.arange(out, dtype=torch.float64)
    if out == in_size:  # ATen copies rows when sizes match, whatever the scale says
        idx = torch.arange(out)
        return idx, idx, torch.zeros(out, dtype=ct)
    if align:
        sc = torch.tensor((in_size - 1) / (out - 1) if out > 1 else 0.0, dtype=ct)
        real = (sc.double() * o).to(ct)
    else:
        sc = torch.tensor(1.0 / scale if scale and scale > 0 else in_size / out, dtype=ct)
        real = (sc.double() * (o + 0.5) - 0.5).to(ct).clamp_min(0)
    i0 = real.floor().to(torch.int64).clamp_max(in_size - 1)
    lam = (real - i0.to(ct)).clamp(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, lam


def upsample(node: Node, g: Graph, td: TD) -> Locality | None:
    x = _x(node)
    d = td.get(x)
    if d is None:
        return None
    name = node.target.split(".")[1]
    n = int(name[-2])
    rank = len(node.meta.shape)
    if d < rank - n:
        return _same_rows(node, g, td, x, lambda d: d)
    mode = "linear" if ("linear" in name or "bilinear" in name) else (
        "nearest-exact" if "exact" in name else "nearest")
    args = list(node.args)
    align = False
    if mode == "linear":
        align = bool(args[2])
        tail = args[3:]
    else:
        tail = args[2:]
    if node.target.endswith(".vec"):
        scales = list(tail[0]) if tail and tail[0] is not None else None
    else:  # .default: per-dim optional scales after the output size
        sc = list(tail) + [None] * (n - len(tail))
        scales = None if all(v is None for v in sc) else [v or 0.0 for v in sc]
    source = None if mode == "linear" else _nearest_source(node, g.meta(x).shape, d)
    return Upsample(node, d, _whole_deps(node, x, d), mode=mode, in_size=g.meta(x).shape[d],
                    axis=d - (rank - n), n=n, scales=scales, align=align, source=source)


def _nearest_source(node: Node, in_shape: tuple[int, ...], d: int) -> torch.Tensor:
    """The input row each output row of a nearest resize copies, asked of the op itself
    (its kernels special-case sizes per op and per rank: a 1-d resize of equal sizes
    follows the scale, a 2-d one copies), by resizing a tensor of row numbers."""
    # only dim d is probed: ATen computes each dim's indices alone, so the other dims
    # are made 1 wide (and their output sizes 1), whatever sizes a peer declared
    first = len(in_shape) - int(node.target.split(".")[1][-2])
    shape = [1] * len(in_shape)
    shape[d] = in_shape[d]
    args, axis = list(node.args), d - first
    if args[1] is not None:  # output sizes
        args[1] = [v if k == axis else 1 for k, v in enumerate(args[1])]
    if node.target.endswith(".vec"):
        if len(args) > 2 and args[2] is not None:  # scale factors
            args[2] = [v if k == axis else 1.0 for k, v in enumerate(args[2])]
    else:  # per-dim optional scales after the output size
        args[2:] = [v if k == axis else None for k, v in enumerate(args[2:])]
    rows = torch.arange(in_shape[d], dtype=torch.float64).reshape(shape)
    out = node.op(rows, *args[1:], **node.kwargs)
    return out.reshape(-1).round().to(torch.int64)


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
            return lambda x: x.index_select(dim, _on(idx, x))
        call = bind_call(self.node, slots, static, args=(self.node.args[0], pad))
        return lambda x: call(x.index_select(dim, _on(idx, x)))


def pad(node: Node, g: Graph, td: TD) -> Locality | None:
    x = _x(node)
    d = td.get(x)
    if d is None:
        return None
    rank = len(node.meta.shape)
    pair = _pad_pair(list(node.args[1]), rank, d)
    if pair is None or pair == (0, 0):
        return _same_rows(node, g, td, x, lambda d: d)
    deps = _whole_deps(node, x, d)
    in_size = g.meta(x).shape[d]
    if node.target.startswith("aten.constant_pad_nd"):
        return ConstantPad(node, d, deps, pair[0], in_size)
    if min(pair) < 0:
        return None
    q = rank - 1 - d
    return IndexPad(node, d, deps, pair[0], in_size, "reflection" in node.target, 2 * q)


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
    x = _x(node)
    d = td.get(x)
    if d is None:
        return None
    a = list(node.args) + [None] * 5
    rank = len(node.meta.shape)
    sd = norm_dim(a[1] or 0, rank)
    if sd != d:
        return _same_rows(node, g, td, x, lambda d: d)
    size = g.meta(x).shape[d]
    start, _, step = slice(a[2], a[3], a[4] or 1).indices(size)
    return Along(node, d, _whole_deps(node, x, d), [(0, start, step)], [node.meta.shape[d]])


def split(node: Node, g: Graph, td: TD) -> Locality | None:
    # split_with_sizes(x, sizes, dim=0)[i] / split.Tensor(x, size, dim=0)[i]
    x = _x(node)
    d = td.get(x)
    if d is None or node.index is None:
        return None
    rank = len(g.meta(x).shape)
    sd = norm_dim(node.args[2] if len(node.args) > 2 else 0, rank)
    if sd != d:
        return _same_rows(node, g, td, x, lambda d: d)
    size = g.meta(x).shape[d]
    if isinstance(node.args[1], int):
        sizes = [min(node.args[1], size - s) for s in range(0, size, node.args[1])]
    else:
        sizes = list(node.args[1])
    start = sum(sizes[: node.index])
    return Along(node, d, _whole_deps(node, x, d), [(0, start, 1)], [sizes[node.index]])


def select(node: Node, g: Graph, td: TD) -> Locality | None:
    x = _x(node)
    d = td.get(x)
    if d is None:
        return None
    sd = norm_dim(node.args[1], len(g.meta(x).shape))
    if sd == d:
        return None
    return _same_rows(node, g, td, x, lambda d: d - (sd < d))


def permute(node: Node, g: Graph, td: TD) -> Locality | None:
    x = _x(node)
    rank = len(node.meta.shape)
    perm = [norm_dim(p, rank) for p in node.args[1]]
    return _same_rows(node, g, td, x, lambda d: perm.index(d))


def unsqueeze(node: Node, g: Graph, td: TD) -> Locality | None:
    u = norm_dim(node.args[1], len(node.meta.shape))
    return _same_rows(node, g, td, _x(node), lambda d: d + (u <= d))


def squeeze(node: Node, g: Graph, td: TD) -> Locality | None:
    x = _x(node)
    shape = g.meta(x).shape
    rank = len(shape)
    if len(node.args) < 2:
        dims = [i for i, s in enumerate(shape) if s == 1]
    else:
        v = node.args[1]
        dims = [norm_dim(i, rank) for i in (v if isinstance(v, (list, tuple)) else [v])]
        dims = [i for i in dims if shape[i] == 1]
    return _same_rows(node, g, td, x, lambda d: None if d in dims else d - sum(i < d for i in dims))


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
    x = _x(node)
    d = td.get(x)
    if d is None:
        return None
    rank, xr = len(node.meta.shape), len(g.meta(x).shape)
    od = d + rank - xr
    if node.meta.shape[od] != g.meta(x).shape[d]:
        return None
    return Resized(node, od, _whole_deps(node, x, d), 1)


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
    x = _x(node)
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
        return View(node, j, _whole_deps(node, x, d), in_shape=src, in_dim=d,
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


# -- normalisation, softmax and reductions over other dims; matrix products ------------
def _not_over(dims_of: Callable[[Node, int], list[int] | None], keep_of: Callable[[Node], bool]) -> Callable[..., Locality | None]:
    def rule(node: Node, g: Graph, td: TD) -> Locality | None:
        x = _x(node)
        d = td.get(x)
        if d is None:
            return None
        rank = len(g.meta(x).shape)
        dims = dims_of(node, rank)
        if dims is None or d in dims:
            return None
        keep = keep_of(node)
        return _same_rows(node, g, td, x, lambda d: d if keep else d - sum(i < d for i in dims))

    return rule


def _arg(i: int, default: Any = None) -> Callable[[Node], Any]:
    return lambda n: n.args[i] if len(n.args) > i and n.args[i] is not None else n.kwargs.get("keepdim", default)


def _reduce_dims(i: int) -> Callable[[Node, int], list[int] | None]:
    def dims(node: Node, rank: int) -> list[int] | None:
        v = node.args[i] if len(node.args) > i else node.kwargs.get("dim")
        if v is None or v == []:
            return None  # all dims
        v = v if isinstance(v, (list, tuple)) else [v]
        return [norm_dim(k, rank) for k in v]

    return dims


def _layer_norm_dims(node: Node, rank: int) -> list[int]:
    return list(range(rank - len(node.args[1]), rank))


def _softmax_dims(node: Node, rank: int) -> list[int]:
    return [norm_dim(node.args[1], rank)]


def linear(node: Node, g: Graph, td: TD) -> Locality | None:
    x = _x(node)
    rank = len(node.meta.shape)
    return _same_rows(node, g, td, x, lambda d: d if d < rank - 1 else None)


def matmul(node: Node, g: Graph, td: TD) -> Locality | None:
    """mm(x, w) / addmm(bias, x, w): rows of x; bmm(x, y): batches of both or rows of x."""
    name = node.target.split(".")[1]
    xi = 1 if name == "addmm" else 0
    x = node.args[xi].name if isinstance(node.args[xi], Ref) else ""
    d = td.get(x)
    if d is None or d == len(g.meta(x).shape) - 1:
        return None
    if node.meta.shape[d] != g.meta(x).shape[d]:
        return None
    deps = []
    for r in _refs(node):
        m = g.meta(r).shape
        if r == x:
            deps.append(Dep(r, d))
        elif name == "bmm" and d == 0:
            deps.append(Dep(r, 0))
        elif name == "addmm" and len(m) == 2 and m[0] == node.meta.shape[0] and m[0] > 1:
            deps.append(Dep(r, 0))
        else:
            deps.append(Dep(r, None))
    if node.args.count(node.args[xi]) > 1:
        return None
    return Locality(node, d, deps)


# -- the table -----------------------------------------------------------------------
Rule = Callable[[Node, Graph, TD], "Locality | None"]

RULES: dict[str, Rule] = {name: pointwise for name in POINTWISE}
RULES.update({
    "_native_batch_norm_legit_no_training": per_channel,
    "native_batch_norm": per_channel,
    "_prelu_kernel": per_channel,
    "convolution": convolution,
    "max_pool2d_with_indices": max_pool,
    "max_pool3d_with_indices": max_pool,
    "avg_pool2d": avg_pool,
    "avg_pool3d": avg_pool,
    "_adaptive_avg_pool2d": adaptive_pool,
    "_adaptive_avg_pool3d": adaptive_pool,
    "adaptive_max_pool2d": adaptive_pool,
    "adaptive_max_pool3d": adaptive_pool,
    "constant_pad_nd": pad,
    "reflection_pad1d": pad, "reflection_pad2d": pad, "reflection_pad3d": pad,
    "replication_pad1d": pad, "replication_pad2d": pad, "replication_pad3d": pad,
    "cat": cat,
    "slice": slice_,
    "split_with_sizes": split,
    "split": split,
    "select": select,
    "permute": permute,
    "unsqueeze": unsqueeze,
    "squeeze": squeeze,
    "expand": expand,
    "view": view, "_unsafe_view": view, "reshape": view, "view_copy": view,
    "layer_norm": _not_over(_layer_norm_dims, lambda n: True),
    "native_layer_norm": _not_over(_layer_norm_dims, lambda n: True),
    "_softmax": _not_over(_softmax_dims, lambda n: True),
    "_log_softmax": _not_over(_softmax_dims, lambda n: True),
    "sum": _not_over(_reduce_dims(1), _arg(2, False)),
    "mean": _not_over(_reduce_dims(1), _arg(2, False)),
    "amax": _not_over(_reduce_dims(1), _arg(2, False)),
    "amin": _not_over(_reduce_dims(1), _arg(2, False)),
    "var": _not_over(_reduce_dims(1), lambda n: bool(n.kwargs.get("keepdim", False))),
    "linear": linear,
    "mm": matmul, "addmm": matmul, "bmm": matmul,
})
for _n in ("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
           "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d",
           "upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d"):
    RULES[_n] = upsample


def rule_for(target: str) -> Rule | None:
    """The rule for an op name like "aten.convolution.default" (None: global)."""
    return RULES.get(target.split(".")[1])


def default_dim(shape: tuple[int, ...], tiled_dim: int | None = None) -> int | None:
    """Where tracking starts for a value no rule tracks: the first spatial dim."""
    d = 2 if tiled_dim is None else tiled_dim
    if len(shape) < 3 or d >= len(shape) or shape[d] <= 1:
        return None
    return d


def analyse(graph: Graph, *, tiled_dim: int | None = None) -> Graph:
    """Set ``node.locality`` on every node of ``graph`` (in place) and return it.

    Args:
        tiled_dim: the dim of each input to tile (default: 2, the first spatial dim:
            H of N,C,H,W, D of N,C,D,H,W, L of N,C,L).
    """
    td: dict[str, int | None] = {}
    for name, meta in graph.inputs.items():
        td[name] = default_dim(meta.shape, tiled_dim)
    graph.input_dims = {name: td[name] for name in graph.inputs}
    for name in graph.params:
        td[name] = None
    for node in graph.nodes:
        rule = rule_for(node.target)
        loc = None
        if rule is not None and node.meta.numel > 0:
            try:
                loc = rule(node, graph, td)
            except (IndexError, TypeError, ValueError, AttributeError, KeyError):
                loc = None  # an argument form the rule does not know: global, safely
        node.locality = loc
        td[node.name] = loc.dim if loc is not None else default_dim(node.meta.shape, tiled_dim)
    return graph
