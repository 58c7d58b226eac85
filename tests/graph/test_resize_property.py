"""Property: every interpolate mode at ratios that stress the source-coordinate rounding
(non-integer downscales and upscales of sizes > 128) gives eager's result, tiled or not."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lopinfer
from helpers import assert_exact, reference
from lopinfer.runtime import TiledExecutor

MODES = {  # mode -> (spatial dims, interpolate keywords)
    "nearest": (2, {}),
    "nearest-exact": (2, {}),
    "linear": (1, {"align_corners": False}),
    "bilinear": (2, {"align_corners": False}),
    "bilinear-align": (2, {"align_corners": True}),
    "trilinear": (3, {"align_corners": False}),
    "bicubic": (2, {"align_corners": False}),
    "bilinear-aa": (2, {"align_corners": False, "antialias": True}),
}


class Resize(nn.Module):
    def __init__(self, mode: str, size: int | None, scale: float | None) -> None:
        super().__init__()
        self.mode, self.size, self.scale = mode, size, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd, kw = MODES[self.mode]
        mode = self.mode.split("-")[0] if self.mode != "nearest-exact" else self.mode
        rest = list(x.shape[3:])  # the other spatial dims keep their size
        if self.size is not None:
            return F.interpolate(x, size=[self.size, *rest], mode=mode, **kw)
        return F.interpolate(x, scale_factor=[self.scale] + [1.0] * len(rest), mode=mode,
                             **kw)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(sorted(MODES)), rows=st.integers(129, 400),
       ratio=st.floats(0.3, 2.7).filter(lambda r: abs(r * 8 - round(r * 8)) > 1e-3),
       by_scale=st.booleans(), tiles=st.sampled_from([1, 4, 7]), seed=st.integers(0, 99))
def test_resize_ratios_are_exact(mode, rows, ratio, by_scale, tiles, seed):
    nd = MODES[mode][0]
    gen = torch.Generator().manual_seed(seed)
    shape = [1, 2, rows] + [3] * (nd - 1)
    # high contrast: one ulp of a source coordinate shows as a large output change
    x = (torch.rand(shape, generator=gen) > 0.5).float() * 1000 - 500
    model = Resize(mode, None if by_scale else max(1, round(rows * ratio)),
                   ratio if by_scale else None).eval()
    ref = reference(model, x)
    graph = lopinfer.capture(model, (x,))
    out = TiledExecutor(graph, tiles)(x)
    assert_exact(out, ref)
    # tighter than the project's floor: float32 rounding of eager's own order only
    torch.testing.assert_close(out, ref, rtol=1.3e-6, atol=1e-6 * ref.abs().max().item())


def test_bicubic_and_antialias_are_kept_whole():
    x = torch.randn(1, 2, 150, 40)
    for mode in ("bicubic", "bilinear-aa"):
        graph = lopinfer.capture(Resize(mode, 131, None).eval(), (x,))
        (node,) = [n for n in graph if "upsample" in n.target]
        assert "bicubic" in node.target or "_aa" in node.target
        assert not node.local


def test_issue_example_bilinear_345x456_to_270():
    class Up(nn.Module):
        def forward(self, x):
            return F.interpolate(x, size=(270, 270), mode="bilinear", align_corners=False)

    x = (torch.rand(1, 3, 345, 456, generator=torch.Generator().manual_seed(0)) > 0.5) * 2.0
    model = Up().eval()
    ref = reference(model, x)
    graph = lopinfer.capture(model, (x,))
    for tiles in (1, 4, 7):
        out = TiledExecutor(graph, tiles)(x)
        torch.testing.assert_close(out, ref)  # float32 defaults: rtol 1.3e-6, atol 1e-5
