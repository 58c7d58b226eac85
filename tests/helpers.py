"""Assertions shared by the tests: always against the unsplit model (invariant 1)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from lopinfer.checks import tolerances


def assert_exact(out: Any, ref: Any) -> None:
    """``out`` equals the unsplit reference per DESIGN.md invariant 1."""
    outs, refs = tree_leaves(out), tree_leaves(ref)
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        rtol, atol = tolerances(r)
        torch.testing.assert_close(o, r, rtol=rtol, atol=atol)
        if r.dim() == 2 and r.shape[1] > 1:
            assert torch.equal(o.argmax(1), r.argmax(1)), "top-1 class differs"


def reference(model: torch.nn.Module, *inputs: torch.Tensor) -> Any:
    with torch.no_grad():
        return model(*inputs)
