"""Frames over a byte-stream socket: an asyncio ``BufferedProtocol`` that is also a Stream.

Reading: small data lands in a staging buffer and is parsed there; the payload of a
large frame is received by the kernel straight into the tensor it will become (no
copy in user space). Writing: a payload goes from the tensor to the kernel chunk by
chunk as the socket drains, the transport's own buffer kept small.

This module holds :class:`SocketStream` itself: the protocol callbacks, flow control
of the inbox, breaking and closing. Its parts are elsewhere: the frame parser in
:mod:`._sockreader`, the write path and draining in :mod:`._sockwriter`, the stall
and rate guard in :mod:`._sockguard`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from ..errors import ConnectionClosedError, ProtocolError, TransportTimeoutError
from ..log import logger
from ._base import Inbox, RawFrame, Stream, wait_future
from ._buffers import BufferPool
from ._options import Options
from ._sockguard import StallGuard
from ._sockreader import FrameReader
from ._sockwriter import _WRITE_HIGH, _WRITE_LOW, SocketWriter

log = logger("transports")


class SocketStream(SocketWriter, StallGuard, Stream, asyncio.BufferedProtocol):
    """A Stream over an asyncio stream transport (TCP, Unix socket)."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self._transport: asyncio.Transport | None = None
        self._pool = BufferPool(2 * options.recv_high_water)
        self._reader = FrameReader(self)
        self._inbox = Inbox(
            options.recv_high_water, options.recv_low_water, self._pause_reading, self._resume_reading
        )
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future] = []
        self._closed_waiter: asyncio.Future | None = None
        self._error: Exception | None = None  # why sending is impossible
        self._closing = False
        self._stall_handle: asyncio.TimerHandle | None = None
        self._stall_mark = -1
        self._stall_bytes = 0
        self._stall_since = 0.0  # loop time of the last progress seen by the checker
        self._window_start = 0  # now_ns() when the current check window began
        self._loop: asyncio.AbstractEventLoop | None = None
        self._discard: memoryview | None = None
        self._vectored = False

    # -- asyncio protocol callbacks ---------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._closed_waiter = self._loop.create_future()
        transport.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)
        # uvloop and Python >= 3.12 write a list of buffers with one writev; 3.11 joins them
        self._vectored = sys.version_info >= (3, 12) or type(transport).__module__.startswith("uvloop")
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.remote_address = _fmt_addr(peer)
        self.local_address = _fmt_addr(sock)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._discard is not None:
            return self._discard
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self._discard is not None:
            return
        try:
            self._reader.updated(nbytes)
        except ProtocolError as exc:
            self._protocol_failed(exc)
            return
        if self._stall_handle is None and self._reader.in_frame:
            self._arm_stall()

    def _protocol_failed(self, exc: ProtocolError) -> None:
        # stop parsing; keep reading (and dropping) so that the peer can still
        # receive our error message and see a clean close rather than a reset
        self._discard = memoryview(bytearray(16384))
        self._inbox.fail(exc)
        if self._inbox.paused:
            self._resume_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._reader.in_frame:
            err: Exception = ConnectionClosedError(
                f"peer {self.remote_address} closed the connection mid-frame ({self._reader.describe()})"
            )
        elif exc is not None:
            err = ConnectionClosedError(f"connection to {self.remote_address} broke: {exc}")
        else:
            err = ConnectionClosedError(f"peer {self.remote_address} closed the connection")
            self.eof_clean = self._error is None
        self._broken(err, read_too=True)
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None

    # -- internals --------------------------------------------------------------------
    def _frame_received(self, frame: RawFrame) -> None:
        self._inbox.put(frame)

    def _broken(self, exc: Exception, *, read_too: bool) -> None:
        if self._error is None:
            self._error = exc if isinstance(exc, (ConnectionClosedError, TransportTimeoutError)) else (
                ConnectionClosedError(str(exc)))  # fmt: skip
        if read_too:
            self._inbox.fail(exc)
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_exception(self._error)

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            try:
                self._transport.pause_reading()
            except RuntimeError:  # uvloop: already closed
                pass

    def _resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            try:
                self._transport.resume_reading()
            except RuntimeError:
                pass

    # -- Stream interface -------------------------------------------------------------
    def receive_nowait(self) -> RawFrame | None:
        return self._inbox.get_nowait()

    async def wait_readable(self, timeout: float | None) -> None:
        await self._inbox.wait(timeout)

    async def aclose(self, *, error: bool = False) -> None:
        t = self._transport
        if t is None or self._closing:
            if self._closed_waiter is not None:
                await asyncio.shield(self._closed_waiter)
            return
        self._closing = True
        # nothing more will be received: drop what comes, but read on, so that the
        # peer's close is noticed even if a full inbox had paused reading
        if self._discard is None:
            self._discard = memoryview(bytearray(16384))
        if self._inbox.paused and not t.is_closing():
            try:
                t.resume_reading()
            except RuntimeError:
                pass
        if t.is_closing():  # the peer closed first
            assert self._closed_waiter is not None
            await wait_future(asyncio.shield(self._closed_waiter), self.options.close_timeout, "closing")
            return
        try:
            if self._error is None and self._write_paused:
                await self._writable(self.options.close_timeout, "closing")
        except Exception:
            t.abort()
        else:
            try:
                if t.can_write_eof():
                    # half-close and wait for the peer's close: closing with unread data
                    # (or data the peer still sends) would reset the connection instead,
                    # and the peer could lose the end of what we sent
                    t.write_eof()
                else:
                    t.close()
            except (RuntimeError, OSError):  # closed under our feet (uvloop raises)
                t.abort()
        assert self._closed_waiter is not None
        try:
            await wait_future(asyncio.shield(self._closed_waiter), self.options.close_timeout, "closing")
        except TransportTimeoutError:
            t.abort()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def send_buffered(self) -> int:
        t = self._transport
        try:
            return t.get_write_buffer_size() if t is not None and not t.is_closing() else 0
        except RuntimeError:
            return 0

    def recv_buffered(self) -> tuple[int, int]:
        return self._inbox.buffered()

    @property
    def closed(self) -> bool:
        return self._closing or self._error is not None

    @property
    def receiving_paused(self) -> bool:
        return self._inbox.paused


def _fmt_addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in str(host) else f"{host}:{addr[1]}"
    if isinstance(addr, bytes):
        return addr.lstrip(b"\0").decode(errors="replace")
    return str(addr or "")
