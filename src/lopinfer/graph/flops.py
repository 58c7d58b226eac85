"""Floating-point operation counts per node, from shapes alone.

A multiply-accumulate counts as 2 FLOPs (convolution, linear, matrix products); a
pointwise op costs about one FLOP per output element (a few for the costlier ones);
pools cost one per window element read; normalisations a handful per element. Shape and
data-movement ops (views, permutes, slices, cat, copies, padding, indexing) cost 0.

The counts are estimates for weighing nodes against each other (the share of work in
local operators, a cost model's prior), not a benchmark. Each op's cost class comes from
the catalogue (:mod:`lopinfer.graph.ops`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .ir import Graph, Node, Ref
from .ops import Cost, lookup

__all__ = ["flops", "node_flops", "local_flops_share"]


def _shape(graph: Graph, v: Any) -> tuple[int, ...] | None:
    if isinstance(v, Ref):
        return graph.meta(v.name).shape
    return None


def _arg_shape(graph: Graph, node: Node, i: int) -> tuple[int, ...] | None:
    return _shape(graph, node.args[i]) if len(node.args) > i else None


def _window(v: Any, n: int) -> int:
    if isinstance(v, int):
        return v**n
    v = list(v)
    if len(v) == 1:
        return v[0] ** n
    return math.prod(v)


def _conv(graph: Graph, node: Node) -> int:
    x, w = _arg_shape(graph, node, 0), _arg_shape(graph, node, 1)
    if x is None or w is None:
        return 0
    transposed = bool(node.args[6]) if len(node.args) > 6 else False
    out = node.meta.numel
    if transposed:
        # weight (Cin, Cout/groups, *k): every input element scatters into Cout/g * k outputs
        macs = math.prod(x) * math.prod(w[1:])
    else:
        # weight (Cout, Cin/groups, *k): every output element gathers Cin/g * k inputs
        macs = out * math.prod(w[1:])
    bias = out if len(node.args) > 2 and isinstance(node.args[2], Ref) else 0
    return 2 * macs + bias


def _matmul(graph: Graph, node: Node, op: str) -> int:
    if op == "linear":
        x, w = _arg_shape(graph, node, 0), _arg_shape(graph, node, 1)
        if x is None or w is None:
            return 0
        bias = node.meta.numel if len(node.args) > 2 and isinstance(node.args[2], Ref) else 0
        return 2 * node.meta.numel * w[-1] + bias
    if op in ("addmm", "baddbmm", "addbmm", "addmv"):
        a, add = _arg_shape(graph, node, 1), node.meta.numel
    else:
        a, add = _arg_shape(graph, node, 0), 0
    if a is None:
        return 0
    # out = a @ b: every output element is a dot product over a's last dim
    return 2 * node.meta.numel * a[-1] + add


def _pool(node: Node) -> int:
    ks = node.args[1] if len(node.args) > 1 else 1
    n = max(1, len(node.meta.shape) - 2)
    return node.meta.numel * _window(ks, n)


def node_flops(graph: Graph, node: Node) -> int:
    """Estimated FLOPs of one node (0 for shape and data-movement ops)."""
    op = node.target.split(".")[1]
    out = node.meta.numel
    entry = lookup(node.target)
    cost = entry.flops if entry is not None else _cost_by_name(op)
    if cost == "conv":
        return _conv(graph, node)
    if cost == "matmul":
        return _matmul(graph, node, op)
    if cost == "free":
        return 0
    if cost == "pool":
        return _pool(node)
    if cost == "reduction":
        x = _arg_shape(graph, node, 0)
        return math.prod(x) if x is not None else out
    if cost == "softmax":
        return 5 * out  # max, subtract, exp, sum, divide
    if cost == "batch_norm":
        return 2 * out  # folded into a scale and a shift per channel
    if cost == "norm":
        return 8 * out  # mean, variance, normalise, scale, shift
    if cost == "resize":
        n = max(1, len(node.meta.shape) - 2)
        return (2**n) * 2 * out  # interpolate between 2^n neighbours
    per_element = entry.per_element if entry is not None else 1
    return per_element * out


def _cost_by_name(op: str) -> Cost:
    """The cost class of an op the catalogue does not know: pools and resizes by name."""
    if op.startswith(("max_pool", "avg_pool")):
        return "pool"
    if op.startswith(("upsample_", "_upsample_")):
        return "resize"
    return "pointwise"


def flops(graph: Graph) -> dict[str, int]:
    """Map each node name to its estimated FLOPs (see :func:`node_flops`)."""
    return {node.name: node_flops(graph, node) for node in graph.nodes}


def local_flops_share(graph: Graph, counts: dict[str, int] | None = None,
                      local: Sequence[str] | None = None) -> float:
    """Share of the graph's FLOPs in local (tileable) nodes, in [0, 1] (0 for no FLOPs).

    ``counts`` reuses a :func:`flops` result; ``local`` names the local nodes (default:
    those with a locality).
    """
    counts = flops(graph) if counts is None else counts
    names = {n.name for n in graph.nodes if n.local} if local is None else set(local)
    total = sum(counts.values())
    if total <= 0:
        return 0.0
    return sum(v for k, v in counts.items() if k in names) / total
