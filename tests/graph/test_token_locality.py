"""Token locality: after a patch embedding, per-token ops on [B, N, C] are local along N,
and a ViT runs exact in tiles of tokens."""

from __future__ import annotations

import pytest
import torch

import lopinfer
from helpers import assert_exact, reference
from lopinfer.graph.flops import local_flops_share
from lopinfer.runtime import TiledExecutor
from nets import vit

PER_TOKEN = ("aten.linear.default", "aten.layer_norm.default", "aten.gelu.default")


def test_per_token_ops_are_local_along_tokens():
    model, x = vit()
    graph = lopinfer.capture(model, (x,))
    tokens = [n for n in graph if n.target in PER_TOKEN and len(n.meta.shape) == 3]
    assert len(tokens) >= 10
    assert all(n.local and n.locality.dim == 1 for n in tokens), [
        n for n in tokens if not n.local or n.locality.dim != 1]
    # the class-token concatenation is local along the tokens it joins
    (cat,) = [n for n in graph if n.target == "aten.cat.default"]
    assert cat.local and cat.locality.dim == 1
    assert local_flops_share(graph) >= 0.6


@pytest.mark.parametrize("tiles", [1, 4, 7])
def test_vit_is_exact_in_token_tiles(tiles):
    model, x = vit()
    graph = lopinfer.capture(model, (x,))
    out = TiledExecutor(graph, tiles)(x)
    assert_exact(out, reference(model, x))
    torch.testing.assert_close(out, reference(model, x))
