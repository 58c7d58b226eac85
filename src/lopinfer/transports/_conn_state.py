"""What every part of a :class:`~lopinfer.transports.Connection` shares: its state,
set up in one place, the ``DEFAULT`` sentinel, and how a connection breaks.

``Connection`` is assembled from base classes, one per concern: sending (queue and
flow control, :mod:`._conn_send`), receiving (decode and dispatch,
:mod:`._conn_recv`) and measuring (statistics and observers, :mod:`._conn_stats`).
They all stand on :class:`ConnectionState`, which owns the attributes they work on
and ``_fail``, which every one of them may have to call.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConnectionClosedError, TransportError
from ._base import Stream
from ._compress import AdaptiveCompressor
from ._options import Options
from ._stats import LinkObserver, TransferRecord

if TYPE_CHECKING:
    from ._conn_send import _Outgoing


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


_DEFAULT: Any = _Default()  # "use the connection's option" (None means "no limit")


class ConnectionState:
    """The state of one connection (see :class:`~lopinfer.transports.Connection`)."""

    def __init__(self, stream: Stream, options: Options, url: str) -> None:
        self._stream = stream
        self.options = options
        self.url = url
        self._loop = asyncio.get_running_loop()
        self._compressor = AdaptiveCompressor(options.compression, options.compress_min_size)  # type: ignore[arg-type]
        self._bandwidth: float | Callable[[], float] | None = options.bandwidth
        self._queue: deque[_Outgoing] = deque()
        self._queued_bytes = 0
        self._writing = False
        self._writer: asyncio.Task | None = None
        self._space_waiters: list[asyncio.Future] = []
        self._drain_waiters: list[asyncio.Future] = []
        self._error: Exception | None = None
        self._closing = False
        self._closed = False
        self._observers: list[LinkObserver] = []
        self._history: deque[TransferRecord] = deque(maxlen=max(options.history, 0))
        self._send_rate: float | None = None
        self._n = [0] * 8  # frames/wire/raw/compressed x sent/received
        self._protocol_errors = 0
        #: time.monotonic() when a frame was last sent or received
        self.last_activity = time.monotonic()
        if options.pre_auth_limits is not None:
            stream.limits = options.pre_auth_limits

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise ConnectionClosedError("connection is closed")

    def _fail(self, exc: BaseException, *, abort: bool = True) -> None:
        if self._error is None:
            self._error = exc if isinstance(exc, TransportError) else ConnectionClosedError(str(exc))
        self._closed = True
        err = self._error
        for w in self._space_waiters + self._drain_waiters:
            if not w.done():
                w.set_exception(err)
        self._space_waiters.clear()
        self._drain_waiters.clear()
        self._queue.clear()
        self._queued_bytes = 0
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        if abort and not self._stream.closed:
            self._stream.abort()
