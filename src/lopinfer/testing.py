"""Checking a split, tiled or offloaded result against the unsplit model's (in the spirit
of :mod:`torch.testing`).

DESIGN.md invariant 1: every plan's output equals the unsplit model's. For float32 that
means ``torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max())``
and, for a ``(batch, classes)`` output, the same top-1 class; float64 is far tighter.
The unsplit model's output is always the expected value::

    from lopinfer.testing import assert_exact, reference

    expected = reference(model, x)        # model(x) under torch.no_grad
    actual = await session.infer(x)       # or run_tiled(...), model(x) after start_client
    assert_exact(actual, expected)        # AssertionError naming the worst element

:func:`compare` is the non-raising form: a :class:`Check` with the largest errors and a
verdict, what ``lopinfer verify`` and the benchmarks report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["Check", "assert_exact", "compare", "reference", "tolerances"]


def tolerances(expected: torch.Tensor) -> tuple[float, float]:
    """``(rtol, atol)`` of DESIGN.md invariant 1 for an expected (reference) tensor.

    float64: ``rtol=1e-9, atol=1e-11 * max|expected|``; every other dtype gets the float32
    rule, ``rtol=1e-4, atol=1e-5 * max|expected|``. The absolute tolerance scales with the
    output, so a large-valued output is not held to an impossible absolute error.
    """
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    if expected.dtype == torch.float64:
        return 1e-9, 1e-11 * max(scale, 1e-300)
    return 1e-4, 1e-5 * max(scale, 1e-30)


def reference(model: torch.nn.Module, *inputs: Any) -> Any:
    """The expected output: ``model(*inputs)`` run plainly, under ``torch.no_grad``."""
    with torch.no_grad():
        return model(*inputs)


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


def _leaves(x: Any) -> list[Any]:
    if isinstance(x, torch.Tensor):
        return [x]
    from torch.utils._pytree import tree_leaves

    return list(tree_leaves(x))


def _kind(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


def _compare_tensor(i: int, o: torch.Tensor, r: torch.Tensor) -> tuple[float, float, str]:
    """``(max_abs_err, rel_err, problem)`` of output ``i``; ``problem`` is ``""`` when it
    meets invariant 1, else one line naming the worst element."""
    if o.shape != r.shape or o.dtype != r.dtype:
        return float("inf"), float("inf"), f"output {i}: {_kind(o)} vs {_kind(r)}"
    o, r = o.detach().cpu(), r.detach().cpu()
    if not r.is_floating_point():
        if torch.equal(o, r):
            return 0.0, 0.0, ""
        n = int((o != r).sum())
        return float("inf"), 0.0, f"output {i}: {n} of {r.numel()} {_kind(r)} values differ"
    o64, r64 = o.double(), r.double()
    diff = (o64 - r64).abs()
    mabs = float(diff.max()) if diff.numel() else 0.0
    scale = float(r64.abs().max()) if r64.numel() else 0.0
    rel = mabs / scale if scale > 0 else mabs
    rtol, atol = tolerances(r)
    bad = ~torch.isclose(o, r, rtol=rtol, atol=atol)
    if bool(bad.any()):
        # the worst element; a NaN counts as the worst of all
        where = int(torch.nan_to_num(diff, nan=float("inf")).argmax())
        idx = list(torch.unravel_index(torch.tensor(where), r.shape)) if r.dim() else []
        at = f"[{', '.join(str(int(v)) for v in idx)}]"
        a, e = float(o64.reshape(-1)[where]), float(r64.reshape(-1)[where])
        return mabs, rel, (f"output {i}: max abs err {mabs:.3g} at {at} (actual {a:.7g}, "
                           f"expected {e:.7g}) beyond rtol={rtol:g}, atol={atol:.3g}; "
                           f"{int(bad.sum())} of {r.numel()} elements differ")
    if r.dim() == 2 and r.shape[1] > 1:
        rows = (o.argmax(1) != r.argmax(1)).nonzero().flatten().tolist()
        if rows:
            return mabs, rel, f"output {i}: top-1 class differs in batch rows {rows[:8]}"
    return mabs, rel, ""


def compare(name: str, out: Any, ref: Any) -> Check:
    """Compare every tensor of ``out`` with the reference ``ref`` per invariant 1: close
    within :func:`tolerances` and, for ``(batch, classes)`` outputs, the same top-1 class.

    Returns a :class:`Check`; ``detail`` names the first output that differs and how.
    Tensors are compared on the CPU, wherever they live.
    """
    outs = [t for t in _leaves(out) if isinstance(t, torch.Tensor)]
    refs = [t for t in _leaves(ref) if isinstance(t, torch.Tensor)]
    if len(outs) != len(refs):
        return Check(name, float("inf"), float("inf"), False, "different number of outputs")
    worst_abs, worst_rel, detail = 0.0, 0.0, ""
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o.shape != r.shape or o.dtype != r.dtype:
            return Check(name, float("inf"), float("inf"), False, f"output {i}: {_kind(o)} vs "
                         f"{_kind(r)}")
        mabs, rel, problem = _compare_tensor(i, o, r)
        worst_abs, worst_rel = max(worst_abs, mabs), max(worst_rel, rel)
        detail = detail or problem
    return Check(name, worst_abs, worst_rel, not detail, detail)


def assert_exact(actual: Any, expected: Any) -> None:
    """Assert that ``actual`` equals the unsplit model's output ``expected`` per DESIGN.md
    invariant 1 (see :func:`tolerances`), with the same top-1 class for a
    ``(batch, classes)`` output.

    Both may be a tensor or any nest of tuples, lists and dicts of them (compared leaf by
    leaf, in order); non-tensor leaves must be equal.

    Raises:
        AssertionError: one line naming the first output that differs: its shape or dtype,
            or the largest absolute error, where it is and both values, or the top-1 rows.
    """
    outs, refs = _leaves(actual), _leaves(expected)
    if len(outs) != len(refs):
        raise AssertionError(f"{len(outs)} outputs, expected {len(refs)}")
    for i, (o, r) in enumerate(zip(outs, refs)):
        if not isinstance(r, torch.Tensor) or not isinstance(o, torch.Tensor):
            if isinstance(o, torch.Tensor) or isinstance(r, torch.Tensor) or o != r:
                raise AssertionError(f"output {i}: {o!r} vs expected {r!r}")
            continue
        if o.device != r.device:
            raise AssertionError(f"output {i}: on {o.device}, expected on {r.device}")
        _, _, problem = _compare_tensor(i, o, r)
        if problem:
            raise AssertionError(problem)
