"""The application workloads capture and run exactly, tiled and split, at reduced sizes
(same architectures, fewer pixels and channels: CI has two cores)."""

from __future__ import annotations

import pytest
import torch

import lopinfer
from helpers import assert_exact, reference
from lopinfer.models import ModelSpecError, load_model
from lopinfer.runtime import TiledExecutor
from lopinfer.scheduler.builders import local_segments, split_plan
from lopinfer.workloads import WORKLOADS, CameraInput, build
from lopinfer.workloads.agrnav import agrnav
from lopinfer.workloads.inputs import lidar_grid
from lopinfer.workloads.kapao import kapao
from lopinfer.workloads.segment import segment

SMALL = {
    "kapao": lambda: (kapao(64, 96, width=8), torch.randn(1, 3, 64, 96)),
    "agrnav": lambda: (agrnav(32, 8, width=4), lidar_grid(32, 8, seed=3, objects=3)),
    "segment": lambda: (segment(64, 48, classes=5), torch.randn(1, 3, 64, 48)),
}


@pytest.fixture(scope="module", params=sorted(SMALL))
def captured(request):
    torch.manual_seed(0)
    model, x = SMALL[request.param]()
    return request.param, x, lopinfer.capture(model, (x,)), reference(model, x)


@pytest.mark.parametrize("tiles", [1, 3, 7])
def test_tiled_exact(captured, tiles):
    _, x, graph, ref = captured
    assert_exact(TiledExecutor(graph, tiles)(x), ref)


def test_split_exact(captured):
    """An intra-layer split of the longest local segment, halos sent and recomputed."""
    _, x, graph, ref = captured
    start, stop = max(local_segments(graph), key=lambda s: s[1] - s[0])
    assert stop - start > 5, graph.describe()
    for halo in ("send", "recompute"):
        plan = split_plan(graph, 0.4, start, stop, 3, halo=halo)
        assert_exact(TiledExecutor(graph, plan=plan)(x), ref)


def test_mostly_local(captured):
    name, _, graph, _ = captured
    local = sum(1 for n in graph if n.local)
    assert local / len(graph) > 0.6, (name, graph.describe())


def test_attention_is_the_barrier_of_agrnav():
    """Query rows tile, but every query reads all keys: the bmm reads them whole."""
    model, x = SMALL["agrnav"]()
    graph = lopinfer.capture(model, (x,))
    bmms = [n for n in graph if "bmm" in n.target]
    assert len(bmms) == 2
    assert all(not n.local or any(d.dim is None for d in n.locality.deps) for n in bmms)


def test_camera_input_u8_exact():
    """The uint8 NHWC path: conversion and normalisation in the graph, tiled exact."""
    from lopinfer.workloads.inputs import IMAGENET_MEAN, IMAGENET_STD

    model = CameraInput(segment(64, 64, classes=3), IMAGENET_MEAN, IMAGENET_STD).eval()
    frame = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    graph = lopinfer.capture(model, (frame,))
    ref = reference(model, frame)
    plain = reference(model.model, (frame.permute(0, 3, 1, 2) / 255.0 - torch.tensor(
        IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    torch.testing.assert_close(ref, plain, rtol=1e-4, atol=1e-4 * float(plain.abs().max()))
    assert next(iter(graph.inputs.values())).dtype == torch.uint8
    for tiles in (1, 4):
        assert_exact(TiledExecutor(graph, tiles)(frame), ref)


def test_lidar_grid_seeded_and_sparse():
    a, b, c = lidar_grid(seed=1), lidar_grid(seed=1), lidar_grid(seed=2)
    assert a.shape == (1, 32, 256, 256) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert 0.001 < float(a.mean()) < 0.05  # mostly empty
    assert float(a[0, :, :, :].sum((0, 2))[:40].mean()) > 0  # ground near the sensor


def test_camera_frame_from_the_shipped_photo():
    pytest.importorskip("matplotlib")
    from lopinfer.workloads.inputs import IMAGENET_MEAN, IMAGENET_STD, camera_frame

    f = camera_frame(64, 80)
    assert f.shape == (1, 64, 80, 3) and f.dtype == torch.uint8
    assert f.float().std() > 20  # a photograph, not a constant
    x = camera_frame(64, 80, uint8=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert x.shape == (1, 3, 64, 80) and abs(float(x.mean())) < 2


def test_model_strings():
    for name in WORKLOADS:
        assert build(name).shape[0] == 1
    loaded = load_model("lopinfer:agrnav")
    assert loaded.input_shape == (1, 32, 256, 256)
    assert loaded.example_input().shape == loaded.input_shape
    with pytest.raises(ModelSpecError, match="known: kapao"):
        load_model("lopinfer:nope")
