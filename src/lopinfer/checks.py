"""Comparing a split/tiled/offloaded result with the unsplit model's (invariant 1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["Check", "compare", "tolerances"]


def tolerances(ref: torch.Tensor) -> tuple[float, float]:
    """(rtol, atol) of DESIGN.md invariant 1 for a reference tensor."""
    scale = float(ref.detach().abs().max()) if ref.numel() else 0.0
    if ref.dtype == torch.float64:
        return 1e-9, 1e-11 * max(scale, 1e-300)
    return 1e-4, 1e-5 * max(scale, 1e-30)


@dataclass(frozen=True)
class Check:
    """One comparison: the largest absolute and relative error, and the verdict."""

    name: str
    max_abs_err: float
    rel_err: float
    exact: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flat(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(x) if isinstance(t, torch.Tensor)]


def compare(name: str, out: Any, ref: Any) -> Check:
    """Compare every tensor of ``out`` with ``ref`` per invariant 1: close within
    tolerance and, for (batch, classes) outputs, the same top-1 class."""
    outs, refs = _flat(out), _flat(ref)
    if len(outs) != len(refs):
        return Check(name, float("inf"), float("inf"), False, "different number of outputs")
    worst_abs, worst_rel, exact, detail = 0.0, 0.0, True, ""
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o.shape != r.shape or o.dtype != r.dtype:
            return Check(name, float("inf"), float("inf"), False,
                         f"output {i}: {o.dtype}{list(o.shape)} vs {r.dtype}{list(r.shape)}")
        if not r.is_floating_point():
            ok = torch.equal(o, r)
            exact &= ok
            worst_abs = max(worst_abs, 0.0 if ok else float("inf"))
            continue
        o64, r64 = o.detach().double().cpu(), r.detach().double().cpu()
        diff = (o64 - r64).abs()
        mabs = float(diff.max()) if diff.numel() else 0.0
        scale = float(r64.abs().max()) if r64.numel() else 0.0
        rel = mabs / scale if scale > 0 else mabs
        worst_abs, worst_rel = max(worst_abs, mabs), max(worst_rel, rel)
        rtol, atol = tolerances(r)
        close = bool(torch.isclose(o.detach().cpu(), r.detach().cpu(), rtol=rtol, atol=atol).all())
        if close and r.dim() == 2 and r.shape[1] > 1:
            if not torch.equal(o.argmax(1), r.argmax(1)):
                close, detail = False, f"output {i}: top-1 class differs"
        if not close and not detail:
            detail = f"output {i}: max abs err {mabs:.3g} beyond rtol={rtol:g}, atol={atol:.3g}"
        exact &= close
    return Check(name, worst_abs, worst_rel, exact, detail)
