"""``tls://host:port``: frames over TCP inside TLS (``ssl`` option: an ``SSLContext``).

A client without a context gets the system's default one (certificates verified,
the host name checked); ``ca=`` in :func:`lopinfer.connect` trusts a private CA or
a self-signed server certificate. A listener needs a server context (the
certificate and its key: ``lopinfer serve --cert F --key F``).
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import SplitResult

from ..errors import ConnectError, InputError
from ._base import StreamHandler
from ._options import Options
from ._tcp import TcpServer, TcpStream, _host_port


class TlsStream(TcpStream):
    scheme = "tls"


def client_context(ca: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server (against ``ca`` when given)."""
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot read the CA file {ca!r}: {exc}") from exc


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context with ``cert`` (PEM chain) and its private ``key``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot load the certificate {cert!r} with key {key!r}: {exc}") from exc
    return ctx


async def open_stream(url: SplitResult, options: Options) -> TlsStream:
    host, port = _host_port(url, listening=False)
    ctx = options.ssl or client_context()
    loop = asyncio.get_running_loop()
    try:
        _, stream = await asyncio.wait_for(
            loop.create_connection(lambda: TlsStream(options), host, port, ssl=ctx,
                                   server_hostname=host,
                                   ssl_handshake_timeout=options.connect_timeout),
            options.connect_timeout,
        )
    except asyncio.TimeoutError:
        raise ConnectError(f"connecting to tls://{host}:{port} timed out after "
                           f"{options.connect_timeout} s (is it a TLS server?)") from None
    except ssl.SSLError as exc:
        raise ConnectError(f"TLS handshake with tls://{host}:{port} failed: "
                           f"{exc.reason or exc} (is it a TLS server, with a certificate "
                           f"this client trusts? ca= names a private CA)") from exc
    except OSError as exc:
        raise ConnectError(f"could not connect to tls://{host}:{port}: {exc.strerror or exc}") from exc
    return stream


class TlsServer(TcpServer):
    def __init__(self, server: asyncio.Server, host: str) -> None:
        super().__init__(server, host)
        self.url = "tls://" + self.url.removeprefix("tcp://")


async def start_server(url: SplitResult, on_stream: StreamHandler, options: Options) -> TlsServer:
    host, port = _host_port(url, listening=True)
    if options.ssl is None:
        raise InputError("a tls:// listener needs a certificate: ssl=server_context(cert, key) "
                         "(lopinfer serve --cert F --key F)")
    loop = asyncio.get_running_loop()

    def factory() -> TlsStream:
        return TlsStream(options, on_made=on_stream)

    try:
        server = await loop.create_server(factory, host or None, port, reuse_address=True,
                                          backlog=128, ssl=options.ssl,
                                          ssl_handshake_timeout=options.connect_timeout)
    except OSError as exc:
        raise ConnectError(f"could not listen on tls://{host}:{port}: {exc.strerror or exc}") from exc
    return TlsServer(server, host)
