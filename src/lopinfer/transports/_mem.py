"""``mem://name``: both peers in one process and event loop (tests, the embedded default).

Frames still go through the codec (headers are built and checked, payloads copied
once so that the sender may reuse its tensor), so behaviour matches the real links.
"""

from __future__ import annotations

import asyncio
import itertools
from urllib.parse import SplitResult

from ..errors import ConnectError, ConnectionClosedError
from ._base import Inbox, RawFrame, Server, Stream, StreamHandler, now_ns, wait_future
from ._buffers import alloc_payload
from ._compress import codec_executor
from ._options import Options

_servers: dict[str, MemServer] = {}
_auto = itertools.count(1)


class MemStream(Stream):
    scheme = "mem"
    default_bandwidth = float("inf")

    def __init__(self, options: Options, name: str, side: str) -> None:
        super().__init__(options)
        self.local_address = f"{name}/{side}"
        self.peer: MemStream | None = None
        self._inbox = Inbox(options.recv_high_water, options.recv_low_water, _noop, self._resumed)
        self._space: list[asyncio.Future] = []
        self._closed = False

    def _resumed(self) -> None:
        # our consumer drained our inbox: wake the peer's blocked senders
        if self.peer is not None:
            waiters, self.peer._space = self.peer._space, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _deliver(self, header: bytes, data: object, n: int) -> None:
        assert self.peer is not None
        t = now_ns()
        self.peer._inbox.put(RawFrame(header, data, len(header) + n, t, t))  # type: ignore[arg-type]

    def _check(self) -> MemStream:
        if self._closed or self.peer is None:
            raise ConnectionClosedError("connection is closed")
        if self.peer._closed:
            raise ConnectionClosedError(f"peer {self.remote_address} closed the connection")
        return self.peer

    def send_nowait(self, header: bytes, payload: memoryview) -> bool:
        peer = self._check()
        n = len(payload)
        if peer._inbox.paused or n >= self.options.offload_threshold:
            return False
        data, out = alloc_payload(n)
        if n:
            out[:] = payload
        self._deliver(header, data, n)
        return True

    async def send(self, header: bytes, payload: memoryview) -> None:
        peer = self._check()
        while peer._inbox.paused:
            fut = asyncio.get_running_loop().create_future()
            self._space.append(fut)
            await wait_future(fut, self.options.send_timeout, "sending (peer not reading)")
            peer = self._check()
        n = len(payload)
        data, out = alloc_payload(n)
        if n >= self.options.offload_threshold:
            await asyncio.get_running_loop().run_in_executor(codec_executor(), out.__setitem__, slice(None), payload)
            peer = self._check()
        elif n:
            out[:] = payload
        self._deliver(header, data, n)

    def receive_nowait(self) -> RawFrame | None:
        return self._inbox.get_nowait()

    async def wait_readable(self, timeout: float | None) -> None:
        await self._inbox.wait(timeout)

    def _shut(self, clean: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.fail(ConnectionClosedError("connection is closed"))
        for w in self._space:
            if not w.done():
                w.set_exception(ConnectionClosedError("connection is closed"))
        peer = self.peer
        if peer is not None and not peer._closed:
            peer.eof_clean = clean
            why = "closed the connection" if clean else "aborted the connection"
            peer._inbox.fail(ConnectionClosedError(f"peer {peer.remote_address} {why}"))
            for w in peer._space:
                if not w.done():
                    w.set_exception(ConnectionClosedError(f"peer {why}"))

    async def aclose(self, *, error: bool = False) -> None:
        self._shut(clean=not error)

    def abort(self) -> None:
        self._shut(clean=False)

    def recv_buffered(self) -> tuple[int, int]:
        return self._inbox.buffered()

    @property
    def closed(self) -> bool:
        return self._closed


def _noop() -> None:
    return None


class MemServer(Server):
    def __init__(self, name: str, on_stream: StreamHandler, options: Options) -> None:
        self.name = name
        self.url = f"mem://{name}"
        self._on_stream = on_stream
        self._options = options
        self._loop = asyncio.get_running_loop()
        self._count = itertools.count(1)

    def accept(self, client_options: Options) -> MemStream:
        i = next(self._count)
        client = MemStream(client_options, self.name, f"client{i}")
        server = MemStream(self._options, self.name, f"server{i}")
        client.peer, server.peer = server, client
        client.remote_address, server.remote_address = server.local_address, client.local_address
        self._on_stream(server)
        return client

    async def aclose(self) -> None:
        if _servers.get(self.name) is self:
            del _servers[self.name]


async def open_stream(url: SplitResult, options: Options) -> MemStream:
    name = url.netloc + url.path
    server = _servers.get(name)
    if server is None:
        raise ConnectError(f"nothing listens on mem://{name} in this process")
    if server._loop is not asyncio.get_running_loop():
        raise ConnectError(f"mem://{name} listens on another event loop")
    return server.accept(options)


async def start_server(url: SplitResult, on_stream: StreamHandler, options: Options) -> MemServer:
    name = url.netloc + url.path or f"auto-{next(_auto)}"
    if name in _servers:
        raise ConnectError(f"mem://{name} is already in use")
    server = _servers[name] = MemServer(name, on_stream, options)
    return server
