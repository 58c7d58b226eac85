"""The content hash is remembered per graph, and forgotten the moment a weight changes."""

from __future__ import annotations

import torch

import lopinfer
from lopinfer.graph.serialize import content_hash, graph_to_json, hash_with, weights_digest
from nets import REFERENCE_NETS


def test_hash_is_remembered_until_a_weight_changes():
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    first = content_hash(graph)
    assert content_hash(graph) == first == hash_with(graph_to_json(graph), weights_digest(graph))
    name, p = next(iter(graph.params.items()))
    with torch.no_grad():
        p.add_(1.0)  # in place: the version counter moves
    changed = content_hash(graph)
    assert changed != first and changed == hash_with(graph_to_json(graph), weights_digest(graph))
    graph.params[name] = p.clone()  # replaced by an equal tensor: same bytes, same hash
    assert content_hash(graph) == changed


def test_the_weights_digest_does_not_depend_on_how_the_bytes_are_split():
    """A server hashes parts as they arrive: any split of the same stream, the same hash."""
    from lopinfer.graph.serialize import WeightsDigest, weights_parts

    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    for max_bytes in (1 << 30, 100, 4):
        d = WeightsDigest()
        for part in weights_parts(graph, max_bytes):
            d.update(part)
        assert d.digest() == weights_digest(graph)
    assert hash_with(graph_to_json(graph), weights_digest(graph)) == content_hash(graph)
