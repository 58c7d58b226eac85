"""Capture: the IR it builds and the documented errors for bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lopinfer
from lopinfer.errors import CaptureError, InputError, LopInferError, UnsupportedModelError
from nets import REFERENCE_NETS


def test_ir_has_ops_shapes_params_and_locality():
    model, x = REFERENCE_NETS["resnet"]()
    g = lopinfer.capture(model, (x,))
    assert list(g.inputs) == ["x"] and g.inputs["x"].shape == (1, 3, 45, 41)
    conv = next(n for n in g if n.target == "aten.convolution.default")
    assert conv.meta.shape == (1, 8, 23, 21) and conv.meta.dtype == torch.float32
    assert conv.module_path.startswith("stem.0")
    assert conv.locality.dim == 2 and conv.locality.halo() == 7 - 2
    # parameters by name, with their values
    w = conv.args[1].name
    assert torch.equal(g.params[w], model.stem[0].weight)
    # the global average pooling is a barrier; the classifier after it too
    assert not g[next(n.name for n in g if n.target.startswith("aten.mean"))].local
    assert "local" in repr(conv) and "Graph" in repr(g)


def test_tracked_dim_follows_permute_and_view():
    model, x = REFERENCE_NETS["convnext"]()
    g = lopinfer.capture(model, (x,))
    perms = [n for n in g if n.target == "aten.permute.default" and n.local]
    assert any(n.locality.dim == 1 for n in perms)  # N,H,W,C: H is dim 1
    lin = [n for n in g if n.target == "aten.linear.default" and n.local]
    assert lin and all(n.locality.dim == 1 for n in lin)


def test_tiled_dim_choice_is_the_analysis():
    model, x = REFERENCE_NETS["vgg"]()
    g = lopinfer.capture(model, (x,))
    lopinfer.graph.analyse(g, tiled_dim=3)  # W instead of H
    convs = [n for n in g if n.target == "aten.convolution.default"]
    assert all(n.locality.dim == 3 for n in convs)
    from helpers import assert_exact, reference
    from lopinfer.runtime import TiledExecutor

    assert_exact(TiledExecutor(g, 5)(x), reference(model, x))


def test_not_a_module():
    with pytest.raises(CaptureError, match="expected a torch.nn.Module, got function"):
        lopinfer.capture(lambda x: x, (torch.randn(1),))


def test_training_mode_is_refused():
    with pytest.raises(CaptureError, match="training mode"):
        lopinfer.capture(nn.Conv2d(3, 3, 3), (torch.randn(1, 3, 8, 8),))


def test_wrong_example_shape_names_the_module():
    model, _ = REFERENCE_NETS["vgg"]()
    with pytest.raises(CaptureError) as info:
        lopinfer.capture(model, (torch.randn(1, 4, 32, 32),))
    msg = str(info.value)
    assert "features.0 (Conv2d)" in msg and "channels" in msg
    assert "\n" not in msg


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: torch.export cannot capture it
            return x * 2
        return x


def test_data_dependent_control_flow_is_a_capture_error():
    with pytest.raises(CaptureError, match="torch.export failed in <root> \\(DataDependent\\)"):
        lopinfer.capture(DataDependent().eval(), (torch.randn(1, 3, 4, 4),))


class IntOnly(nn.Module):
    def forward(self, x):
        return x * 2 + 1


def test_integer_only_model_is_unsupported():
    with pytest.raises(UnsupportedModelError, match="no floating-point input"):
        lopinfer.capture(IntOnly().eval(), (torch.arange(16).reshape(1, 1, 4, 4),))


def test_example_inputs_must_be_tensors():
    with pytest.raises(InputError, match="example input 0 is a list"):
        lopinfer.capture(IntOnly().eval(), ([1, 2],))
    with pytest.raises(InputError, match="non-empty"):
        lopinfer.capture(IntOnly().eval(), ())


def test_errors_share_one_root():
    for cls in (CaptureError, InputError, UnsupportedModelError):
        assert issubclass(cls, LopInferError)
