"""Normalisation, softmax and reductions over other dims than the tracked one, and
matrix products along the rows of their left operand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._kernel import norm_dim
from ..ir import Graph, Node, Ref
from .base import (
    TD,
    Dep,
    Locality,
    primary,
    same_rows,
    values_read,
)

__all__ = ["layer_norm", "softmax", "reduce", "var", "linear", "matmul"]


def _not_over(dims_of: Callable[[Node, int], list[int] | None], keep_of: Callable[[Node], bool]) -> Callable[..., Locality | None]:
    def rule(node: Node, g: Graph, td: TD) -> Locality | None:
        x = primary(node)
        d = td.get(x)
        if d is None:
            return None
        rank = len(g.meta(x).shape)
        dims = dims_of(node, rank)
        if dims is None or d in dims:
            return None
        keep = keep_of(node)
        return same_rows(node, g, td, x, lambda d: d if keep else d - sum(i < d for i in dims))

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


layer_norm = _not_over(_layer_norm_dims, lambda n: True)
softmax = _not_over(_softmax_dims, lambda n: True)  # _softmax and _log_softmax
reduce = _not_over(_reduce_dims(1), _arg(2, False))  # sum, mean, amax, amin
var = _not_over(_reduce_dims(1), lambda n: bool(n.kwargs.get("keepdim", False)))


def linear(node: Node, g: Graph, td: TD) -> Locality | None:
    x = primary(node)
    rank = len(node.meta.shape)
    return same_rows(node, g, td, x, lambda d: d if d < rank - 1 else None)


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
    for r in values_read(node):
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

