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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_source_rows_follow_the_operand_precision(dtype):
    # ATen's scale is float for float32 (255 -> 474 maps output 158 to 84) and double
    # for float64 (85): hypothesis found the float64 probe wrong for float32 models
    class Resize(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.interpolate(x, size=[474, 3], mode="nearest")

    x = (torch.rand(1, 2, 255, 3) > 0.5).to(dtype) * 1000 - 500
    model = Resize().eval()
    graph = lopinfer.capture(model, (x,))
    for tiles in (1, 4):
        assert torch.equal(TiledExecutor(graph, tiles)(x), model(x))
