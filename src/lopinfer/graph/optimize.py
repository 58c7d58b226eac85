"""Graph rewrites that keep the result (within invariant 1) and cut tasks per tile.

``fold_batch_norm``: an inference batch norm right after a convolution (its only
reader) becomes the convolution's weight and bias: one node, so one kernel call per
tile instead of two. The fold is computed in float64 and cast back, so the result
moves by rounding only (about 1e-7 relative in float32).
"""

from __future__ import annotations

import torch

from .ir import Graph, Ref

__all__ = ["fold_batch_norm"]

_BN = "aten._native_batch_norm_legit_no_training.default"
_CONV = "aten.convolution.default"


def _param(graph: Graph, v: object) -> torch.Tensor | None:
    if isinstance(v, Ref) and graph.kind(v.name) == "param":
        return graph.params[v.name]
    return None


def fold_batch_norm(graph: Graph) -> int:
    """Fold every conv -> batch norm pair in place; returns how many were folded.
    Call :func:`~lopinfer.graph.locality.analyse` afterwards."""
    users = graph.users()
    drop: set[str] = set()
    gone: set[str] = set()  # batch norms now computed by their convolution
    folded = 0
    for bn in graph.nodes:
        if bn.target != _BN or bn.index != 0 or not isinstance(bn.args[0], Ref):
            continue
        conv_name = bn.args[0].name
        if conv_name not in graph or conv_name in graph.outputs or conv_name in drop:
            continue
        conv = graph[conv_name]
        if conv.target != _CONV or conv.args[6] or len(users[conv_name]) != 1:
            continue  # transposed weights are laid out (in, out): not folded here
        w = _param(graph, conv.args[1])
        b = _param(graph, conv.args[2]) if conv.args[2] is not None else None
        gamma, beta, mean, var = (_param(graph, a) if a is not None else None for a in bn.args[1:5])
        if w is None or mean is None or var is None or (conv.args[2] is not None and b is None):
            continue
        eps = float(bn.args[6])
        scale = torch.rsqrt(var.double() + eps)
        if gamma is not None:
            scale = scale * gamma.double()
        shift = -mean.double() * scale
        if b is not None:
            shift = shift + b.double() * scale
        if beta is not None:
            shift = shift + beta.double()
        new_w = (w.double() * scale.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        w_name, b_name = f"{bn.name}__folded_weight", f"{bn.name}__folded_bias"
        graph.params[w_name] = new_w.contiguous()
        graph.params[b_name] = shift.to(w.dtype)
        args = list(conv.args)
        args[1], args[2] = Ref(w_name), Ref(b_name)
        # the conv takes the batch norm's place (and name): its readers are unchanged
        conv.args = tuple(args)
        conv.name, conv.meta = bn.name, bn.meta
        drop.add(conv_name)
        gone.add(bn.name)
        folded += 1
    if folded:
        _rebuild(graph, [n for n in graph.nodes if not (n.target == _BN and n.name in gone)])
    return folded


def _rebuild(graph: Graph, nodes: list) -> None:
    live = set(graph.outputs)
    for node in reversed(nodes):
        if node.name in live:
            live.update(node.refs())
    nodes = [n for n in nodes if n.name in live]
    graph.nodes = nodes
    graph.params = {k: v for k, v in graph.params.items() if k in live}
    graph._by_name = {n.name: n for n in nodes}
    graph._check()
