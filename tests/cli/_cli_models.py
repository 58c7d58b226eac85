"""Tiny models for the command-line tests, loaded by MODEL strings (file.py:factory)."""

from __future__ import annotations

import torch
from torch import nn

example_input_shape = (1, 3, 20, 16)


class SmallCNN(nn.Module):
    """Convolutions, batch norm, pooling, a residual add, then a global head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.stem(x))
        y = y + torch.relu(self.conv(y))
        y = self.up(y)
        return self.head(y.mean((2, 3)))


def make_cnn() -> nn.Module:
    return SmallCNN()


def make_training_cnn() -> nn.Module:
    """Returned in training mode: the loader must put it in eval mode."""
    return SmallCNN().train()


class Uncapturable(nn.Module):
    """Data-dependent control flow: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            return y.relu()
        return -y


def make_uncapturable() -> nn.Module:
    return Uncapturable()


def make_wide() -> nn.Module:
    """A factory stating its own input shape (wins over the module's)."""
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU())


make_wide.example_input_shape = (2, 2, 9, 12)  # type: ignore[attr-defined]


def make_failing() -> nn.Module:
    raise RuntimeError("factory is broken on purpose")


def make_not_a_module() -> object:
    return 42
