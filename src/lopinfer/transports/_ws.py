"""``ws://host:port/path`` and ``wss://``: one frame per binary WebSocket message (aiohttp)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from urllib.parse import SplitResult

import aiohttp
from aiohttp import web

from ..errors import (
    ConnectError,
    ConnectionClosedError,
    InputError,
    ProtocolError,
    TransportTimeoutError,
)
from ._base import Inbox, RawFrame, Server, Stream, StreamHandler, now_ns
from ._compress import codec_executor
from ._frame import lz4_bound, parse_preamble
from ._options import Options
from ._sockstream import _fmt_addr

_JOIN_INLINE = 1 << 20  # join header and payload on the loop below this size


class WsStream(Stream):
    scheme = "ws"

    def __init__(self, options: Options, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                 session: aiohttp.ClientSession | None = None) -> None:  # fmt: skip
        super().__init__(options)
        self._ws = ws
        self._session = session
        self._resume = asyncio.Event()
        self._resume.set()
        self._inbox = Inbox(options.recv_high_water, options.recv_low_water, self._resume.clear, self._resume.set)
        self._closing = False
        self._broken = False
        self.done = asyncio.get_running_loop().create_future()
        self._release_task: asyncio.Task | None = None

    async def read_loop(self) -> None:
        """Pump messages into the inbox until the socket closes (runs in its own task)."""
        ws = self._ws
        try:
            while True:
                if not self._resume.is_set() and not self._closing:
                    await self._resume.wait()
                msg = await ws.receive()
                first = now_ns()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    data = msg.data
                    pre = parse_preamble(data[:24], self.limits)
                    hl = pre.header_len
                    if len(data) != hl + pre.payload_len:
                        raise ProtocolError(
                            f"WebSocket message of {len(data)} bytes, its header says {hl + pre.payload_len}"
                        )
                    self._inbox.put(RawFrame(data[:hl], memoryview(data)[hl:], len(data), first, first))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    raise ProtocolError("text WebSocket messages are not part of the protocol")
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    exc = ws.exception()
                    if isinstance(exc, aiohttp.WebSocketError) and exc.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
                        raise ProtocolError(f"WebSocket message too big: {exc}")
                    self._broken = True
                    self._inbox.fail(ConnectionClosedError(f"WebSocket to {self.remote_address} broke: {exc}"))
                    return
                else:  # CLOSE, CLOSING, CLOSED
                    code = ws.close_code
                    self.eof_clean = code in (None, aiohttp.WSCloseCode.OK, aiohttp.WSCloseCode.GOING_AWAY)
                    if not self.eof_clean:
                        self._broken = True
                    self._inbox.fail(ConnectionClosedError(
                        f"peer {self.remote_address} closed the WebSocket (code {code})"))  # fmt: skip
                    return
        except ProtocolError as exc:
            self._inbox.fail(exc)
        except (asyncio.CancelledError, Exception) as exc:
            self._broken = True
            self._inbox.fail(ConnectionClosedError(f"WebSocket to {self.remote_address} broke: {exc!r}"))
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def send(self, header: bytes, payload: memoryview) -> None:
        if self._closing or self._ws.closed or self._broken:
            raise ConnectionClosedError("connection is closed")
        if len(payload) >= _JOIN_INLINE:
            data = await asyncio.get_running_loop().run_in_executor(codec_executor(), header.__add__, payload)
        else:
            data = header + payload
        try:
            await asyncio.wait_for(self._ws.send_bytes(data), self.options.send_timeout)
        except asyncio.TimeoutError:
            self.abort()
            raise TransportTimeoutError(
                f"sending to {self.remote_address} timed out after {self.options.send_timeout} s"
            ) from None
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            self._broken = True
            raise ConnectionClosedError(f"WebSocket to {self.remote_address} broke: {exc}") from exc

    def receive_nowait(self) -> RawFrame | None:
        return self._inbox.get_nowait()

    async def wait_readable(self, timeout: float | None) -> None:
        await self._inbox.wait(timeout)

    async def aclose(self, *, error: bool = False) -> None:
        if self._closing:
            return
        self._closing = True
        self._resume.set()  # read on, so that the peer's close (or its loss) is seen
        try:
            code = aiohttp.WSCloseCode.PROTOCOL_ERROR if error else aiohttp.WSCloseCode.OK
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._ws.close(code=code, message=b"protocol error" if error else b""),
                    self.options.close_timeout,
                )
        finally:
            await self._release()

    async def _release(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
        if not self.done.done():
            self.done.set_result(None)

    def abort(self) -> None:
        self._closing = True
        self._broken = True
        resp = self._ws
        transport = getattr(getattr(resp, "_writer", None), "transport", None)
        if transport is not None:
            transport.abort()
        self._inbox.fail(ConnectionClosedError("connection was aborted"))
        self._release_task = asyncio.get_running_loop().create_task(self._release())

    def recv_buffered(self) -> tuple[int, int]:
        return self._inbox.buffered()

    @property
    def closed(self) -> bool:
        return self._closing or self._broken or self._ws.closed


def _loopback_bandwidth(stream: WsStream, peer: object) -> None:
    try:
        if isinstance(peer, tuple) and ipaddress.ip_address(peer[0]).is_loopback:
            stream.default_bandwidth = float("inf")  # LZ4 never pays off on loopback
    except ValueError:
        pass


def _max_msg(options: Options) -> int:
    return 1024 + lz4_bound(max(options.max_frame_size, options.max_message_size))


class WsServer(Server):
    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self._runner = runner
        self.url = url

    async def aclose(self) -> None:
        await self._runner.cleanup()


async def start_server(url: SplitResult, on_stream: StreamHandler, options: Options) -> WsServer:
    if url.scheme == "wss" and options.ssl is None:
        raise InputError("wss:// needs an ssl=SSLContext option")
    try:
        port = url.port
    except ValueError as exc:
        raise InputError(f"bad port in {url.geturl()!r}: {exc}") from None
    host = url.hostname or "0.0.0.0"
    path = url.path or "/"

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            max_msg_size=_max_msg(options), heartbeat=options.heartbeat, compress=False,
            timeout=options.close_timeout,
        )  # fmt: skip
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, text="this endpoint speaks the LOPInfer WebSocket protocol\n")
        await ws.prepare(request)
        stream = WsStream(options, ws)
        stream.scheme = url.scheme  # type: ignore[misc]
        peer = request.transport.get_extra_info("peername") if request.transport else None
        stream.remote_address = _fmt_addr(peer)
        _loopback_bandwidth(stream, peer)
        stream.local_address = f"{host}:{port}{path}"
        on_stream(stream)
        try:
            await stream.read_loop()
            await asyncio.shield(stream.done)
        finally:
            if not stream._closing:
                await stream.aclose()
        return ws

    app = web.Application()
    app.router.add_get(path, handle)
    for method, route, handler in options.http_routes:
        app.router.add_route(method, route, handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=options.close_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port if port is not None else 0, ssl_context=options.ssl, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConnectError(f"could not listen on {url.geturl()}: {exc.strerror or exc}") from exc
    bound = runner.addresses[0]
    shown = url.hostname or bound[0]
    return WsServer(runner, f"{url.scheme}://{_fmt_addr((shown, bound[1]))}{path}")


async def open_stream(url: SplitResult, options: Options) -> WsStream:
    session = aiohttp.ClientSession()
    target = url.geturl()
    try:
        ws = await asyncio.wait_for(
            session.ws_connect(
                target, max_msg_size=_max_msg(options), heartbeat=options.heartbeat, compress=0,
                ssl=options.ssl if options.ssl is not None else True, autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_close=options.close_timeout),
            ),
            options.connect_timeout,
        )  # fmt: skip
    except asyncio.TimeoutError:
        await session.close()
        raise ConnectError(f"connecting to {target} timed out after {options.connect_timeout} s") from None
    except (aiohttp.ClientError, OSError) as exc:
        await session.close()
        raise ConnectError(f"could not connect to {target}: {exc}") from exc
    stream = WsStream(options, ws, session)
    stream.scheme = url.scheme  # type: ignore[misc]
    stream.remote_address = f"{url.netloc}{url.path}"
    stream.local_address = _fmt_addr(ws.get_extra_info("sockname"))
    _loopback_bandwidth(stream, ws.get_extra_info("peername"))
    task = asyncio.get_running_loop().create_task(stream.read_loop())
    stream._reader_task = task  # type: ignore[attr-defined]
    return stream
