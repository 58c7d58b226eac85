"""``shm://name``: same-machine peers; payloads through shared-memory rings.

Each side owns one ring (a ``multiprocessing.shared_memory`` segment) that it writes
its payloads into; a Unix socket (abstract namespace on Linux) carries the frame
headers and small notifications: "bytes [off, off+n) of my ring are the next
payload chunk" one way, "I copied n bytes out, you may reuse them" the other. So a
payload is copied into the ring by the sender and never passes through the kernel.
The receiver then either copies it out and releases the extent at once, or, for a
large tensor that arrived in one piece while less than half of the peer's ring is
held, hands out a tensor that views the ring itself (zero copy) and releases the
extent when the last tensor referring to it is gone. Extents are released in any
order; the sender allocates first-fit, and payloads bigger than half the ring (or
than the largest free gap) go in chunks that are always copied out. Peers share
memory, so ``shm://`` is for processes that trust each other (the same user).

Segments are unlinked as soon as both sides have mapped them, so nothing is left in
``/dev/shm`` even if a process dies.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import re
import secrets
import socket
import sys
import tempfile
from multiprocessing import resource_tracker, shared_memory
from typing import Any
from urllib.parse import SplitResult

import torch

from ..errors import ConnectError, ConnectionClosedError, InputError, ProtocolError
from ._base import Server, StreamHandler, wait_future
from ._compress import codec_executor
from ._frame import DTYPE_TO_CODE, FLAG_LZ4, PREAMBLE, TYPE_TENSOR
from ._options import Options
from ._shm_records import (
    CHUNK,
    MAX_BODY,
    R_ACK,
    R_CHUNK,
    R_HEADER,
    R_HELLO,
    R_HELLO_ACK,
    REC,
    RecordReader,
)
from ._sockstream import SocketStream

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
_INLINE_MAX = 1 << 20  # send_nowait copies payloads up to this size on the caller's turn
_CHUNK_MAX = 4 << 20
_THREAD_COPY = 8 << 20  # copies at least this big run on a worker thread
_ZERO_COPY_MIN = 64 * 1024
_POLL_S = 0.005  # how often held extents are checked while nothing else happens
_HELD_REFS = 3  # references to a held view when only we hold it: dict value, loop, call
_BOOL_CODE = DTYPE_TO_CODE[torch.bool]


def _socket_path(name: str) -> str:
    if sys.platform.startswith("linux"):
        return "\0lopinfer-shm-" + name
    return os.path.join(tempfile.gettempdir(), f"lopinfer-shm-{name}.sock")


class ShmStream(SocketStream):
    scheme = "shm"
    default_bandwidth = float("inf")

    def __init__(self, options: Options, on_ready: StreamHandler | None = None, client: bool = False) -> None:
        super().__init__(options)
        self._reader = RecordReader(self)  # type: ignore[assignment]
        self._on_ready = on_ready
        self._client = client
        self._own: shared_memory.SharedMemory | None = None
        self._peer: shared_memory.SharedMemory | None = None
        self._ring: memoryview | None = None
        self._peer_ring: memoryview | None = None
        self._used: dict[int, int] = {}  # our ring's extents the peer has not released
        self._offs: list[int] = []  # their offsets, sorted
        self._cursor = 0
        self._inflight = 0
        self._held: dict[int, tuple[int, memoryview]] = {}  # peer ring extents our tensors view
        self._held_bytes = 0
        self._poll_handle: asyncio.TimerHandle | None = None
        self._space_waiter: asyncio.Future | None = None
        self.ready: asyncio.Future | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._unlinked = False

    # -- handshake --------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        assert self._loop is not None
        self.ready = self._loop.create_future()
        self.remote_address = f"pid-peer@{self.remote_address or 'local'}"
        try:
            self._own = _segment(f"lopinfer_{os.getpid()}_{secrets.token_hex(6)}", self.options.shm_ring_size)
        except OSError as exc:
            self._fail_handshake(ConnectError(f"could not create a shared-memory ring: {exc}"))
            return
        self._ring = self._own.buf
        if self._client:
            self._send_hello(R_HELLO)
        t = self.options.connect_timeout
        if t is not None:
            self._handshake_timer = self._loop.call_later(t, self._fail_handshake,
                                                          ConnectError(f"shm handshake timed out after {t} s"))  # fmt: skip

    def _send_hello(self, rtype: int) -> None:
        assert self._own is not None
        body = json.dumps({"name": self._own.name, "size": self._own.size, "pid": os.getpid()}).encode()
        self._send_record(rtype, body)

    def _hello(self, body: bytes) -> None:
        if self._peer is not None:
            raise ProtocolError("second shm hello")
        try:
            info = json.loads(body)
            name, size, pid = str(info["name"]), int(info["size"]), int(info.get("pid", 0))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"bad shm hello: {exc}") from None
        if not _NAME_RE.match(name.lstrip("/")):
            raise ProtocolError(f"bad shm segment name {name!r}")
        try:
            peer = _segment(name, 0)
        except (OSError, ValueError) as exc:
            raise ProtocolError(f"cannot map the peer's ring {name!r}: {exc}") from None
        if peer.size < size or size < 1:
            peer.close()
            raise ProtocolError(f"peer ring {name!r} is smaller than announced")
        self._peer = peer
        buf = peer.buf
        assert buf is not None
        self._peer_ring = buf[:size]
        self.remote_address = f"pid {pid}"
        if self._client:
            self._send_record(R_HELLO_ACK, b"")
            self._unlink_own()  # the server mapped it before answering
            self._handshake_done()
        else:
            self._send_hello(R_HELLO)

    def _hello_ack(self) -> None:
        if self._client or self._peer is None:
            raise ProtocolError("unexpected shm hello ack")
        self._unlink_own()
        self._handshake_done()

    def _handshake_done(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(None)
        if self._on_ready is not None:
            self._on_ready(self)

    def _fail_handshake(self, exc: Exception) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # the connecting side reads it; a server has no reader
        self.abort()

    def _unlink_own(self) -> None:
        if self._own is not None and not self._unlinked:
            self._unlinked = True
            _unlink(self._own)

    def buffer_updated(self, nbytes: int) -> None:
        if self.ready is None or self.ready.done():
            super().buffer_updated(nbytes)
            return
        try:
            self._reader.updated(nbytes)
        except ProtocolError as exc:
            if self.ready.done():  # the handshake completed earlier in this same batch
                self._protocol_failed(exc)
            else:
                self._fail_handshake(ConnectError(f"shm handshake failed: {exc}"))
            return
        if self._stall_handle is None and self._reader.in_frame:
            self._arm_stall()

    def _resume_reading(self) -> None:
        if self._discard is not None:
            super()._resume_reading()
            return
        # records left unprocessed while the inbox was full come first
        try:
            self._reader.updated(0)
        except ProtocolError as exc:
            self._protocol_failed(exc)
            return
        if not self._inbox.paused:
            super()._resume_reading()

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

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.ready is not None and not self.ready.done():
            self._fail_handshake(ConnectError("the shm peer closed during the handshake"))
        w = self._space_waiter
        if w is not None and not w.done():
            w.set_exception(self._error or ConnectionClosedError("connection is closed"))
        self._release()

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

    # -- sending ----------------------------------------------------------------------
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

    def send_nowait(self, header: bytes, payload: memoryview) -> bool:
        if self._error is not None:
            raise self._error
        n = len(payload)
        ring = self._ring
        if self._write_paused or self._closing or ring is None or n > _INLINE_MAX:
            return False
        parts = [REC.pack(R_HEADER, len(header)), header]
        if n:
            ext = self._alloc(n, whole=True)
            if ext is None:
                return False  # would have to wait for ring space
            parts.append(self._copy_in(payload, 0, ext))
        assert self._transport is not None
        self._transport.write(b"".join(parts))
        return True

    async def send(self, header: bytes, payload: memoryview) -> None:
        if self._closing and self._error is None:
            raise ConnectionClosedError("connection is closing")
        await self._drain()
        self._send_record(R_HEADER, header)
        n, pos = len(payload), 0
        assert self._loop is not None
        whole = self._ring is not None and n <= len(self._ring) // 2
        while pos < n:
            ring = self._ring
            if ring is None:
                raise self._error or ConnectionClosedError("connection is closed")
            # in one piece when it fits half the ring (the receiver may then keep it
            # where it is); else in pieces of at most 4 MiB, which hold the loop ~1 ms
            ext = self._alloc(n, whole=True) if whole else None
            if ext is None:
                whole = False
                ext = self._alloc(min(n - pos, _CHUNK_MAX), whole=False)
            if ext is None:
                self._space_waiter = self._loop.create_future()
                try:
                    await wait_future(self._space_waiter, self.options.send_timeout, "sending (peer not reading)")
                finally:
                    self._space_waiter = None
                continue
            if ext[1] >= _THREAD_COPY:
                rec = await self._loop.run_in_executor(codec_executor(), self._copy_in, payload, pos, ext)
            else:
                rec = self._copy_in(payload, pos, ext)
            await self._drain()
            assert self._transport is not None
            self._transport.write(rec)
            pos += ext[1]


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


class ShmServer(Server):
    def __init__(self, server: asyncio.AbstractServer, name: str, path: str) -> None:
        self._server = server
        self._path = path
        self.url = f"shm://{name}"

    async def aclose(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        if not self._path.startswith("\0"):
            try:
                os.unlink(self._path)
            except OSError:
                pass


def _name(url: SplitResult, *, listening: bool) -> str:
    name = url.netloc + url.path
    if not name and listening:
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
    if not _NAME_RE.match(name):
        raise InputError(f"bad shm URL {url.geturl()!r}: use shm://NAME with letters, digits, '._-'")
    return name


async def open_stream(url: SplitResult, options: Options) -> ShmStream:
    name = _name(url, listening=False)
    loop = asyncio.get_running_loop()
    path = _socket_path(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # our own socket: uvloop cannot address the abstract namespace by path
        await asyncio.wait_for(loop.sock_connect(sock, path), options.connect_timeout)
        _, stream = await loop.create_unix_connection(lambda: ShmStream(options, client=True), sock=sock)
    except asyncio.TimeoutError:
        sock.close()
        raise ConnectError(f"connecting to shm://{name} timed out") from None
    except OSError as exc:
        sock.close()
        raise ConnectError(f"nothing listens on shm://{name}: {exc.strerror or exc}") from exc
    assert stream.ready is not None
    try:
        await stream.ready
    except ConnectionClosedError as exc:
        raise ConnectError(f"shm://{name} closed during the handshake") from exc
    except ProtocolError as exc:
        raise ConnectError(f"shm://{name} handshake failed: {exc}") from exc
    stream.local_address = f"pid {os.getpid()}"
    return stream


async def start_server(url: SplitResult, on_stream: StreamHandler, options: Options) -> ShmServer:
    name = _name(url, listening=True)
    loop = asyncio.get_running_loop()
    path = _socket_path(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(128)
        sock.setblocking(False)
        server = await loop.create_unix_server(lambda: ShmStream(options, on_ready=on_stream), sock=sock)
    except OSError as exc:
        sock.close()
        raise ConnectError(f"could not listen on shm://{name}: {exc.strerror or exc}") from exc
    return ShmServer(server, name, path)
