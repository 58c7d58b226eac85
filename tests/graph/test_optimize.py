"""Batch-norm folding: fewer nodes, same result (invariant 1), every tiling."""

from __future__ import annotations

import pytest
import torch

import lopinfer
from helpers import assert_exact, reference
from lopinfer.runtime import TiledExecutor
from nets import REFERENCE_NETS


@pytest.mark.parametrize("name", sorted(REFERENCE_NETS))
def test_fold_batch_norm_keeps_the_result(name):
    model, x = REFERENCE_NETS[name]()
    plain = lopinfer.capture(model, (x,))
    folded = lopinfer.capture(model, (x,), fold_bn=True)
    bn = "aten._native_batch_norm_legit_no_training.default"
    n_bn = sum(n.target == bn for n in plain)
    assert len(folded) <= len(plain)
    if name in ("vgg", "resnet", "unet", "mobilenet_v3", "conv3d"):
        assert len(folded) < len(plain) and sum(n.target == bn for n in folded) < n_bn
    ref = reference(model, x)
    for tiles in (1, 4, 7):
        assert_exact(TiledExecutor(folded, tiles)(x), ref)
    # the folded graph deploys like any other
    from lopinfer.graph.serialize import pack, unpack

    again = unpack(*pack(folded)[:2])
    assert_exact(TiledExecutor(again, 3)(x), ref)


def test_fold_in_float64_is_tight():
    model, x = REFERENCE_NETS["resnet"]()
    model, x = model.double(), x.double()
    folded = lopinfer.capture(model, (x,), fold_bn=True)
    assert_exact(TiledExecutor(folded, 5)(x), reference(model, x))
    assert torch.is_tensor(x)
