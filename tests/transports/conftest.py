"""The transport tests: the shared ``scheme``/``loop_kind``/``arun`` fixtures live in
``tests/conftest.py``; here, every test also checks it leaks no shared memory."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_leaked_segments(no_leaked_segments: Any) -> Any:
    yield
