"""The bytes layer: what each scheme implements (whole frames in, whole frames out).

A scheme provides a :class:`Stream` (one connection) and a server that hands new
streams to a callback. Streams move *frames*: a header (``preamble + meta``) and a
payload buffer. Codec, compression, flow control, statistics and timeouts live once,
above, in :class:`~lopinfer.transports.Connection`.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConnectionClosedError, TransportError, TransportTimeoutError
from ._frame import Limits
from ._options import Options


@dataclass(slots=True)
class RawFrame:
    """One received frame: header bytes and payload (uint8 tensor or buffer)."""

    header: bytes
    payload: torch.Tensor | memoryview | bytes
    nbytes: int  # wire bytes, header included
    first_ns: int  # perf_counter_ns when its first byte arrived
    last_ns: int  # ... and its last


class Stream(abc.ABC):
    """One connection's bytes layer. Not safe for concurrent ``send`` calls."""

    scheme: ClassVar[str] = ""
    #: link bandwidth (bytes/s) assumed for the LZ4 decision until one is measured
    default_bandwidth: float = 12.5e6
    #: set when the peer closed cleanly between frames
    eof_clean: bool = False

    def __init__(self, options: Options) -> None:
        self.options = options
        self.limits: Limits = options.limits
        self.local_address = ""
        self.remote_address = ""

    def send_nowait(self, header: bytes, payload: memoryview) -> bool:
        """Hand a frame over without waiting if possible; ``False``: use :meth:`send`."""
        return False

    @abc.abstractmethod
    async def send(self, header: bytes, payload: memoryview) -> None:
        """Hand a frame over, waiting while the transport pushes back.

        Raises:
            ConnectionClosedError: the connection is closed or broken.
        """

    @abc.abstractmethod
    def receive_nowait(self) -> RawFrame | None:
        """The next received frame if one is ready.

        Raises:
            ConnectionClosedError, TransportTimeoutError, ProtocolError: the stream ended.
        """

    @abc.abstractmethod
    async def wait_readable(self, timeout: float | None) -> None:
        """Wait until :meth:`receive_nowait` has a frame or an error to give."""

    @abc.abstractmethod
    async def aclose(self, *, error: bool = False) -> None:
        """Flush what was sent and close (``error``: closing because of a protocol error)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close at once, dropping unsent data."""

    def send_buffered(self) -> int:
        """Bytes accepted by :meth:`send` but not yet handed to the OS or the peer."""
        return 0

    async def flush(self, timeout: float | None) -> None:
        """Wait until nothing sent is left in user-space buffers (the transport may
        refer to a payload's memory until then, e.g. uvloop writes without copying)."""
        return None

    def recv_buffered(self) -> tuple[int, int]:
        """(frames, bytes) received and waiting for :meth:`receive_nowait`."""
        return 0, 0

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...


StreamHandler = Callable[[Stream], None]  # called (on the loop) with each accepted stream


class Server(abc.ABC):
    """A listening endpoint of one scheme; ``url`` is the bound address."""

    url: str

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop accepting (accepted streams are the caller's to close)."""


async def wait_future(fut: asyncio.Future, timeout: float | None, what: str) -> Any:
    """Await ``fut`` for at most ``timeout`` s (``None``: forever), without a new task.

    Raises:
        TransportTimeoutError: the timeout passed first (``fut`` is cancelled).
    """
    if timeout is None:
        return await fut
    if fut.done():
        return fut.result()
    expired: list[bool] = []
    handle = asyncio.get_running_loop().call_later(timeout, _expire, fut, expired)
    try:
        return await fut
    except asyncio.CancelledError:
        if expired:  # our timer, not a cancellation of the waiting task
            raise TransportTimeoutError(f"{what} timed out after {timeout:g} s") from None
        raise
    finally:
        handle.cancel()


def _expire(fut: asyncio.Future, expired: list[bool]) -> None:
    # cancelled, not failed: a future from asyncio.shield() must be cancelled, or its
    # inner future's completion later logs an InvalidStateError
    if not fut.done():
        expired.append(True)
        fut.cancel()


class Inbox:
    """A bounded queue of received frames with read pausing (high/low water marks).

    Producers (protocol callbacks) ``put`` frames; when the buffered bytes reach
    ``high`` the ``pause`` callback stops reading from the peer, and ``resume`` is
    called once the consumer brought them down to ``low``. ``fail`` ends the stream:
    frames already queued are still delivered, then the error is raised.
    """

    def __init__(
        self, high: int, low: int, pause: Callable[[], None], resume: Callable[[], None]
    ) -> None:
        self._frames: deque[RawFrame] = deque()
        self._bytes = 0
        self._high, self._low = high, low
        self._pause, self._resume = pause, resume
        self.paused = False
        self._waiters: list[asyncio.Future] = []
        self.error: TransportError | Exception | None = None

    def put(self, frame: RawFrame) -> None:
        if self.error is not None:
            return  # nothing is delivered after the stream failed
        self._frames.append(frame)
        self._bytes += frame.nbytes
        if not self.paused and self._bytes >= self._high:
            self.paused = True
            self._pause()
        self._wake()

    def fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def get_nowait(self) -> RawFrame | None:
        if self._frames:
            f = self._frames.popleft()
            self._bytes -= f.nbytes
            if self.paused and self._bytes <= self._low and self.error is None:
                self.paused = False
                self._resume()
            return f
        if self.error is not None:
            raise self.error
        return None

    async def wait(self, timeout: float | None) -> None:
        if self._frames or self.error is not None:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await wait_future(fut, timeout, "waiting for a frame")
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def buffered(self) -> tuple[int, int]:
        return len(self._frames), self._bytes


def closed_error(what: str = "connection is closed") -> ConnectionClosedError:
    return ConnectionClosedError(what)


def now_ns() -> int:
    return time.perf_counter_ns()
