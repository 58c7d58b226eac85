"""Resizes (nearest, nearest-exact, linear): ATen's source-row formulas along the
tiled dim, the op itself along the others."""

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

__all__ = ["Upsample", "upsample"]


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
                return (x.index_select(dim, on_device(idx0, x)) * on_device(l0, x)
                        + x.index_select(dim, on_device(idx1, x)) * on_device(l1, x))
        else:

            def along(x: torch.Tensor) -> torch.Tensor:
                return x.index_select(dim, on_device(idx0, x))

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
        from ..ir import resolve_op

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
    x = primary(node)
    d = td.get(x)
    if d is None:
        return None
    name = node.target.split(".")[1]
    n = int(name[-2])
    rank = len(node.meta.shape)
    if d < rank - n:
        return same_rows(node, g, td, x, lambda d: d)
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
    source = None if mode == "linear" else _nearest_source(node, g.meta(x).shape, d,
                                                             g.meta(x).dtype)
    return Upsample(node, d, whole_deps(node, x, d), mode=mode, in_size=g.meta(x).shape[d],
                    axis=d - (rank - n), n=n, scales=scales, align=align, source=source)


def _nearest_source(node: Node, in_shape: tuple[int, ...], d: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The input row each output row of a nearest resize copies, asked of the op itself
    (its kernels special-case sizes per op and per rank: a 1-d resize of equal sizes
    follows the scale, a 2-d one copies), by resizing a tensor of row numbers.

    The probe has the input's precision: ATen computes the scale in the operand's
    math type (double for float64, float otherwise), and 255 -> 474 rows maps row 158
    to 84 in float but 85 in double."""
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
    probe = torch.float64 if dtype == torch.float64 else torch.float32  # rows < 2**24: exact
    rows = torch.arange(in_shape[d], dtype=probe).reshape(shape)
    out = node.op(rows, *args[1:], **node.kwargs)
    return out.reshape(-1).round().to(torch.int64)

