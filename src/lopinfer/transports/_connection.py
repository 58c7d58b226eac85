"""The objects layer: tensors and control messages over any Stream, written once.

A :class:`Connection` encodes frames (header + raw tensor bytes), compresses them
when LZ4 pays off, queues them under high/low water marks, writes them in order,
and decodes what arrives, with timeouts on every wait and statistics on all of it.

This module holds the class itself: the switch to the authenticated limits,
``async for`` and ``async with``, closing, and the state and addresses it reports.
The work is in its bases: :mod:`._conn_send` (send queue and flow control),
:mod:`._conn_recv` (receive and dispatch), :mod:`._conn_stats` (statistics hooks),
all on the shared state of :mod:`._conn_state`.
"""

from __future__ import annotations

from ..errors import ConnectionClosedError, TransportError
from ._conn_recv import ReceiveSide
from ._conn_send import SendSide
from ._conn_state import _DEFAULT  # noqa: F401 - re-exported: _registry imports it from here
from ._frame import Frame
from ._messages import Message


class Connection(SendSide, ReceiveSide):
    """One link to a peer: send tensor frames and control messages, receive either.

    Obtained from :func:`~lopinfer.transports.connect` or passed to a listener's
    handler. Use as ``async with``. Sends keep their order; a sent tensor must not be
    modified in place until :meth:`drain` returns (it may still be queued).

    Attributes:
        url: where it points (``scheme://address``).
        options: its :class:`Options`.
    """

    def authenticated(self) -> None:
        """The peer passed its hello: accept what ``options`` allow from now on."""
        self._stream.limits = self.options.limits

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Frame | Message:
        """``async for item in conn``: ends when the connection closes cleanly."""
        try:
            return await self.recv()
        except ConnectionClosedError:
            if self._stream.eof_clean or self._closing:
                raise StopAsyncIteration from None
            raise

    # -- lifecycle --------------------------------------------------------------------
    async def aclose(self) -> None:
        """Send what is queued (up to ``close_timeout``), then close. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._error is None:
            try:
                await self.drain(timeout=self.options.close_timeout)
                await self._stream.aclose()
            except (TransportError, OSError):
                self._stream.abort()
        else:
            self._stream.abort()
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
        for w in self._space_waiters + self._drain_waiters:
            if not w.done():
                w.set_exception(ConnectionClosedError("connection is closed"))

    def abort(self) -> None:
        """Close at once, dropping whatever is queued."""
        self._closing = True
        self._fail(ConnectionClosedError("connection was aborted"))

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed_cleanly(self) -> bool:
        """True when the peer closed between frames, or we closed it."""
        return self._stream.eof_clean or self._closing

    @property
    def closed(self) -> bool:
        """True once closed by either side or broken."""
        return self._closing or self._closed or self._stream.closed

    @property
    def scheme(self) -> str:
        return self._stream.scheme

    @property
    def local_address(self) -> str:
        return self._stream.local_address

    @property
    def remote_address(self) -> str:
        return self._stream.remote_address

    def __repr__(self) -> str:
        state = "broken" if self._error is not None and not self._closing else (
            "closed" if self.closed else "open")  # fmt: skip
        rq, _ = self._stream.recv_buffered()
        return (
            f"<Connection {self.url} {state} local={self.local_address} sent={self._n[0]} "
            f"received={self._n[1]} queued={len(self._queue)}/{self._queued_bytes}B inbox={rq}>"
        )
