"""Nearest resizes copy the rows ATen's kernels copy: the source of each output row is
asked of the op itself (kernels special-case sizes per rank: a 1-d resize of equal
sizes follows its scale, a 2-d one copies)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lopinfer
from helpers import assert_exact
from lopinfer.runtime import TiledExecutor


class _Resize(nn.Module):
    def __init__(self, scale: float, mode: str) -> None:
        super().__init__()
        self.scale, self.mode = scale, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x + 1, scale_factor=self.scale, mode=self.mode)


@pytest.mark.parametrize("shape", [(1, 3, 2), (1, 3, 5), (1, 2, 2, 3), (1, 2, 7, 2)])
@pytest.mark.parametrize("scale", [1.3, 0.6, 2.0, 1.0])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_resizes_are_exact_at_every_tiling(shape, scale, mode):
    x = torch.randn(*shape, dtype=torch.float64)
    model = _Resize(scale, mode).eval()
    try:
        ref = model(x)
    except RuntimeError:  # a size this resize cannot produce: nothing to compare
        pytest.skip(f"eager refuses {shape} x {scale}")
    graph = lopinfer.capture(model, (x,))
    for tiles in (1, 2, 3):
        assert_exact(TiledExecutor(graph, tiles)(x), ref)
