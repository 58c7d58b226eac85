"""``tcp://host:port``: frames over a TCP connection (TCP_NODELAY, keepalive)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import SplitResult

from ..errors import ConnectError, InputError
from ._base import Server, StreamHandler
from ._options import Options
from ._sockstream import SocketStream, _fmt_addr


class TcpStream(SocketStream):
    scheme = "tcp"

    def __init__(self, options: Options, on_made: StreamHandler | None = None) -> None:
        super().__init__(options)
        self._on_made = on_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _tune(sock, self.options.keepalive)
            try:
                if ipaddress.ip_address(sock.getpeername()[0]).is_loopback:
                    self.default_bandwidth = float("inf")  # LZ4 never pays off on loopback
            except (OSError, ValueError):
                pass
        if self._on_made is not None:
            self._on_made(self)


def _tune(sock: socket.socket, keepalive: float | None) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            idle = max(1, int(keepalive))
            for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", max(1, idle // 3)), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, name):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:  # pragma: no cover - exotic platforms
        pass


def _host_port(url: SplitResult, *, listening: bool) -> tuple[str, int]:
    try:
        port = url.port
    except ValueError as exc:
        raise InputError(f"bad port in {url.geturl()!r}: {exc}") from None
    host = url.hostname or ("127.0.0.1" if not listening else "")
    if port is None:
        raise InputError(f"{url.geturl()!r} needs a port (tcp://host:port, 0 picks a free one)")
    return host, port


async def open_stream(url: SplitResult, options: Options) -> TcpStream:
    host, port = _host_port(url, listening=False)
    loop = asyncio.get_running_loop()
    try:
        _, stream = await asyncio.wait_for(
            loop.create_connection(lambda: TcpStream(options), host, port),
            options.connect_timeout,
        )
    except asyncio.TimeoutError:
        raise ConnectError(f"connecting to tcp://{host}:{port} timed out after {options.connect_timeout} s") from None
    except OSError as exc:
        raise ConnectError(f"could not connect to tcp://{host}:{port}: {exc.strerror or exc}") from exc
    return stream


class TcpServer(Server):
    def __init__(self, server: asyncio.Server, host: str) -> None:
        self._server = server
        addr = server.sockets[0].getsockname()
        self.url = f"tcp://{_fmt_addr((host or addr[0], addr[1]))}"

    async def aclose(self) -> None:
        self._server.close()
        await self._server.wait_closed()


async def start_server(url: SplitResult, on_stream: StreamHandler, options: Options) -> TcpServer:
    host, port = _host_port(url, listening=True)
    loop = asyncio.get_running_loop()

    def factory() -> TcpStream:
        return TcpStream(options, on_made=on_stream)

    try:
        server = await loop.create_server(factory, host or None, port, reuse_address=True, backlog=128)
    except OSError as exc:
        raise ConnectError(f"could not listen on tcp://{host}:{port}: {exc.strerror or exc}") from exc
    return TcpServer(server, host)
