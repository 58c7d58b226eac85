"""The content hash is remembered per graph, and forgotten the moment a weight changes."""

from __future__ import annotations

import torch

import lopinfer
from lopinfer.graph.serialize import _hash_now, content_hash, graph_to_json
from nets import REFERENCE_NETS


def test_hash_is_remembered_until_a_weight_changes():
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    first = content_hash(graph)
    assert content_hash(graph) == first == _hash_now(graph_to_json(graph), graph)
    name, p = next(iter(graph.params.items()))
    with torch.no_grad():
        p.add_(1.0)  # in place: the version counter moves
    changed = content_hash(graph)
    assert changed != first and changed == _hash_now(graph_to_json(graph), graph)
    graph.params[name] = p.clone()  # replaced by an equal tensor: same bytes, same hash
    assert content_hash(graph) == changed
