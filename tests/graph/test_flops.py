"""FLOP counts per node (lopinfer.graph.flops) on hand-checkable layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lopinfer import capture
from lopinfer.graph.flops import flops, local_flops_share, node_flops


def _by_op(graph, op: str) -> list[int]:
    counts = flops(graph)
    return [counts[n.name] for n in graph.nodes if n.target.split(".")[1] == op]


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_convolution_with_groups(groups):
    conv = nn.Conv2d(4, 8, (3, 5), stride=2, padding=1, groups=groups).eval()
    g = capture(conv, (torch.randn(1, 4, 9, 11),))
    (count,) = _by_op(g, "convolution")
    out = 1 * 8 * 5 * 5  # (9+2-3)//2+1 = 5 rows, (11+2-5)//2+1 = 5 cols
    assert g.nodes[0].meta.shape == (1, 8, 5, 5)
    assert count == 2 * out * (4 // groups) * 3 * 5 + out  # MACs x 2, plus the bias


def test_transposed_convolution():
    conv = nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2, bias=False).eval()
    x = torch.randn(2, 6, 5, 7)
    g = capture(conv, (x,))
    (count,) = _by_op(g, "convolution")
    # each input element scatters into (4 / 2) x 3 x 3 outputs
    assert count == 2 * x.numel() * 2 * 9


def test_linear_and_matmuls():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)  # (2, 3, 10)
            return torch.bmm(y, y.transpose(1, 2))  # (2, 3, 3)

    g = capture(M().eval(), (torch.randn(2, 3, 16),))
    counts = flops(g)
    lin = next(n for n in g.nodes if n.target.split(".")[1] in ("linear", "addmm", "mm"))
    assert counts[lin.name] >= 2 * 2 * 3 * 10 * 16
    (bmm,) = _by_op(g, "bmm")
    assert bmm == 2 * 2 * 3 * 3 * 10


def test_pool_pointwise_and_shape_ops():
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()).eval()
    g = capture(model, (torch.randn(1, 2, 8, 8),))
    assert _by_op(g, "relu") == [2 * 8 * 8]
    assert sum(_by_op(g, "max_pool2d_with_indices")) == 2 * 4 * 4 * 4
    assert all(node_flops(g, n) == 0 for n in g.nodes if n.target.split(".")[1] == "view")


def test_local_share():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2)).eval()
    g = capture(model, (torch.randn(1, 3, 16, 16),))
    counts = flops(g)
    share = local_flops_share(g)
    local = sum(v for k, v in counts.items() if g[k].local)
    assert share == pytest.approx(local / sum(counts.values()))
    assert 0.9 < share < 1.0
    assert local_flops_share(g, counts, local=[]) == 0.0
