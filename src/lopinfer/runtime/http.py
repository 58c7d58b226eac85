"""``lopinfer serve --http HOST:PORT``: health, readiness and metrics over plain HTTP.

A listener of its own, apart from the session transports, so a tcp-only server can be
probed by Kubernetes and scraped by Prometheus with no extra installed. It speaks just
enough HTTP/1.1 for that: ``GET`` (and ``HEAD``) of ``/healthz``, ``/readyz`` and
``/metrics``, one request per connection, the request head bounded in bytes and
seconds (it is reachable by anyone who can reach the port).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from ..errors import ConnectError, InputError
from ..log import logger
from .metrics import health, metrics_text, ready

if TYPE_CHECKING:
    from .server import Server

__all__ = ["HttpEndpoint", "parse_hostport"]

log = logger("server")

MAX_HEAD = 8 << 10  # bytes of request line + headers
HEAD_TIMEOUT = 5.0  # seconds to send them


def parse_hostport(text: str) -> tuple[str, int]:
    """``"0.0.0.0:9090"``, ``":9090"``, ``"[::]:9090"`` -> (host, port).

    Raises:
        InputError: no port, or not a number in 0-65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"--http {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9090")
    return host.strip("[]") or "0.0.0.0", int(port)


class HttpEndpoint:
    """Serves ``/healthz``, ``/readyz`` and ``/metrics`` of ``server``.

    Use ``await HttpEndpoint(server).start("0.0.0.0:9090")``, then ``aclose()``.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._srv: asyncio.Server | None = None
        self.url = ""

    async def start(self, hostport: str) -> str:
        """Bind and serve; returns ``http://host:port`` (port 0 resolved).

        Raises:
            InputError: a malformed HOST:PORT.
            ConnectError: the address cannot be bound.
        """
        host, port = parse_hostport(hostport)
        try:
            self._srv = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        except OSError as exc:
            raise ConnectError(f"could not listen on http://{hostport}: "
                               f"{exc.strerror or exc}") from exc
        bound = self._srv.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}"
        return self.url

    async def aclose(self) -> None:
        if self._srv is not None:
            self._srv.close()
            await self._srv.wait_closed()

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request."""
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/healthz":
            return 200, "application/json", json.dumps(health(self.server)).encode()
        if path == "/readyz":
            ok = ready(self.server)
            return (200, "text/plain", b"ready\n") if ok else (503, "text/plain", b"not ready\n")
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", metrics_text(self.server)
        return 404, "text/plain", b"not found: /healthz, /readyz, /metrics\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, ctype, body = 400, "text/plain", b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, ctype, body = self.respond(method, parts[1])
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                      503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            if method != "HEAD":
                writer.write(body)
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass  # a client that does not finish its request gets nothing
        finally:
            writer.close()

    def __repr__(self) -> str:
        return f"<HttpEndpoint {self.url or 'not started'}>"
