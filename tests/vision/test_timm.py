"""timm models across families, random weights (``pretrained=False``), verified exact at
1, 4 and 7 tiles, at odd input sizes where the model takes them.

The set covers every family issue 14 named (non-persistent index buffers in Swin, MaxViT,
CoAtNet, LeViT, EfficientFormerV2, TinyViT; TResNet's anti-alias filter; no-op casts) and
hybrids (MobileViT, FastViT, PoolFormer, EfficientFormer, PVT-v2, HaloNet, BotNet), sized
down (``img_size``, ``window_size``) where the model allows so the whole file stays
around two minutes on two cores. timm is a test-only dependency of the vision env,
pinned in tox.ini and constraints/vision.txt (whose torch pin holds it to torch 2.14.1).
"""

from __future__ import annotations

import os

import pytest
import torch

timm = pytest.importorskip("timm", reason="needs timm: tox -e vision")

from lopinfer.verify import verify  # noqa: E402

pytestmark = pytest.mark.vision

# name -> (create_model keywords, input H, W)
MODELS: dict[str, tuple[dict, tuple[int, int]]] = {
    # transformers: patch tokens, class tokens, global attention
    "vit_tiny_patch16_224": ({"img_size": 112}, (112, 112)),
    "deit_tiny_patch16_224": ({"img_size": 112}, (112, 112)),
    "xcit_nano_12_p16_224": ({"img_size": 112}, (112, 112)),
    "cait_xxs24_224": ({"img_size": 112}, (112, 112)),
    # relative-position / attention-bias index buffers (persistent=False)
    "swin_tiny_patch4_window7_224": ({"img_size": 128, "window_size": 4}, (128, 128)),
    "maxvit_rmlp_pico_rw_256": ({"img_size": 128}, (128, 128)),
    "coatnet_nano_rw_224": ({"img_size": 128}, (128, 128)),
    "levit_128s": ({"img_size": 128}, (128, 128)),
    "efficientformerv2_s0": ({"img_size": 128}, (128, 128)),
    "tiny_vit_5m_224": ({}, (224, 224)),
    "tresnet_m": ({}, (96, 96)),  # anti-alias blur filter buffer; space-to-depth stem
    # hybrids
    "mobilevit_xxs": ({}, (128, 128)),
    "fastvit_t8": ({}, (97, 97)),
    "poolformer_s12": ({}, (97, 97)),
    "efficientformer_l1": ({}, (224, 224)),  # fixed attention-bias grid
    "pvt_v2_b0": ({}, (97, 97)),
    "halonet26t": ({}, (256, 256)),  # halo blocks need the trained grid
    "botnet26t_256": ({"img_size": 128}, (128, 128)),
    # CNN families
    "resnet18": ({}, (97, 83)),
    "efficientnet_b0": ({}, (97, 97)),
    "mobilenetv3_small_100": ({}, (97, 89)),
    "convnext_atto": ({}, (97, 97)),
    "regnetx_002": ({}, (97, 97)),
    "ghostnet_100": ({}, (97, 97)),
    "rexnet_100": ({}, (97, 97)),
    "dla34": ({}, (96, 96)),  # skip adds need sizes divisible by 32
    "hrnet_w18_small": ({}, (96, 96)),
    "dpn68": ({}, (97, 97)),
    "mixnet_s": ({}, (97, 97)),
    "lcnet_050": ({}, (97, 97)),
    "repvgg_a0": ({}, (97, 97)),
    "seresnext26d_32x4d": ({}, (97, 97)),
    "edgenext_xx_small": ({}, (97, 97)),
    "mobileone_s0": ({}, (97, 97)),
}

TILES = (1, 4, 7)


@pytest.fixture(autouse=True, scope="module")
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("LOPINFER_TEST_THREADS", "2")))
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_timm_model_is_exact(name):
    kwargs, (h, w) = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    x = torch.randn(1, 3, h, w)
    report = verify(model, x, tiles=TILES, name=name)
    assert report["internal_errors"] == []
    for check in report["checks"]:
        assert check["exact"], f"{name} {check['name']}: {check['detail']}"
    assert report["local_flops_share"] > 0.5, report["local_flops_share"]


def test_transformer_local_shares():
    """Issue 14's targets: ViT/DeiT >= 0.6 of FLOPs local, Swin >= 0.9."""
    shares = {}
    for name in ("vit_tiny_patch16_224", "deit_tiny_patch16_224",
                 "swin_tiny_patch4_window7_224"):
        kwargs, (h, w) = MODELS[name]
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        from lopinfer.graph import capture
        from lopinfer.graph.flops import local_flops_share

        shares[name] = local_flops_share(capture(model, (torch.randn(1, 3, h, w),)))
    assert shares["vit_tiny_patch16_224"] >= 0.6 and shares["deit_tiny_patch16_224"] >= 0.6
    assert shares["swin_tiny_patch4_window7_224"] >= 0.9, shares
