"""The shared memory of ``shm://``: the two rings, their extents, and the segments.

Each side owns one ring (a ``multiprocessing.shared_memory`` segment) that it writes
its payloads into, and tells the peer "bytes [off, off+n) of my ring are the next
payload chunk"; the peer answers "I copied n bytes out, you may reuse them". The
receiver either copies a payload out and releases the extent at once, or, for a
large tensor that arrived in one piece while less than half of the peer's ring is
held, hands out a tensor that views the ring itself (zero copy) and releases the
extent when the last tensor referring to it is gone. Extents are released in any
order; the sender allocates first-fit, and payloads bigger than half the ring (or
than the largest free gap) go in chunks that are always copied out.

Segments are kept out of the resource tracker and unlinked as soon as both sides
have mapped them. Separate from :mod:`._shm` (the stream: handshake, sending,
connect and listen) because this is memory bookkeeping that never waits.
"""

from __future__ import annotations

import bisect
import os
import sys
from multiprocessing import resource_tracker, shared_memory
from typing import TYPE_CHECKING

import torch

from ..errors import ProtocolError
from ._frame import DTYPE_TO_CODE, FLAG_LZ4, PREAMBLE, TYPE_TENSOR
from ._shm_records import CHUNK, MAX_BODY, R_ACK, R_CHUNK, REC

if TYPE_CHECKING:
    import asyncio

    from ._options import Options

_ZERO_COPY_MIN = 64 * 1024
_POLL_S = 0.005  # how often held extents are checked while nothing else happens
_HELD_REFS = 3  # references to a held view when only we hold it: dict value, loop, call
_BOOL_CODE = DTYPE_TO_CODE[torch.bool]


class ShmRings:
    """The ring half of :class:`~._shm.ShmStream`; its state is set up there."""

    if TYPE_CHECKING:
        options: Options
        _transport: asyncio.Transport | None
        _loop: asyncio.AbstractEventLoop | None
        _own: shared_memory.SharedMemory | None
        _peer: shared_memory.SharedMemory | None
        _ring: memoryview | None
        _peer_ring: memoryview | None
        _used: dict[int, int]
        _offs: list[int]
        _cursor: int
        _inflight: int
        _held: dict[int, tuple[int, memoryview]]
        _held_bytes: int
        _poll_handle: asyncio.TimerHandle | None
        _space_waiter: asyncio.Future | None
        _unlinked: bool

        @property
        def closed(self) -> bool: ...

    # -- notifications ----------------------------------------------------------------
    def _send_record(self, rtype: int, body: bytes) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(REC.pack(rtype, len(body)) + body)

    def _acked(self, body: memoryview) -> None:
        if len(body) % CHUNK.size:
            raise ProtocolError("bad shm release notification")
        for off, n in CHUNK.iter_unpack(body):
            if self._used.get(off) != n:
                raise ProtocolError(f"shm release of [{off}, {off + n}), which is not in use")
            del self._used[off]
            del self._offs[bisect.bisect_left(self._offs, off)]
            self._inflight -= n
        w = self._space_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _send_acks(self, freed: list[tuple[int, int]]) -> None:
        per = MAX_BODY // CHUNK.size
        for i in range(0, len(freed), per):
            self._send_record(R_ACK, b"".join(CHUNK.pack(o, n) for o, n in freed[i : i + per]))
        freed.clear()

    # -- zero-copy receive --------------------------------------------------------------
    def _can_hold(self, n: int, header: bytes) -> bool:
        """Whether a payload may stay in the peer's ring: big enough to be worth it, never
        more than half the ring (the peer must always have room to send), not bool data
        (validated bytes must not change under us), and not compressed (decoded anyway)."""
        ring = self._peer_ring
        return (
            self.options.shm_zero_copy
            and n >= _ZERO_COPY_MIN
            and ring is not None
            and self._held_bytes + n <= len(ring) // 2
            and header[5] == TYPE_TENSOR
            and not PREAMBLE.unpack_from(header)[3] & FLAG_LZ4
            and header[PREAMBLE.size + 2] != _BOOL_CODE
        )

    def _hold(self, off: int, n: int, view: memoryview) -> None:
        self._held[off] = (n, view)
        self._held_bytes += n
        if self._poll_handle is None and self._loop is not None:
            self._poll_handle = self._loop.call_later(_POLL_S, self._poll_tick)

    def _poll_held(self) -> None:
        """Give back the extents no tensor refers to any more (their views' refcount
        drops to ours: every tensor made from a view holds a reference to it)."""
        if not self._held:
            return
        freed = []
        for off, (n, view) in list(self._held.items()):
            if sys.getrefcount(view) <= _HELD_REFS:
                try:
                    view.release()
                except BufferError:  # pragma: no cover - still exported after all
                    continue
                del self._held[off]
                self._held_bytes -= n
                freed.append((off, n))
        if freed:
            self._send_acks(freed)

    def _poll_tick(self) -> None:
        self._poll_handle = None
        self._poll_held()
        if self._held and self._loop is not None and not self.closed:
            self._poll_handle = self._loop.call_later(_POLL_S, self._poll_tick)

    # -- segments ---------------------------------------------------------------------
    def _unlink_own(self) -> None:
        if self._own is not None and not self._unlinked:
            self._unlinked = True
            _unlink(self._own)

    def _release(self) -> None:
        self._unlink_own()
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None
        self._ring = self._peer_ring = None
        self._held.clear()  # tensors still viewing the peer's ring keep it mapped
        for seg in (self._own, self._peer):
            if seg is not None:
                _close_segment(seg)
        self._own = self._peer = None

    # -- our ring's extents -----------------------------------------------------------
    def _alloc(self, want: int, whole: bool) -> tuple[int, int] | None:
        """A free extent of our ring: ``want`` bytes, or (unless ``whole``) the largest
        free gap when no gap that big exists. Where the last one ended if there is room
        (a plain ring while the peer releases in order), else first fit."""
        assert self._ring is not None
        size = len(self._ring)
        offs, used, cur = self._offs, self._used, self._cursor
        i = bisect.bisect_left(offs, cur)
        if not (i and offs[i - 1] + used[offs[i - 1]] > cur):
            hi = offs[i] if i < len(offs) else size
            if hi - cur >= want:
                return self._take(cur, want)
        gaps, prev = [], 0
        for off in offs:
            if off > prev:
                gaps.append((prev, off))
            prev = off + used[off]
        if prev < size:
            gaps.append((prev, size))
        best = (0, 0)
        for lo, hi in gaps:
            if hi - lo >= want:
                return self._take(lo, want)
            if hi - lo > best[1] - best[0]:
                best = (lo, hi)
        if whole or best[1] == best[0]:
            return None
        return self._take(best[0], best[1] - best[0])

    def _take(self, off: int, n: int) -> tuple[int, int]:
        self._used[off] = n
        bisect.insort(self._offs, off)
        self._inflight += n
        assert self._ring is not None
        self._cursor = (off + n) % len(self._ring)
        return off, n

    def _copy_in(self, payload: memoryview, pos: int, ext: tuple[int, int]) -> bytes:
        off, n = ext
        assert self._ring is not None
        self._ring[off : off + n] = payload[pos : pos + n]
        return REC.pack(R_CHUNK, CHUNK.size) + CHUNK.pack(off, n)


def _close_segment(seg: shared_memory.SharedMemory) -> None:
    try:
        seg.close()
    except BufferError:
        # views are still exported (tensors received without copy): drop our handles
        # and let the mapping go with the last view, so __del__ has nothing to close
        seg._buf = None  # type: ignore[attr-defined]
        seg._mmap = None  # type: ignore[attr-defined]
        fd = getattr(seg, "_fd", -1)
        if fd >= 0:
            os.close(fd)
            seg._fd = -1  # type: ignore[attr-defined]


def _unlink(seg: shared_memory.SharedMemory) -> None:
    # not SharedMemory.unlink(): that would unregister from the tracker a second time
    try:
        import _posixshmem

        _posixshmem.shm_unlink(seg._name)  # type: ignore[attr-defined]
    except (ImportError, OSError):
        pass


def _segment(name: str, size: int) -> shared_memory.SharedMemory:
    """Create (``size`` > 0) or attach a segment, kept out of the resource tracker.

    The tracker would unlink a segment this process merely attached when it exits, and
    complain about the owner's own unlink; ownership here is explicit instead: the
    creator unlinks right after the peer mapped it (or when the connection fails).
    """
    create = size > 0
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, create=create, size=size, track=False)
    seg = shared_memory.SharedMemory(name=name, create=create, size=size)
    try:
        resource_tracker.unregister(seg._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - tracker details vary by version
        pass
    return seg
