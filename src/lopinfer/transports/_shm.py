"""``shm://name``: same-machine peers; payloads through shared-memory rings.

Each side owns one ring (a ``multiprocessing.shared_memory`` segment) that it writes
its payloads into; a Unix socket (abstract namespace on Linux) carries the frame
headers and small notifications: "bytes [off, off+n) of my ring are the next
payload chunk" one way, "I copied n bytes out, you may reuse them" the other. So a
payload is copied into the ring by the sender and never passes through the kernel;
a large one may reach the receiver's tensors without any copy out. Peers share
memory, so ``shm://`` is for processes that trust each other (the same user).

Segments are unlinked as soon as both sides have mapped them, so nothing is left in
``/dev/shm`` even if a process dies.

This module is the stream and its glue: the handshake over the socket, sending
(copying into the ring, in chunks when big), connecting and listening. The rings
themselves (allocation, release, zero-copy holds, segments) are in
:mod:`._shm_ring`; the notification records and their reader in
:mod:`._shm_records`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
import sys
import tempfile
from multiprocessing import shared_memory
from typing import Any
from urllib.parse import SplitResult

from ..errors import ConnectError, ConnectionClosedError, InputError, ProtocolError
from ._base import Server, StreamHandler, wait_future
from ._compress import codec_executor
from ._options import Options
from ._shm_records import (
    CHUNK,  # noqa: F401 - re-exported: tests import it from here
    R_HEADER,
    R_HELLO,
    R_HELLO_ACK,
    REC,
    RecordReader,
)
from ._shm_ring import ShmRings, _segment
from ._sockstream import SocketStream

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
_INLINE_MAX = 1 << 20  # send_nowait copies payloads up to this size on the caller's turn
_CHUNK_MAX = 4 << 20
_THREAD_COPY = 8 << 20  # copies at least this big run on a worker thread


def _socket_path(name: str) -> str:
    if sys.platform.startswith("linux"):
        return "\0lopinfer-shm-" + name
    return os.path.join(tempfile.gettempdir(), f"lopinfer-shm-{name}.sock")


class ShmStream(ShmRings, SocketStream):
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

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.ready is not None and not self.ready.done():
            self._fail_handshake(ConnectError("the shm peer closed during the handshake"))
        w = self._space_waiter
        if w is not None and not w.done():
            w.set_exception(self._error or ConnectionClosedError("connection is closed"))
        self._release()

    # -- sending ----------------------------------------------------------------------
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
