"""Pointwise and per-channel ops: output rows need the same input rows."""

from __future__ import annotations

from ..ir import Graph, Node
from .base import (
    TD,
    Dep,
    Locality,
    primary,
    same_rows,
    values_read,
)

__all__ = ["pointwise", "per_channel"]


def pointwise(node: Node, g: Graph, td: TD) -> Locality | None:
    """Elementwise maths with broadcasting; batch norm (inference) is per-channel."""
    shape = node.meta.shape
    rank = len(shape)
    refs = values_read(node)
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
    x = primary(node)
    return same_rows(node, g, td, x, lambda d: d if d != 1 else None)

