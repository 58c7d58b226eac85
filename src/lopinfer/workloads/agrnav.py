"""An AGRNav-style semantic scene completion network over a LiDAR occupancy grid.

Provenance: AGRNav (Wang et al., "AGRNav: Efficient and Energy-Saving Autonomous
Navigation for Air-Ground Robots in Occlusion-Prone Environments", ICRA 2024) predicts
the occupancy and semantics of occluded space with a lightweight network (SCONet) over a
SemanticKITTI-sized voxel grid: 256 x 256 x 32 voxels (x, y, height), mostly empty. As
in LMSCNet (Roldao et al., 3DV 2020), on which such nets build, the grid is processed
2D-over-height: the 32 height slices are the channels of a 256 x 256 bird's-eye image,
so every convolution is local along both ground axes. The net here: a 4-level 2D
encoder (conv-BN-ReLU pairs, max pooling by 2), a self-attention block over the 32 x 32
bottleneck positions (1024 tokens, one head: a global operator, the barrier of the
net), a decoder of nearest 2x upsampling + skip concatenations, and a dense head giving
``classes`` logits per voxel at half resolution (LMSCNet's 1:2 scale; the full 1:1
output of 20 SemanticKITTI classes would be 168 MB per frame, larger than any robot's
link could carry at a useful rate). Random weights.

Input: ``(1, height, X, Y)`` float32 occupancy in {0, 1} (see
:func:`lopinfer.workloads.inputs.lidar_grid`). Output: ``(1, classes, height / 2,
X / 2, Y / 2)``, for the defaults (1, 4, 16, 128, 128): 4 MB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._blocks import conv_bn, random_bn_stats

__all__ = ["AgrNavNet", "agrnav"]


def _pair(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(c_in, c_out, 3, act=nn.ReLU), conv_bn(c_out, c_out, 3, act=nn.ReLU))


class PositionAttention(nn.Module):
    """Single-head self-attention over all positions of a feature map, residual."""

    def __init__(self, c: int, key_dim: int = 32) -> None:
        super().__init__()
        self.q, self.k = nn.Conv2d(c, key_dim, 1), nn.Conv2d(c, key_dim, 1)
        self.v, self.out = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)
        self.scale = key_dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q(x).flatten(2).transpose(1, 2)            # b, hw, d
        k = self.k(x).flatten(2)                             # b, d, hw
        v = self.v(x).flatten(2).transpose(1, 2)             # b, hw, c
        a = torch.softmax(torch.bmm(q, k) * self.scale, dim=-1)
        y = torch.bmm(a, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.out(y)


class AgrNavNet(nn.Module):
    """2D-over-height encoder-decoder with bottleneck attention (see the module doc)."""

    def __init__(self, height: int = 32, classes: int = 4, width: int = 16) -> None:
        super().__init__()
        w = width
        self.height, self.classes = height, classes
        self.enc1 = _pair(height, 2 * w)        # 1:1
        self.enc2 = _pair(2 * w, 3 * w)         # 1:2
        self.enc3 = _pair(3 * w, 4 * w)         # 1:4
        self.enc4 = _pair(4 * w, 6 * w)         # 1:8 (bottleneck)
        self.attn = PositionAttention(6 * w)
        self.dec3 = _pair(6 * w + 4 * w, 4 * w)
        self.dec2 = _pair(4 * w + 3 * w, 3 * w)
        self.head = nn.Conv2d(3 * w, classes * (height // 2), 1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(grid)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        e4 = self.attn(self.enc4(F.max_pool2d(e3, 2)))
        d3 = self.dec3(torch.cat([F.interpolate(e4, scale_factor=2.0, mode="nearest"), e3], 1))
        d2 = self.dec2(torch.cat([F.interpolate(d3, scale_factor=2.0, mode="nearest"), e2], 1))
        y = self.head(d2)                                    # b, classes * h/2, X/2, Y/2
        b, _, x2, y2 = y.shape
        return y.view(b, self.classes, self.height // 2, x2, y2)


def agrnav(size: int = 256, height: int = 32, *, classes: int = 4, width: int = 16) -> AgrNavNet:
    """An AGRNav-style net for a ``size x size x height`` grid (size a multiple of 8,
    height even); ``width`` scales the channels."""
    if size % 8 or height % 2:
        raise ValueError(f"agrnav: grid {size}x{size}x{height}: size must be a multiple of 8, "
                         "height even")
    net = AgrNavNet(height, classes, width)
    net.example_input_shape = (1, height, size, size)  # type: ignore[assignment]
    return random_bn_stats(net)  # type: ignore[return-value]
