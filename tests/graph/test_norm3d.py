"""3D encoder-decoders with GroupNorm / InstanceNorm: exact in float32, and every global
node is handed the memory layout a plain run gives it (norm kernels round by layout)."""

from __future__ import annotations

import pytest
import torch

import lopinfer
from helpers import assert_exact, reference
from lopinfer.graph import pack, unpack
from lopinfer.runtime import TiledExecutor
from nets import NORM3D_NETS


@pytest.mark.parametrize("name", sorted(NORM3D_NETS))
def test_norm3d_nets_are_exact(name):
    torch.manual_seed(0)
    model, x = NORM3D_NETS[name]()
    ref = reference(model, x)
    graph = lopinfer.capture(model, (x,))
    assert any("norm" in n.target and not n.local for n in graph)
    for tiles in (1, 4, 7):
        out = TiledExecutor(graph, tiles)(x)
        assert_exact(out, ref)
        torch.testing.assert_close(out, ref)  # torch's own float32 defaults too


@pytest.mark.parametrize("name", sorted(NORM3D_NETS)[:1])
def test_norm3d_float64(name):
    torch.manual_seed(0)
    model, x = NORM3D_NETS[name]()
    model, x = model.double(), x.double()
    graph = lopinfer.capture(model, (x,))
    assert_exact(TiledExecutor(graph, 5)(x), reference(model, x))


def _layout(x: torch.Tensor) -> str:
    if x.is_contiguous():
        return "contiguous"
    return "channels_last_3d" if x.is_contiguous(memory_format=torch.channels_last_3d) else "other"


def _spy_layouts(graph, seen):
    """Wrap the op of every global norm node to record its input's memory format."""
    for node in graph:
        if "group_norm" in node.target and not node.local:
            real = node.op

            def op(x, *args, real=real, **kwargs):
                seen.append(_layout(x))
                return real(x, *args, **kwargs)

            node.op = op


@pytest.mark.parametrize("channels_last", [False, True])
def test_global_nodes_get_the_plain_runs_layout(channels_last):
    torch.manual_seed(0)
    model, x = NORM3D_NETS["unet3d_group"]()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    eager: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: eager.append(_layout(args[0])))
             for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    reference(model, x)
    for h in hooks:
        h.remove()
    graph = unpack(*pack(lopinfer.capture(model, (x,)))[:2])  # layouts travel with the graph
    for tiles in (1, 3):
        seen: list[str] = []
        _spy_layouts(graph, seen)
        TiledExecutor(graph, tiles)(x)
        assert seen == eager
