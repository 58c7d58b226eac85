"""Reading a byte-stream socket: the parser that splits it into frames.

Small data lands in a staging buffer and is parsed there; the payload of a large
frame is received by the kernel straight into the tensor it will become (no copy in
user space). Separate from :mod:`._sockstream` because it is pure buffer
bookkeeping: it never touches the transport, only hands each whole frame to its
stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import RawFrame, now_ns
from ._frame import PREAMBLE, parse_preamble

if TYPE_CHECKING:
    from ._sockstream import SocketStream

_STAGING = 256 * 1024
_DIRECT_MIN = 32 * 1024  # read payload remainders at least this big straight into the tensor
_HEADER_READ = 4096
_DIRECT_MAX = 4 << 20


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
