"""A dense-output segmentation net: LR-ASPP over a MobileNetV3-Large backbone.

Provenance: the architecture of torchvision's ``lraspp_mobilenet_v3_large`` (Howard et
al., "Searching for MobileNetV3", ICCV 2019: the backbone's inverted residual table and
the Lite R-ASPP head), written here so that the core environment needs no torchvision:
the backbone's last stage dilated instead of strided (output stride 16, as torchvision
builds it for segmentation), squeeze-excitation in the blocks the paper marks (each one
a global pooling: a barrier), the head's global-pooling gate on the 960-channel features,
low-level features at stride 8, and bilinear upsampling of the logits to the input size.
21 classes (PASCAL VOC, as torchvision's). Random weights.

Input ``(1, 3, H, W)`` (default 512x512), output ``(1, 21, H, W)`` logits: 22 MB at
512x512, the densest output of the workloads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import conv_bn, random_bn_stats

__all__ = ["LRASPPNet", "segment"]

# in, kernel, expanded, out, squeeze-excite, hardswish, stride, dilation (torchvision's
# mobilenet_v3_large table with dilated=True)
_LARGE = [
    (16, 3, 16, 16, False, False, 1, 1), (16, 3, 64, 24, False, False, 2, 1),
    (24, 3, 72, 24, False, False, 1, 1), (24, 5, 72, 40, True, False, 2, 1),
    (40, 5, 120, 40, True, False, 1, 1), (40, 5, 120, 40, True, False, 1, 1),
    (40, 3, 240, 80, False, True, 2, 1), (80, 3, 200, 80, False, True, 1, 1),
    (80, 3, 184, 80, False, True, 1, 1), (80, 3, 184, 80, False, True, 1, 1),
    (80, 3, 480, 112, True, True, 1, 1), (112, 3, 672, 112, True, True, 1, 1),
    (112, 5, 672, 160, True, True, 1, 2), (160, 5, 960, 160, True, True, 1, 2),
    (160, 5, 960, 160, True, True, 1, 2),
]
_LOW_INDEX = 6  # the block whose input is the stride-8, 40-channel low-level feature


def _div8(v: float) -> int:
    out = max(8, int(v + 4) // 8 * 8)
    return out + 8 if out < 0.9 * v else out


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        s = _div8(c // 4)
        self.fc1, self.fc2 = nn.Conv2d(c, s, 1), nn.Conv2d(s, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, k: int, exp: int, c_out: int, se: bool, hs: bool,
                 stride: int, dilation: int) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if exp != c_in:
            layers.append(conv_bn(c_in, exp, 1, act=act))
        # depthwise; the last stage dilated (output stride 16)
        layers.append(conv_bn(exp, exp, k, stride, p=(k - 1) // 2 * dilation, act=act,
                              groups=exp, dilation=dilation))
        if se:
            layers.append(SqueezeExcite(exp))
        layers.append(conv_bn(exp, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class LRASPPNet(nn.Module):
    """MobileNetV3-Large (dilated) + Lite R-ASPP head (see the module doc)."""

    def __init__(self, classes: int = 21, inter: int = 128) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act=nn.Hardswish)
        self.low = nn.Sequential(*(InvertedResidual(*r) for r in _LARGE[:_LOW_INDEX]))
        self.high = nn.Sequential(*(InvertedResidual(*r) for r in _LARGE[_LOW_INDEX:]),
                                  conv_bn(160, 960, 1, act=nn.Hardswish))
        self.cbr = conv_bn(960, inter, 1, act=nn.ReLU)
        self.gate = nn.Conv2d(960, inter, 1)
        self.low_cls, self.high_cls = nn.Conv2d(40, classes, 1), nn.Conv2d(inter, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low(self.stem(x))
        high = self.high(low)
        y = self.cbr(high) * torch.sigmoid(self.gate(F.adaptive_avg_pool2d(high, 1)))
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.low_cls(low) + self.high_cls(y)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def segment(height: int = 512, width_px: int | None = None, *, classes: int = 21) -> LRASPPNet:
    """The segmentation workload for ``height x width_px`` frames (multiples of 16)."""
    w_px = height if width_px is None else width_px
    if height % 16 or w_px % 16:
        raise ValueError(f"segment: frame {height}x{w_px} is not a multiple of 16")
    net = LRASPPNet(classes)
    net.example_input_shape = (1, 3, height, w_px)  # type: ignore[assignment]
    return random_bn_stats(net)  # type: ignore[return-value]
