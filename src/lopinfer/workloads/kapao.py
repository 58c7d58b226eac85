"""A KAPAO-style human-pose detector: a YOLOv5-family network whose heads carry keypoints.

Provenance: KAPAO (McNally et al., "Rethinking Keypoint Representations: Modeling
Keypoints and Poses as Objects for Multi-Person Human Pose Estimation", ECCV 2022) is
YOLOv5 with pose objects and keypoint objects as classes and the 17 COCO keypoints'
offsets in every pose object's output. The network here follows YOLOv5 v6 (the
``yolov5s`` layout at ``width=32``, ``depth=1``): a CSP (C3) backbone with a 6x6 stride-2
stem, SPPF, a PAN neck (top-down with nearest upsampling, bottom-up with strided convs)
and one 1x1 detection conv per scale (strides 8, 16, 32). Each of the 3 anchors per cell
predicts ``5 + classes + 2 * keypoints`` values (box, objectness, 18 classes: a person
pose object and 17 keypoint objects; 34 keypoint offsets) = 57, so a head is 171 channels.

Output: one tensor per scale, ``(1, 3, H/s, W/s, 57)`` after the sigmoid (YOLOv5's
inference head), e.g. for 640x640: (1, 3, 80, 80, 57), (1, 3, 40, 40, 57),
(1, 3, 20, 20, 57). Box decoding with the anchor grid and NMS are post-processing on the
device (a few thousand values), not part of the model. Random weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ._blocks import conv_bn, random_bn_stats

__all__ = ["KapaoNet", "kapao"]

COCO_KEYPOINTS = 17


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2 = conv_bn(c, c, 1), conv_bn(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions (YOLOv5)."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        h = c_out // 2
        self.cv1, self.cv2 = conv_bn(c_in, h, 1), conv_bn(c_in, h, 1)
        self.m = nn.Sequential(*(Bottleneck(h, shortcut) for _ in range(n)))
        self.cv3 = conv_bn(2 * h, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max pools (YOLOv5 v6)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        h = c_in // 2
        self.cv1, self.cv2 = conv_bn(c_in, h, 1), conv_bn(4 * h, c_out, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class KapaoNet(nn.Module):
    """YOLOv5 backbone + PAN neck + keypoint-carrying heads (see the module doc)."""

    def __init__(self, width: int = 32, depth: int = 1, classes: int = 1 + COCO_KEYPOINTS,
                 keypoints: int = COCO_KEYPOINTS, anchors: int = 3) -> None:
        super().__init__()
        w, d = width, depth
        self.na, self.no = anchors, 5 + classes + 2 * keypoints
        self.stem = conv_bn(3, w, 6, 2, 2)                                 # /2
        self.b2 = nn.Sequential(conv_bn(w, 2 * w, 3, 2), C3(2 * w, 2 * w, d))      # /4
        self.b3 = nn.Sequential(conv_bn(2 * w, 4 * w, 3, 2), C3(4 * w, 4 * w, 2 * d))  # /8
        self.b4 = nn.Sequential(conv_bn(4 * w, 8 * w, 3, 2), C3(8 * w, 8 * w, 3 * d))  # /16
        self.b5 = nn.Sequential(conv_bn(8 * w, 16 * w, 3, 2), C3(16 * w, 16 * w, d),
                                SPPF(16 * w, 16 * w))                     # /32
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lat5 = conv_bn(16 * w, 8 * w, 1)
        self.td4 = C3(16 * w, 8 * w, d, shortcut=False)
        self.lat4 = conv_bn(8 * w, 4 * w, 1)
        self.td3 = C3(8 * w, 4 * w, d, shortcut=False)                    # P3 out
        self.down3 = conv_bn(4 * w, 4 * w, 3, 2)
        self.bu4 = C3(8 * w, 8 * w, d, shortcut=False)                    # P4 out
        self.down4 = conv_bn(8 * w, 8 * w, 3, 2)
        self.bu5 = C3(16 * w, 16 * w, d, shortcut=False)                  # P5 out
        self.heads = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1)
                                   for c in (4 * w, 8 * w, 16 * w))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p3 = self.b3(self.b2(self.stem(x)))
        p4 = self.b4(p3)
        p5 = self.b5(p4)
        l5 = self.lat5(p5)
        t4 = self.td4(torch.cat([self.up(l5), p4], 1))
        l4 = self.lat4(t4)
        o3 = self.td3(torch.cat([self.up(l4), p3], 1))
        o4 = self.bu4(torch.cat([self.down3(o3), l4], 1))
        o5 = self.bu5(torch.cat([self.down4(o4), l5], 1))
        outs = []
        for head, f in zip(self.heads, (o3, o4, o5)):
            y = head(f)
            b, _, h, w_ = y.shape
            outs.append(y.view(b, self.na, self.no, h, w_).permute(0, 1, 3, 4, 2).sigmoid())
        return tuple(outs)


def kapao(height: int = 640, width_px: int | None = None, *, width: int = 32,
          depth: int = 1) -> KapaoNet:
    """A KAPAO-style detector for ``height x width_px`` frames (multiples of 32; default
    640x640); ``width``/``depth`` scale channels and C3 repeats (32/1 is YOLOv5s)."""
    w_px = height if width_px is None else width_px
    if height % 32 or w_px % 32:
        raise ValueError(f"kapao: frame {height}x{w_px} is not a multiple of 32")
    net = KapaoNet(width, depth)
    net.example_input_shape = (1, 3, height, w_px)  # type: ignore[assignment]
    return random_bn_stats(net)  # type: ignore[return-value]
