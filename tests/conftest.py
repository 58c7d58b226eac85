"""Fixtures for every folder: the seed, and the transport x event-loop parameters.

``scheme`` is parametrised over the transports and ``loop_kind`` over the event loops
(asyncio, uvloop); ``arun`` runs a coroutine on a fresh loop of that kind. Extras that
are not installed (aiohttp for ws://, uvloop) skip their parameters with a reason, so
the suite also runs in the ``minimal`` tox env.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import torch

# tests/ is on sys.path through pytest's own `pythonpath` (pyproject.toml), so every folder
# imports nets.py and helpers.py

torch.set_num_threads(int(os.environ.get("LOPINFER_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


HAVE = {m: _installed(m) for m in ("aiohttp", "uvloop", "lz4", "websockets")}

SCHEMES = ["tcp", "ws", "shm", "mem"]
LOOPS = ["asyncio", "uvloop"]
LISTEN_URL = {
    "tcp": "tcp://127.0.0.1:0",
    "ws": "ws://127.0.0.1:0/lopinfer",
    "shm": "shm://",
    "mem": "mem://",
}


def scheme_param(s: str) -> Any:
    """``pytest.param(s)``, skipped with a reason when its extra is not installed."""
    if s == "ws" and not HAVE["aiohttp"]:
        return pytest.param(s, marks=pytest.mark.skip(reason="ws:// needs aiohttp (extra 'ws')"))
    return pytest.param(s)


def loop_param(kind: str) -> Any:
    """``pytest.param(kind)``, skipped with a reason when uvloop is not installed."""
    if kind == "uvloop" and not HAVE["uvloop"]:
        return pytest.param(kind, marks=pytest.mark.skip(reason="uvloop not installed (extra 'uvloop')"))
    return pytest.param(kind)


@pytest.fixture(params=[scheme_param(s) for s in SCHEMES])
def scheme(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=[loop_param(k) for k in LOOPS])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def listen_url(scheme: str) -> str:
    return LISTEN_URL[scheme]


Runner = Callable[..., Any]


@pytest.fixture
def arun(loop_kind: str) -> Runner:
    """``arun(coro_fn, *args, timeout=20)``: run it on a fresh loop of the kind under test."""
    from lopinfer import transports as T

    def runner(fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 20.0) -> Any:
        async def bounded() -> Any:
            return await asyncio.wait_for(fn(*args), timeout)

        return T.run(bounded(), loop=loop_kind)

    return runner


def _our_segments() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(f"lopinfer_{os.getpid()}_")}
    except FileNotFoundError:  # pragma: no cover - not Linux
        return set()


@pytest.fixture
def no_leaked_segments() -> Any:
    """Fails the test if it leaves shared-memory segments of this process behind."""
    before = _our_segments()
    yield
    leaked = _our_segments() - before
    assert not leaked, f"shared-memory segments left behind: {sorted(leaked)}"
