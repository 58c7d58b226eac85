"""Moved to :mod:`lopinfer.testing`; these names stay importable from here."""

from .testing import Check, compare, tolerances

__all__ = ["Check", "compare", "tolerances"]
