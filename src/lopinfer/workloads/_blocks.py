"""Building blocks shared by the application workloads (random weights, eval mode)."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, k: int = 1, s: int = 1, p: int | None = None,
            act: type[nn.Module] | None = nn.SiLU, groups: int = 1,
            dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) + batch norm + activation, the unit of YOLO and MobileNet nets."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, s, k // 2 if p is None else p, dilation, groups=groups,
                  bias=False),
        nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def random_bn_stats(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial running statistics, so that batch norm is not an identity and the
    activations have the spread a trained net's have (zeros after ReLU, not all zeros)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


class CameraInput(nn.Module):
    """A uint8 NHWC camera frame in, the wrapped model's normalised float32 NCHW out:
    the conversion is part of the captured graph, so the upload is a quarter of the
    float32 frame's and exact tiling covers it like any other pointwise op."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        # folded into one multiply-add: x * (1 / (255 std)) - mean / std
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, -1, 1, 1)))
        self.register_buffer("shift", -(torch.tensor(mean) / torch.tensor(std)).view(1, -1, 1, 1))

    def forward(self, frame: torch.Tensor):  # type: ignore[no-untyped-def]
        # uint8 * float32 promotes inside the multiply (no separate cast node: export
        # would add a metadata assertion for .to())
        return self.model(frame.permute(0, 3, 1, 2) * self.scale + self.shift)
