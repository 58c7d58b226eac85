"""Writing to a byte-stream socket: frames handed to the transport, and waiting for
the socket to drain.

A payload goes from the tensor to the transport chunk by chunk as the socket
drains, and the transport's own buffer is kept small (it pauses us past
``_WRITE_HIGH``; ``flush`` waits for it to empty), so little is copied on the way to
the kernel. A mixin of :class:`~._sockstream.SocketStream` (and so of the shm://
stream, which replaces ``send``/``send_nowait`` but drains the same way): the write
path, kept apart from reading and from the stream's life cycle.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..errors import ConnectionClosedError, TransportTimeoutError
from ._base import wait_future

if TYPE_CHECKING:
    from ._options import Options

_JOIN_MAX = 64 * 1024  # header and payload up to this size go out in one write
_NOWAIT_MAX = 1 << 20  # write payloads up to this size at once (the OS takes most of it)
_CHUNK = 1 << 20  # largest single write of a big payload (asyncio copies what the OS did not take)
_WRITE_HIGH = 256 * 1024  # the transport buffers this much before pausing us (copied on 3.11 asyncio)
_WRITE_LOW = 64 * 1024


class SocketWriter:
    """The write side of :class:`~._sockstream.SocketStream`; its state is set up there."""

    if TYPE_CHECKING:
        options: Options
        _transport: asyncio.Transport | None
        _loop: asyncio.AbstractEventLoop | None
        _error: Exception | None
        _closing: bool
        _write_paused: bool
        _drain_waiters: list[asyncio.Future]
        _vectored: bool

        def _broken(self, exc: Exception, *, read_too: bool) -> None: ...

        def abort(self) -> None: ...

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

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
