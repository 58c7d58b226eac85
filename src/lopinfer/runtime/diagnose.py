"""Addresses checked up front, and connect failures told apart.

A user who gets "unreachable" for a typo, a stopped server, a firewall and a DNS miss
alike cannot fix anything; each cause here has its own one-line message (and
``ConnectError.reason``), naming what to check.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from ..errors import (
    AuthError,
    ConnectError,
    InputError,
    LopInferError,
    ProtocolVersionError,
    remote_error,
)

__all__ = ["server_url", "check_url", "explain_connect_error", "hello_failed", "hello_refused",
           "DEFAULT_PORT"]

DEFAULT_PORT = 7700
_HOST = re.compile(r"^[A-Za-z0-9._%-]+$|^\[[0-9A-Fa-f:.%A-Za-z]+\]$")
_NEEDS_PORT = ("tcp", "ws", "wss", "tls")


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"{what} must be an integer 1-65535, not {value!r}")
    try:
        port = int(value)
    except ValueError:
        raise InputError(f"{what} must be an integer 1-65535, not {value!r}") from None
    if not 1 <= port <= 65535:
        raise InputError(f"{what} must be 1-65535, not {port}")
    return port


def server_url(ip: str, port: int | str | None, transport: str) -> str:
    """The URL for ``LOPInfer(ip=..., port=..., transport=...)``.

    ``ip`` may be a host ("192.168.50.1", "robot.lan", "::1", "[::1]"), a
    ``host:port`` ("192.168.50.1:7711", then ``port`` must be absent or the same), or
    a whole URL ("tcp://host:7711", "ws://host:7701/lopinfer"), which wins over
    ``transport``.

    Raises:
        InputError: an empty or malformed host, a bad port, ports that disagree, an
            unknown transport.
    """
    if not isinstance(ip, str) or not ip.strip():
        raise InputError(f"ip= must be a host name or address, not {ip!r}")
    ip = ip.strip()
    if "://" in ip:
        check_url(ip)
        given = urlsplit(ip).port
        if port is not None and given is not None and _port(port, "port=") != given:
            raise InputError(f"ip={ip!r} names port {given} but port={port!r}; give one")
        return ip
    if transport == "shm":
        return f"shm://{ip}"
    if transport not in ("tcp", "ws", "tls", "wss"):
        raise InputError(f"transport must be tcp, ws, tls, wss or shm, not {transport!r}")
    host, in_ip = ip, None
    if ip.startswith("["):  # [v6]:port or [v6]
        end = ip.find("]")
        rest = ip[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            raise InputError(f"ip={ip!r} is not a host: expected [v6 address] or [v6]:port")
        host, in_ip = ip[:end + 1], (rest[1:] if rest else None)
    elif ip.count(":") == 1:  # host:port
        host, in_ip = ip.split(":")
    elif ip.count(":") > 1:  # a bare IPv6 address
        host = f"[{ip}]"
    if not _HOST.match(host):
        raise InputError(f"ip={ip!r} is not a host name or address (expected e.g. "
                         "192.168.50.1, robot.lan, 192.168.50.1:7700 or tcp://host:7700)")
    if in_ip is not None:
        p = _port(in_ip, f"the port in ip={ip!r}")
        if port is not None and _port(port, "port=") != p:
            raise InputError(f"ip={ip!r} names port {p} but port={port!r}; give one")
    else:
        p = DEFAULT_PORT if port is None else _port(port, "port=")
    if transport in ("tcp", "tls"):
        return f"{transport}://{host}:{p}"
    return f"{transport}://{host}:{p}/lopinfer"


def check_url(url: str) -> None:
    """Refuse a server URL that cannot work, before anything is tried.

    Raises:
        InputError: not a str, an unknown scheme (the valid ones listed), no host or a
            bad port where the scheme needs them.
    """
    from ..transports import SCHEMES

    if not isinstance(url, str) or "://" not in url:
        raise InputError(f"bad server URL {url!r}: expected e.g. tcp://host:7700")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InputError(f"bad server URL {url!r}: the scheme must be one of "
                         + ", ".join(f"{s}://" for s in SCHEMES))
    if scheme in _NEEDS_PORT:
        try:
            port = parts.port
        except ValueError:
            raise InputError(f"bad server URL {url!r}: the port must be 1-65535") from None
        if not parts.hostname:
            raise InputError(f"bad server URL {url!r}: no host")
        if port is None and scheme == "tcp":
            raise InputError(f"bad server URL {url!r}: no port (e.g. tcp://host:{DEFAULT_PORT})")


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts (and aiohttp's ``os_error``)."""
    seen: list[BaseException] = []
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "os_error", None)]
    return seen


def _where(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or parts.netloc
    return f"{host}:{port}" if port else host


def explain_connect_error(url: str, exc: BaseException, timeout: float) -> ConnectError:
    """A :class:`ConnectError` whose message and ``reason`` name why connecting to
    ``url`` failed with ``exc``."""
    where = _where(url)
    host = urlsplit(url).hostname or where
    chain = _chain(exc)
    reason, message = "", f"could not connect to {url}: {exc}"
    for e in chain:
        if isinstance(e, ssl.SSLError):
            why = getattr(e, "verify_message", None) or getattr(e, "reason", None) or e
            reason = "tls"
            message = (f"TLS handshake with {where} failed: {why} (check the server's "
                       "--cert/--key and the client's ca=)")
            break
        if isinstance(e, socket.gaierror):
            reason = "dns"
            message = (f"cannot resolve host {host!r}: DNS lookup failed ({e.strerror or e}); "
                       "check the name or use an IP address")
            break
        if isinstance(e, ConnectionRefusedError):
            reason = "refused"
            message = (f"connection refused by {where}: nothing listens there (is `lopinfer "
                       f"serve --listen {urlsplit(url).scheme}://0.0.0.0:{urlsplit(url).port}` "
                       "running, and the port right?)")
            break
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            reason = "unreachable"
            message = (f"{where} is unreachable: {e.strerror or e} (check the address and "
                       "the network route)")
            break
        if isinstance(e, TimeoutError):
            reason = "timeout"
            message = (f"no answer from {where} within {timeout:g} s: the host is down or "
                       "unreachable, or a firewall drops the connection (check the address "
                       "and that the port is open)")
            break
    err = ConnectError(message)
    err.reason = reason
    return err


def hello_failed(url: str, exc: BaseException, timeout: float) -> ConnectError:
    """The connection was made but no LOPInfer session came of it: no answer to hello
    in time, the peer hung up, or it sent something that is not the protocol (another
    service on that port, or another transport: ws:// on a tcp:// port)."""
    from ..errors import ProtocolError, TransportTimeoutError

    if isinstance(exc, TransportTimeoutError):
        what = f"did not answer hello within {timeout:g} s"
    elif isinstance(exc, ProtocolError):
        what = f"answered hello with something else ({exc})"
    else:
        what = f"ended the connection at hello ({exc})"
    err = ConnectError(f"{_where(url)} accepted the connection but {what}: is it a "
                       f"LOPInfer server, listening for {urlsplit(url).scheme}:// on that port?")
    err.reason = "no_hello"
    return err


def hello_refused(url: str, code: str, message: str) -> LopInferError:
    """The error for a server that answered the hello with ``Error(code, message)``:
    the class the code names, with what to do about it."""
    exc = remote_error(code, message)
    if isinstance(exc, AuthError):
        return AuthError(f"server {url} refused the token ({message}): check token= "
                         "against the server's --token-file")
    if isinstance(exc, ProtocolVersionError):
        return ProtocolVersionError(f"server {url} speaks another protocol version "
                                    f"({message}): install the same lopinfer version on "
                                    "the client and the server")
    return type(exc)(f"server {url} refused the session: {code}: {message}")
