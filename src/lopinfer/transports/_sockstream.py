"""Frames over a byte-stream socket: an asyncio ``BufferedProtocol`` that is also a Stream.

Reading: small data lands in a staging buffer and is parsed there; the payload of a
large frame is received by the kernel straight into the tensor it will become (no
copy in user space). Writing: the transport's own buffer is kept empty (its high
water mark is 0), so a payload goes from the tensor to the kernel without being
copied first, chunk by chunk as the socket drains.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from ..errors import ConnectionClosedError, ProtocolError, TransportTimeoutError
from ..log import logger
from ._base import Inbox, RawFrame, Stream, now_ns, wait_future
from ._buffers import BufferPool
from ._frame import PREAMBLE, parse_preamble
from ._options import Options

log = logger("transports")

_STAGING = 256 * 1024
_DIRECT_MIN = 32 * 1024  # read payload remainders at least this big straight into the tensor
_HEADER_READ = 4096
_DIRECT_MAX = 4 << 20
_JOIN_MAX = 64 * 1024  # header and payload up to this size go out in one write
_NOWAIT_MAX = 1 << 20  # write payloads up to this size at once (the OS takes most of it)
_CHUNK = 1 << 20  # largest single write of a big payload (asyncio copies what the OS did not take)
_WRITE_HIGH = 256 * 1024  # the transport buffers this much before pausing us (copied on 3.11 asyncio)
_WRITE_LOW = 64 * 1024


class FrameReader:
    """Splits a byte stream into frames; ``on_frame`` receives each :class:`RawFrame`."""

    def __init__(self, stream: SocketStream) -> None:
        self._s = stream
        self._buf = bytearray(_STAGING)
        self._mv = memoryview(self._buf)
        self._start = self._end = 0
        self._header: bytes | None = None
        self._dest: Any = None
        self._dest_mv: memoryview | None = None
        self._need = self._filled = 0
        self._direct = False
        self._large = False
        self._first_ns = 0
        self.progress = 0
        self.bytes_in = 0

    @property
    def frame_started_ns(self) -> int:
        """now_ns() of the current frame's first byte (0 between frames)."""
        return self._first_ns

    @property
    def in_frame(self) -> bool:
        return self._header is not None or self._end > self._start

    def describe(self) -> str:
        if self._header is not None:
            return f"got {self._filled} of {self._need} payload bytes"
        return f"got {self._end - self._start} header bytes"

    def get_buffer(self) -> memoryview:
        if (
            self._header is not None
            and self._start == self._end
            and self._need - self._filled >= _DIRECT_MIN
        ):
            self._direct = True
            assert self._dest_mv is not None
            # at most 4 MiB per read: one loop step never copies for more than ~1 ms
            return self._dest_mv[self._filled : self._filled + _DIRECT_MAX]
        self._direct = False
        if self._end == len(self._buf) or self._end > len(self._buf) - 4096 and self._start:
            n = self._end - self._start
            self._buf[:n] = self._mv[self._start : self._end]
            self._start, self._end = 0, n
        if self._large and self._header is None:
            # the last frame was big: read just past the next header, so that its
            # payload goes straight into its buffer instead of through this one
            return self._mv[self._end : self._end + _HEADER_READ]
        return self._mv[self._end :]

    def updated(self, n: int) -> None:
        self.progress += 1
        self.bytes_in += n
        if self._direct:
            self._filled += n
            if self._filled == self._need:
                self._complete()
            return
        if not self.in_frame:
            self._first_ns = now_ns()
        self._end += n
        self._parse()

    def _parse(self) -> None:
        mv = self._mv
        while True:
            avail = self._end - self._start
            if self._header is None:
                if avail < PREAMBLE.size:
                    if avail and not self._first_ns:
                        self._first_ns = now_ns()
                    break
                if not self._first_ns:
                    self._first_ns = now_ns()
                start = self._start
                pre = parse_preamble(mv[start : start + PREAMBLE.size], self._s.limits)
                hl = pre.header_len
                if avail < hl:
                    break
                self._header = bytes(mv[start : start + hl])
                self._start += hl
                self._need, self._filled = pre.payload_len, 0
                self._dest, self._dest_mv = self._s._pool.get(self._need)
                if self._need == 0:
                    self._complete()
                continue
            take = min(avail, self._need - self._filled)
            if take == 0:
                break
            assert self._dest_mv is not None
            self._dest_mv[self._filled : self._filled + take] = mv[self._start : self._start + take]
            self._filled += take
            self._start += take
            if self._filled < self._need:
                break
            self._complete()
        if self._start == self._end:
            self._start = self._end = 0

    def _complete(self) -> None:
        assert self._header is not None
        header, dest = self._header, self._dest
        self._header = self._dest = self._dest_mv = None
        self._large = self._need >= _DIRECT_MIN
        end = now_ns()
        frame = RawFrame(header, dest, len(header) + self._need, self._first_ns or end, end)
        self._first_ns = 0
        self._s._frame_received(frame)


class SocketStream(Stream, asyncio.BufferedProtocol):
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

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

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

    def _window(self) -> float | None:
        t, rate = self.options.stall_timeout, self.options.min_recv_rate
        if rate is not None:
            t = 5.0 if t is None else min(t, 5.0)
        return t

    def _arm_stall(self, *, fresh: bool = True) -> None:
        window = self._window()
        if window is None or self._loop is None or self._error is not None:
            return
        if fresh:
            self._stall_since = self._loop.time()
        self._stall_mark = self._reader.progress
        self._stall_bytes = self._reader.bytes_in
        self._window_start = now_ns()
        self._stall_handle = self._loop.call_later(window, self._check_stall)

    def _check_stall(self) -> None:
        self._stall_handle = None
        reader = self._reader
        if not reader.in_frame or self._error is not None or self._loop is None:
            return
        if self._inbox.paused:  # we stopped reading: the peer is not to blame
            self._arm_stall()
            return
        now, window = self._loop.time(), self._window() or 0.0
        rate = self.options.min_recv_rate
        got = reader.bytes_in - self._stall_bytes
        # judge the rate over whole windows of this frame, not one it began late in
        whole = reader.frame_started_ns <= self._window_start
        if rate is not None and whole and got < rate * window:
            why = f"sends a frame at {got / window:.0f} B/s, under min_recv_rate={rate:g} B/s"
        elif reader.progress != self._stall_mark:
            self._arm_stall()
            return
        elif self.options.stall_timeout is None or now - self._stall_since < self.options.stall_timeout:
            self._arm_stall(fresh=False)
            return
        else:
            why = f"stalled mid-frame for {self.options.stall_timeout:g} s"
        exc = TransportTimeoutError(f"peer {self.remote_address} {why} ({reader.describe()})")
        self._broken(exc, read_too=True)
        self.abort()

    async def _drain(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._write_paused:
            return
        try:
            await self._writable(self.options.send_timeout, "sending (peer not reading)")
        except TransportTimeoutError as exc:
            self._broken(exc, read_too=True)
            self.abort()
            raise

    async def _writable(self, timeout: float | None, what: str) -> None:
        """Wait for resume_writing() (or for the stream to break)."""
        assert self._loop is not None
        fut = self._loop.create_future()
        self._drain_waiters.append(fut)
        try:
            await wait_future(fut, timeout, what)
        finally:
            if fut in self._drain_waiters:
                self._drain_waiters.remove(fut)

    # -- Stream interface -------------------------------------------------------------
    def send_nowait(self, header: bytes, payload: memoryview) -> bool:
        if self._error is not None:
            raise self._error
        n = len(payload)
        if self._write_paused or self._closing or n > _NOWAIT_MAX:
            return False
        t = self._transport
        assert t is not None
        if n <= _JOIN_MAX:
            t.write(header + payload if n else header)
        elif self._vectored:
            t.writelines((header, payload))  # one writev, no copy
        else:
            t.write(header)
            t.write(payload)
        return True

    async def send(self, header: bytes, payload: memoryview) -> None:
        if self._closing and self._error is None:
            raise ConnectionClosedError("connection is closing")
        await self._drain()
        t = self._transport
        assert t is not None
        n = len(payload)
        if n <= _JOIN_MAX:
            t.write(header + payload if n else header)
            return
        if self._vectored:
            t.writelines((header, payload[:_CHUNK]))
            pos = _CHUNK
        else:
            t.write(header)
            pos = 0
        while pos < n:
            await self._drain()
            t.write(payload[pos : pos + _CHUNK])
            pos += _CHUNK

    async def flush(self, timeout: float | None) -> None:
        t = self._transport
        if t is None or self._error is not None or t.is_closing() or not t.get_write_buffer_size():
            return
        assert self._loop is not None
        t.set_write_buffer_limits(high=0, low=0)  # resume_writing() once it is empty
        try:
            while t.get_write_buffer_size() and self._error is None and not t.is_closing():
                self._write_paused = True
                await self._writable(timeout, "flushing")
        finally:
            if not t.is_closing():
                t.set_write_buffer_limits(high=_WRITE_HIGH, low=_WRITE_LOW)

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
