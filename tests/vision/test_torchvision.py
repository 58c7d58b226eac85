"""Every torchvision classification model (and three segmentation models) captured,
analysed and verified exact when tiled in 1, 4 and 7 tiles, with random weights.

Nothing is downloaded: ``lopinfer.models.load_model`` builds with ``weights=None`` (and
``weights_backbone=None``). Run with ``tox -e vision`` or
``pytest -m vision tests/vision``.

Input sizes (square, batch 1), the smallest each model takes sensibly while its first
layers still have at least 7 rows to cut into 7 tiles:

=======================================  =====  ============================================
models                                    size  why
=======================================  =====  ============================================
most CNNs (resnet, vgg, densenet, ...)      80  stem output 20-40 rows; 80 = 5 x 16, so the
                                                deepest maps are odd (5x5, 3x3): stride-2
                                                windows and ceil-mode pools hit ragged edges
inception_v3                                99  valid (unpadded) stem convs need >= 75
vit_*                                      224  fixed ``image_size`` (checked in forward)
maxvit_t                                   224  7x7 window and grid partitions at every stage
swin_*, swin_v2_*                          224  8x8 windows of 7 at stage 1, as trained
segmentation (fcn, deeplabv3, lraspp)      100  stride 8/16 maps of 13/7 rows, upsampled
                                                back by a non-integer factor
=======================================  =====  ============================================

``LOPINFER_TEST_THREADS`` sets torch's thread count (default 2). On a shared machine,
also set ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads that lose their core to
another process make every parallel op wait (10x slower runs seen here).
"""

from __future__ import annotations

import gc
import os
import time

import pytest
import torch

torchvision = pytest.importorskip("torchvision", reason="needs torchvision: tox -e vision")

from lopinfer.graph import capture  # noqa: E402
from lopinfer.models import load_model  # noqa: E402
from lopinfer.verify import verify  # noqa: E402

pytestmark = pytest.mark.vision

DEFAULT_SIZE = 80
SIZES: dict[str, int] = {
    "inception_v3": 99,
    "maxvit_t": 224,
    "fcn_resnet50": 100,
    "deeplabv3_mobilenet_v3_large": 100,
    "lraspp_mobilenet_v3_large": 100,
}
for _prefix in ("vit_", "swin_"):
    SIZES.update({n: 224 for n in torchvision.models.list_models() if n.startswith(_prefix)})

SEGMENTATION = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
CLASSIFICATION = sorted(torchvision.models.list_models(module=torchvision.models))

# models whose run (capture + 4 forward passes) takes minutes on 2 cores
SLOW = {"vit_h_14": 900, "vit_l_16": 600, "regnet_y_128gf": 900, "efficientnet_b7": 600}

TILES = (1, 4, 7)


def size_of(name: str) -> int:
    return SIZES.get(name, DEFAULT_SIZE)


@pytest.fixture(autouse=True, scope="module")
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("LOPINFER_TEST_THREADS", "2")))
    yield
    torch.set_num_threads(before)


def _params():
    for name in CLASSIFICATION + SEGMENTATION:
        marks = [pytest.mark.timeout(SLOW[name])] if name in SLOW else []
        yield pytest.param(name, marks=marks, id=name)


def test_model_list_is_complete():
    # the classification list is what torchvision ships; guard against an empty import
    assert len(CLASSIFICATION) >= 80
    assert {"resnet50", "vgg19_bn", "mobilenet_v3_large", "vit_b_16"} <= set(CLASSIFICATION)


@pytest.mark.parametrize("name", list(_params()))
def test_exact_when_tiled(name):
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = load_model(f"torchvision:{name}").module
    assert not model.training
    s = size_of(name)
    x = torch.randn(1, 3, s, s)
    graph = capture(model, (x,), name=name)

    # analysed: the stem convolution is local along H, and so is most of the work
    first = next(n for n in graph.nodes if n.target == "aten.convolution.default")
    assert first.local and first.locality.dim == 2, f"{name}: stem {first!r} not tiled along H"
    assert first.meta.shape[2] >= 7

    report = verify(model, (x,), TILES, name=name, graph=graph)
    print(f"{name} {s}x{s}: {time.perf_counter() - t0:.1f} s, {report['local_nodes']}/"
          f"{report['nodes']} nodes local, local FLOPs {report['local_flops_share']:.1%}, "
          + ", ".join(f"{c['name']} rel {c['rel_err']:.2g}" for c in report["checks"]))
    failed = [c for c in report["checks"] if not c["exact"]]
    assert not failed, f"{name} at {s}x{s}: " + "; ".join(
        f"{c['name']}: {c['detail']} (rel {c['rel_err']:.3g})" for c in failed
    )
    assert report["local_flops_share"] > 0
    del model, graph
    gc.collect()
