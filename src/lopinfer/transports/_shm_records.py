"""The shm:// notification records, and the reader that rebuilds frames from them.

A Unix socket carries small records; payload bytes stay in the shared rings::

    HELLO      {"name", "size", "pid"} of the sender's ring (JSON)
    HELLO_ACK  the client mapped the server's ring
    HEADER     a frame header (preamble + meta), its payload follows as CHUNKs
    CHUNK      (offset, length): the next payload bytes, in the sender's ring
    ACK        (offset, length) pairs: extents of the sender's ring given back
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ProtocolError
from ._base import RawFrame, now_ns
from ._frame import PREAMBLE, parse_preamble

if TYPE_CHECKING:
    from ._shm import ShmStream

REC = struct.Struct("<BxxxI")  # record type, body length
CHUNK = struct.Struct("<QQ")
R_HELLO, R_HELLO_ACK, R_HEADER, R_CHUNK, R_ACK = 1, 2, 3, 4, 5
MAX_BODY = 4096


class RecordReader:
    """Parses the notification records; reassembles frames from the peer's ring."""

    def __init__(self, stream: ShmStream) -> None:
        self._s = stream
        self._buf = bytearray(64 * 1024)
        self._mv = memoryview(self._buf)
        self._start = self._end = 0
        self._header: bytes | None = None
        self._dest: Any = None
        self._dest_mv: memoryview | None = None
        self._need = self._filled = 0
        self._first_ns = 0
        self.freed: list[tuple[int, int]] = []  # peer ring extents copied out, to acknowledge
        self.progress = 0
        self.bytes_in = 0

    @property
    def frame_started_ns(self) -> int:
        return self._first_ns

    @property
    def in_frame(self) -> bool:
        return self._header is not None or self._end > self._start

    def describe(self) -> str:
        if self._header is not None:
            return f"got {self._filled} of {self._need} payload bytes"
        return f"got {self._end - self._start} notification bytes"

    def get_buffer(self) -> memoryview:
        if self._start and self._end > len(self._buf) - MAX_BODY - REC.size:
            n = self._end - self._start
            self._buf[:n] = self._mv[self._start : self._end]
            self._start, self._end = 0, n
        if len(self._buf) - self._end < MAX_BODY + REC.size:  # full of records held back
            self._mv.release()
            self._buf.extend(bytes(len(self._buf)))
            self._mv = memoryview(self._buf)
        return self._mv[self._end :]

    def updated(self, n: int) -> None:
        self.progress += 1
        self.bytes_in += n
        self._end += n
        s, mv = self._s, self._mv
        freed = self.freed
        inbox = s._inbox
        try:
            while self._end - self._start >= REC.size and not inbox.paused:
                rtype, blen = REC.unpack_from(mv, self._start)
                if blen > MAX_BODY:
                    raise ProtocolError(f"shm notification of {blen} bytes is too long")
                if self._end - self._start < REC.size + blen:
                    break
                body = mv[self._start + REC.size : self._start + REC.size + blen]
                self._start += REC.size + blen
                if rtype == R_CHUNK:
                    self._chunk(body)
                elif rtype == R_HEADER:
                    self._frame_header(body)
                elif rtype == R_ACK:
                    s._acked(body)
                elif rtype == R_HELLO:
                    s._hello(bytes(body))
                elif rtype == R_HELLO_ACK:
                    s._hello_ack()
                else:
                    raise ProtocolError(f"unknown shm notification type {rtype}")
        finally:
            s._poll_held()
            if freed:
                s._send_acks(freed)
        if self._start == self._end:
            self._start = self._end = 0

    def _frame_header(self, body: memoryview) -> None:
        if self._header is not None:
            raise ProtocolError("frame header inside another frame's payload")
        pre = parse_preamble(body[: PREAMBLE.size], self._s.limits)
        if len(body) != pre.header_len:
            raise ProtocolError(f"header of {len(body)} bytes, its preamble says {pre.header_len}")
        self._first_ns = now_ns()
        self._header = bytes(body)
        self._need, self._filled = pre.payload_len, 0
        self._dest = self._dest_mv = None
        if self._need == 0:
            self._dest, self._dest_mv = self._s._pool.get(0)
            self._complete()

    def _chunk(self, body: memoryview) -> None:
        s = self._s
        ring = s._peer_ring
        if len(body) != CHUNK.size or ring is None:
            raise ProtocolError("bad shm chunk notification")
        off, n = CHUNK.unpack(body)
        if self._header is None or n == 0 or n > self._need - self._filled:
            raise ProtocolError("shm chunk outside a frame's payload")
        if off + n > len(ring):
            raise ProtocolError(f"shm chunk [{off}, {off + n}) outside the ring")
        if n == self._need and s._can_hold(n, self._header):
            # zero copy: the tensor views the peer's ring; the extent is given back
            # once no tensor refers to it any more (see ShmStream._poll_held)
            view = ring[off : off + n]
            s._hold(off, n, view)
            self._dest = torch.frombuffer(view, dtype=torch.uint8)
            self._filled = n
            self._complete()
            return
        if self._dest_mv is None:
            self._dest, self._dest_mv = s._pool.get(self._need)
        self._dest_mv[self._filled : self._filled + n] = ring[off : off + n]
        self._filled += n
        self.freed.append((off, n))
        if self._filled == self._need:
            self._complete()

    def _complete(self) -> None:
        assert self._header is not None
        end = now_ns()
        frame = RawFrame(self._header, self._dest, len(self._header) + self._need, self._first_ns, end)
        self._header = self._dest = self._dest_mv = None
        self._s._frame_received(frame)
