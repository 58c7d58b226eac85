"""Building blocks shared by the locality rules: binding a node's call, row intervals.

A tile kernel is a plain callable ``fn(*activations) -> Tensor`` made once, when a plan
is compiled, so running a tile costs one Python call plus the ATen op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .ir import Node, Ref

Interval = tuple[int, int]
Kernel = Callable[..., torch.Tensor]

_SLOT = object()


class _Slot:
    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i


def bind_call(
    node: Node,
    slots: Mapping[str, int],
    static: Mapping[str, Any],
    *,
    args: tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
    op: Any = None,
) -> Kernel:
    """Make ``fn(*xs)`` calling ``node``'s op with Ref ``r`` replaced by ``xs[slots[r]]``
    (activations, given per call) or ``static[r]`` (parameters, fixed now).

    ``args``/``kwargs``/``op`` override the node's own (tile-adjusted arguments).
    """
    op = op or node.op
    args = node.args if args is None else args
    kwargs = node.kwargs if kwargs is None else kwargs
    index = node.index

    def sub(v: Any) -> Any:
        if isinstance(v, Ref):
            if v.name in slots:
                return _Slot(slots[v.name])
            return static[v.name]
        if isinstance(v, list):
            return [sub(x) for x in v]
        if isinstance(v, tuple):
            return tuple(sub(x) for x in v)
        return v

    t_args = [sub(a) for a in args]
    t_kwargs = {k: sub(v) for k, v in kwargs.items()}
    top = [(pos, a.i) for pos, a in enumerate(t_args) if isinstance(a, _Slot)]
    nested = [
        pos
        for pos, a in enumerate(t_args)
        if isinstance(a, (list, tuple)) and any(isinstance(x, _Slot) for x in a)
    ]
    if any(isinstance(v, _Slot) for v in t_kwargs.values()) or any(
        isinstance(x, (list, tuple)) for pos in nested for x in t_args[pos]
    ):
        raise NotImplementedError(f"{node.name}: activation in an unsupported argument position")

    if not nested:
        # the common case: activations are top-level positional arguments
        if index is None:

            def fn(*xs: torch.Tensor) -> torch.Tensor:
                a = t_args.copy()
                for pos, i in top:
                    a[pos] = xs[i]
                return op(*a, **t_kwargs)
        else:

            def fn(*xs: torch.Tensor) -> torch.Tensor:
                a = t_args.copy()
                for pos, i in top:
                    a[pos] = xs[i]
                return op(*a, **t_kwargs)[index]

        return fn

    def fill(v: Any, xs: tuple[torch.Tensor, ...]) -> Any:
        if isinstance(v, _Slot):
            return xs[v.i]
        if isinstance(v, (list, tuple)):
            return [fill(x, xs) for x in v]
        return v

    def fn_nested(*xs: torch.Tensor) -> torch.Tensor:
        a = [fill(v, xs) if (isinstance(v, (_Slot, list, tuple))) else v for v in t_args]
        out = op(*a, **t_kwargs)
        return out if index is None else out[index]

    return fn_nested


def pad_rows(x: torch.Tensor, dim: int, top: int, bottom: int, value: float) -> torch.Tensor:
    """Pad ``x`` along ``dim`` with ``top``/``bottom`` rows of ``value`` (true borders only)."""
    if top == 0 and bottom == 0:
        return x
    pad = [0, 0] * (x.dim() - dim)
    pad[-2], pad[-1] = top, bottom
    return torch.ops.aten.constant_pad_nd.default(x, pad, value)


def window_rows(a: int, b: int, k: int, s: int, p: int, d: int, size: int) -> tuple[int, int, int, int]:
    """Input rows for output rows [a, b) of a sliding window (kernel k, stride s,
    padding p, dilation d) over ``size`` rows: (c, d, pad_top, pad_bottom) where [c, d)
    are the real rows and the pads are rows outside the input (true borders)."""
    lo = a * s - p
    hi = (b - 1) * s - p + d * (k - 1) + 1
    c = min(max(lo, 0), size)
    e = min(max(hi, c), size)
    top = c - lo if lo < c else 0
    bottom = (hi - lo) - top - (e - c)
    return c, e, top, bottom


def lowest(dtype: torch.dtype) -> float:
    """The identity of max: -inf for floats, the minimum for integers."""
    if dtype.is_floating_point:
        return float("-inf")
    if dtype == torch.bool:
        return 0
    return torch.iinfo(dtype).min


def norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d
