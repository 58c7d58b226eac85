"""URL schemes -> implementations, ``connect``/``listen``, and the event loop choice."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Awaitable, Callable, Coroutine
from types import ModuleType
from typing import Any
from urllib.parse import SplitResult, urlsplit

from ..errors import InputError, MissingDependencyError
from ..log import logger
from ._connection import _DEFAULT, Connection
from ._listener import Listener
from ._options import Options

log = logger("transports")

# scheme -> (module, (package, extra) it needs beyond the core)
_SCHEMES: dict[str, tuple[str, tuple[str, str] | None]] = {
    "tcp": ("lopinfer.transports._tcp", None),
    "tls": ("lopinfer.transports._tls", None),
    "ws": ("lopinfer.transports._ws", ("aiohttp", "ws")),
    "wss": ("lopinfer.transports._ws", ("aiohttp", "ws")),
    "shm": ("lopinfer.transports._shm", None),
    "mem": ("lopinfer.transports._mem", None),
}
SCHEMES: tuple[str, ...] = tuple(sorted(_SCHEMES))


def _backend(url: str) -> tuple[ModuleType, SplitResult]:
    if not isinstance(url, str):
        raise InputError(f"a transport URL must be a str, got {type(url).__name__}")
    parts = urlsplit(url)
    entry = _SCHEMES.get(parts.scheme.lower())
    if entry is None or "://" not in url:
        raise InputError(
            f"unknown transport URL {url!r}: the scheme must be one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    module, dep = entry
    try:
        return importlib.import_module(module), parts
    except ImportError as exc:
        if dep is not None and exc.name and exc.name.split(".")[0] == dep[0]:
            raise MissingDependencyError(dep[0], dep[1], f"{parts.scheme}:// transports") from exc
        raise


async def connect(url: str, *, timeout: float | None = _DEFAULT, **options: Any) -> Connection:
    """Open a connection to ``url`` (``tcp://host:port``, ``ws://host:port/path``,
    ``wss://...``, ``shm://name``, ``mem://name``).

    Args:
        timeout: connect timeout in seconds (default ``Options.connect_timeout``).
        **options: any :class:`Options` field (timeouts, limits, water marks, ...).

    Raises:
        InputError: unknown scheme (the message lists the valid ones), bad URL or option.
        MissingDependencyError: the scheme needs an extra that is not installed.
        ConnectError: nothing listens there, or the connection could not be made in time.
    """
    if timeout is not _DEFAULT:
        options["connect_timeout"] = timeout
    opts = Options.from_kwargs(**options)
    backend, parts = _backend(url)
    stream = await backend.open_stream(parts, opts)
    if opts.link_shape is not None:
        from ._shaped import ShapedStream

        stream = ShapedStream(stream, opts.link_shape)
    return Connection(stream, opts, f"{parts.scheme}://{stream.remote_address or parts.netloc}")


async def listen(
    url: str, handler: Callable[[Connection], Awaitable[None]], **options: Any
) -> Listener:
    """Listen on ``url`` and run ``await handler(conn)`` for each accepted connection.

    The connection is closed when the handler returns. A handler that raises is logged
    and does not stop the listener. Port ``0`` (or an empty shm/mem name) picks a free
    address; ``listener.url`` tells which.

    Raises:
        InputError, MissingDependencyError: as :func:`connect`.
        ConnectError: the address cannot be bound.
    """
    opts = Options.from_kwargs(**options)
    backend, parts = _backend(url)
    listener = Listener(handler, opts)
    await listener._start(backend, parts)
    return listener


def event_loop_factory(kind: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """A new-event-loop factory: ``"uvloop"``, ``"asyncio"``, or ``"auto"`` (uvloop when installed).

    Raises:
        MissingDependencyError: ``kind="uvloop"`` without uvloop.
        InputError: an unknown kind.
    """
    if kind not in ("auto", "uvloop", "asyncio"):
        raise InputError(f"unknown event loop {kind!r}: use 'auto', 'uvloop' or 'asyncio'")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError as exc:
            if kind == "uvloop":
                raise MissingDependencyError("uvloop", "uvloop", "the uvloop event loop") from exc
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, Any], *, loop: str = "auto") -> Any:
    """Run a coroutine to completion on a fresh event loop (uvloop when installed)."""
    factory = event_loop_factory(loop)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    ev = factory()  # pragma: no cover - Python 3.10
    try:
        return ev.run_until_complete(main)
    finally:
        ev.run_until_complete(ev.shutdown_asyncgens())
        ev.close()
