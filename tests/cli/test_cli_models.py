"""MODEL strings (``lopinfer.cli.models``): the module and file forms, stated shapes,
``timm:NAME``, and the closest-name suggestions."""

from __future__ import annotations

import sys
import types

import pytest
from cli_helpers import HERE, MODELS

from lopinfer.cli.models import ModelSpecError, load_model, parse_shape


def test_module_factory_form(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    loaded = load_model("_cli_models:make_training_cnn")
    assert not loaded.module.training  # put in eval mode
    assert loaded.input_shape == (1, 3, 20, 16)
    assert loaded.name == "make_training_cnn"


def test_factory_shape_wins_over_module_shape():
    loaded = load_model(f"{MODELS}:make_wide")
    assert loaded.input_shape == (2, 2, 9, 12)
    assert loaded.example_shape() == (2, 2, 9, 12)
    assert loaded.example_shape((1, 2, 5, 5)) == (1, 2, 5, 5)


def test_bad_model_errors_are_model_spec_errors():
    with pytest.raises(ModelSpecError, match="no such file"):
        load_model("nowhere/model.py:make")
    with pytest.raises(ModelSpecError, match="not an nn.Module"):
        load_model(f"{MODELS}:make_not_a_module")


def test_parse_shape():
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape("1x3x8x8") == (1, 3, 8, 8)
    with pytest.raises(ValueError):
        parse_shape("")


def fake_timm(calls: list) -> types.ModuleType:
    from torch import nn

    mod = types.ModuleType("timm")
    mod.list_models = lambda: ["resnet18", "resnet50", "convnext_tiny"]

    def create_model(name, pretrained=True):
        calls.append((name, pretrained))
        model = nn.Sequential(nn.Conv2d(3, 4, 3))
        model.pretrained_cfg = {"input_size": (3, 160, 160)}
        return model

    mod.create_model = create_model
    return mod


def test_timm_models_have_random_weights(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "timm", fake_timm(calls))
    loaded = load_model("timm:resnet18")
    assert calls == [("resnet18", False)]  # pretrained=False: nothing downloaded
    assert loaded.name == "resnet18" and loaded.input_shape == (1, 3, 160, 160)
    assert not loaded.module.training


def test_unknown_timm_name_suggests_the_closest(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", fake_timm([]))
    with pytest.raises(ModelSpecError, match=r"unknown timm model 'resnet19'; did you mean "
                                             r"resnet18, resnet50\?"):
        load_model("timm:resnet19")


def test_unknown_torchvision_name_suggests_the_closest(monkeypatch):
    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(list_models=lambda: ["vgg19_bn", "vgg19", "resnet18"])
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    with pytest.raises(ModelSpecError, match=r"unknown torchvision model 'vgg19bn'; did you "
                                             r"mean vgg19_bn, vgg19\?"):
        load_model("torchvision:vgg19bn")


def test_timm_without_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'lopinfer\[timm\]'"):
        load_model("timm:resnet18")


@pytest.mark.vision
def test_real_timm_model_is_exact():
    pytest.importorskip("timm", reason="timm: pip install 'lopinfer[timm]'")
    from lopinfer.verify import verify

    loaded = load_model("timm:resnet18")
    import torch

    x = torch.randn(1, 3, 64, 64)
    report = verify(loaded.module, (x,), [1, 4], name="resnet18")
    assert report["exact"]
