"""The runtime tests: like the transports', none may leak shared memory."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_leaked_segments(no_leaked_segments: Any) -> Any:
    yield
