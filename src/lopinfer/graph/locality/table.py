"""The table of rules, derived from the op catalogue, and the analysis that applies it."""

from __future__ import annotations

from ...log import logger
from ..ir import Graph
from ..ops import CATALOGUE
from . import elementwise, padding, reductions, resampling, shapes, windows
from .base import Rule

__all__ = ["FAMILIES", "RULES", "POINTWISE", "rule_for", "default_dim", "analyse"]

log = logger("graph.locality")

#: Rule families by the name the catalogue gives them (``Op.rule``).
FAMILIES: dict[str, Rule] = {
    "pointwise": elementwise.pointwise,
    "per_channel": elementwise.per_channel,
    "convolution": windows.convolution,
    "max_pool": windows.max_pool,
    "avg_pool": windows.avg_pool,
    "adaptive_pool": windows.adaptive_pool,
    "upsample": resampling.upsample,
    "pad": padding.pad,
    "cat": shapes.cat,
    "slice": shapes.slice_,
    "split": shapes.split,
    "select": shapes.select,
    "permute": shapes.permute,
    "unsqueeze": shapes.unsqueeze,
    "squeeze": shapes.squeeze,
    "expand": shapes.expand,
    "view": shapes.view,
    "layer_norm": reductions.layer_norm,
    "softmax": reductions.softmax,
    "reduce": reductions.reduce,
    "var": reductions.var,
    "linear": reductions.linear,
    "matmul": reductions.matmul,
}

#: ATen op packet name -> its rule. Ops not here are global.
RULES: dict[str, Rule] = {
    name: FAMILIES[op.rule] for name, op in CATALOGUE.items() if op.rule is not None}

#: Ops of the pointwise family (elementwise maths with broadcasting).
POINTWISE = frozenset(name for name, op in CATALOGUE.items() if op.rule == "pointwise")

# argument forms a rule may not know; anything else is a bug and propagates
_RULE_ERRORS = (IndexError, TypeError, ValueError, AttributeError, KeyError)


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
            except _RULE_ERRORS as exc:  # an argument form the rule does not know: global
                log.debug("%s (%s): its rule raised %s: %s; the node is global", node.name,
                          node.target, type(exc).__name__, exc)
                loc = None
        node.locality = loc
        td[node.name] = loc.dim if loc is not None else default_dim(node.meta.shape, tiled_dim)
    return graph
