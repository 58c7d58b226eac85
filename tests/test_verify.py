"""``lopinfer.verify.verify``, the library function behind ``lopinfer verify``."""

from __future__ import annotations

from pathlib import Path

import torch

from lopinfer.cli.models import load_model
from lopinfer.verify import verify

CNN = f"{Path(__file__).resolve().parent / 'cli' / '_cli_models.py'}:make_cnn"


def test_verify_library_function():
    torch.manual_seed(0)
    model = load_model(CNN).module
    x = torch.randn(1, 3, 10, 6)
    report = verify(model, x, tiles=(1, 5))
    assert report["exact"] and [c["name"] for c in report["checks"]] == ["tiled:1", "tiled:5"]
    extra = ("double", lambda graph, inputs: 2 * model(*inputs))
    report = verify(model, (x,), tiles=(), runners=[extra])
    assert not report["exact"] and report["checks"][0]["name"] == "double"
