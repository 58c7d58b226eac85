"""Guarding a byte-stream socket against a peer that stalls or trickles mid-frame.

While a frame is arriving, a timer checks every window (``stall_timeout``; at most
5 s when ``min_recv_rate`` is set) that bytes still come, and fast enough; a peer
that fails breaks the stream with a :class:`~lopinfer.errors.TransportTimeoutError`.
A mixin of :class:`~._sockstream.SocketStream` (and so of the shm:// stream), apart
from reading and writing because it only watches their progress counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import TransportTimeoutError
from ._base import now_ns

if TYPE_CHECKING:
    import asyncio

    from ._base import Inbox
    from ._options import Options
    from ._sockreader import FrameReader


class StallGuard:
    """The stall and rate checks of :class:`~._sockstream.SocketStream`; its state is set up there."""

    if TYPE_CHECKING:
        options: Options
        remote_address: str
        _loop: asyncio.AbstractEventLoop | None
        _error: Exception | None
        _reader: FrameReader
        _inbox: Inbox
        _stall_handle: asyncio.TimerHandle | None
        _stall_mark: int
        _stall_bytes: int
        _stall_since: float
        _window_start: int

        def _broken(self, exc: Exception, *, read_too: bool) -> None: ...

        def abort(self) -> None: ...

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
