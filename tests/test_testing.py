"""``lopinfer.testing``: exact passes; a perturbed output, a changed top-1 class, another
shape or dtype fail with one line naming the worst element."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from lopinfer.testing import Check, assert_exact, compare, reference, tolerances


def test_tolerances_follow_invariant_1():
    ref = torch.tensor([[-4.0, 2.0]])
    assert tolerances(ref) == (1e-4, pytest.approx(4e-5))
    rtol, atol = tolerances(ref.double())
    assert rtol == 1e-9 and atol == pytest.approx(4e-11)
    assert tolerances(torch.zeros(3))[1] > 0  # an all-zero output still has a tolerance


def test_reference_is_the_plain_run_without_grad():
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    out = reference(model, x)
    assert torch.equal(out, model(x)) and not out.requires_grad


def test_exact_passes():
    ref = torch.randn(2, 3, 8, 8)
    assert_exact(ref.clone(), ref)
    assert_exact(ref * (1 + 1e-6), ref)  # within rtol
    assert_exact((ref, {"a": ref.double()}), (ref.clone(), {"a": ref.double()}))
    assert_exact(torch.arange(4), torch.arange(4))


def test_a_perturbed_output_fails_naming_the_worst_element():
    ref = torch.zeros(1, 2, 4, 4)
    ref[0, 0, 0, 0] = 1.0
    out = ref.clone()
    out[0, 1, 2, 3] += 1e-3
    out[0, 0, 1, 1] += 1e-4
    with pytest.raises(AssertionError) as info:
        assert_exact(out, ref)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("output 0: max abs err 0.001 at [0, 1, 2, 3]"), msg
    assert "expected 0)" in msg and "2 of 32 elements differ" in msg
    assert re.search(r"rtol=0.0001, atol=1e-05", msg), msg


def test_a_changed_top1_class_fails():
    ref = torch.tensor([[1.0, 1.0 + 1e-6, 0.0], [0.0, 2.0, 1.0]])
    out = ref.clone()
    out[0, 0] += 2e-6  # within tolerance, but the first row's class flips
    with pytest.raises(AssertionError, match=r"^output 0: top-1 class differs in batch rows \[0\]$"):
        assert_exact(out, ref)
    assert compare("flip", out, ref).detail.endswith("batch rows [0]")


@pytest.mark.parametrize(
    ("out", "ref", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(3, 2), r"float32\[2, 3\] vs float32\[3, 2\]"),
        (torch.zeros(2), torch.zeros(2).double(), r"float32\[2\] vs float64\[2\]"),
        (torch.tensor([float("nan")]), torch.tensor([0.0]), r"max abs err nan at \[0\]"),
        (torch.arange(3), torch.tensor([0, 1, 5]), r"1 of 3 int64\[3\] values differ"),
        ((torch.zeros(1),), (torch.zeros(1), torch.zeros(1)), r"1 outputs, expected 2"),
        ((torch.zeros(1), 3), (torch.zeros(1), 4), r"output 1: 3 vs expected 4"),
    ],
)
def test_other_differences_fail(out, ref, match):
    with pytest.raises(AssertionError, match=match):
        assert_exact(out, ref)


def test_compare_reports_without_raising():
    ref = torch.randn(1, 4, 6, 6)
    ok = compare("same", ref.clone(), ref)
    assert ok == Check("same", 0.0, 0.0, True, "")
    bad = compare("off", ref + 1e-2 * ref.abs().max(), ref)
    assert not bad.exact and bad.max_abs_err > 0 and "beyond" in bad.detail
    assert bad.rel_err == pytest.approx(1e-2, rel=1e-3)
    assert not compare("n", (ref,), (ref, ref)).exact
