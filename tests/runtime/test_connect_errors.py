"""Each way connecting can fail has its own one-line message: refused, timeout, DNS,
TLS, unreachable, no LOPInfer server at hello, wrong token, protocol version, missing
extra. The façade warns once and runs locally; ``strict=True`` raises."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import sys
import warnings

import pytest
import torch
from torch import nn

import lopinfer.runtime.server as server_mod
from lopinfer.errors import (
    AuthError,
    ConnectError,
    InputError,
    MissingDependencyError,
    ProtocolVersionError,
)
from lopinfer.runtime import LOPInfer, Server, connect
from lopinfer.runtime.diagnose import explain_connect_error, server_url
from lopinfer.runtime.protocol import PROTOCOL_VERSION


def tiny() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2)).eval()
    return model, torch.randn(1, 3, 12, 12)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


async def strict_error(url: str, **kw) -> BaseException:
    client = connect(url, strict=True, timeout=kw.pop("timeout", 2.0), **kw)
    try:
        with pytest.raises(lopinfer_errors()) as info:
            await client.__aenter__()
        return info.value
    finally:
        await client.aclose()


def lopinfer_errors():
    from lopinfer.errors import LopInferError

    return LopInferError


# -- at connect, each cause its own message ------------------------------------------------
def test_refused_names_the_port_and_the_command():
    port = free_port()
    err = asyncio.run(strict_error(f"tcp://127.0.0.1:{port}"))
    assert isinstance(err, ConnectError) and err.reason == "refused"
    assert one_line(err).startswith(f"connection refused by 127.0.0.1:{port}: nothing listens")
    assert "lopinfer serve --listen tcp://0.0.0.0:" in str(err)


def test_dns_failure_names_the_host():
    err = asyncio.run(strict_error("tcp://no-such-host.invalid:7700"))
    assert isinstance(err, ConnectError) and err.reason == "dns"
    assert one_line(err).startswith("cannot resolve host 'no-such-host.invalid': DNS lookup")


def test_timeout_says_unreachable_or_filtered():
    # a listening socket whose backlog is full drops further SYNs: connect times out
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(s)
        err = asyncio.run(strict_error(f"tcp://127.0.0.1:{port}", timeout=0.5))
    finally:
        for s in fillers:
            s.close()
        lst.close()
    assert isinstance(err, ConnectError)
    if err.reason == "no_hello":  # this kernel accepted anyway: covered by the unit test below
        pytest.skip("the kernel completed the handshake despite a full backlog")
    assert err.reason == "timeout"
    assert one_line(err).startswith(f"no answer from 127.0.0.1:{port} within 0.5 s")


@pytest.mark.parametrize(("cause", "reason", "start"), [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "refused",
     "connection refused by h:1:"),
    (socket.gaierror(-2, "Name or service not known"), "dns", "cannot resolve host 'h'"),
    (TimeoutError(), "timeout", "no answer from h:1 within 3 s"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "unreachable", "h:1 is unreachable"),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), "tls",
     "TLS handshake with h:1 failed"),
])
def test_causes_map_to_reasons(cause, reason, start):
    try:
        try:
            raise cause
        except BaseException as inner:
            raise ConnectError("could not connect") from inner
    except ConnectError as exc:
        err = explain_connect_error("tcp://h:1", exc, 3.0)
    assert err.reason == reason and one_line(err).startswith(start)


def test_something_else_on_the_port_is_not_a_lopinfer_server():
    async def main():
        done = asyncio.Event()
        handlers = []

        async def silent(reader, writer):
            handlers.append(asyncio.current_task())
            await done.wait()
            writer.close()
            await writer.wait_closed()

        srv = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            err = await strict_error(f"tcp://127.0.0.1:{port}", timeout=0.5)
        finally:
            done.set()
            await asyncio.gather(*handlers, return_exceptions=True)
            srv.close()
            await srv.wait_closed()
        assert isinstance(err, ConnectError) and err.reason == "no_hello"
        assert "did not answer hello within 0.5 s: is it a LOPInfer server" in one_line(err)

    asyncio.run(main())


def test_wrong_token_and_version_mismatch(monkeypatch):
    async def main():
        async with Server(token="s3cret") as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            err = await strict_error(url, token="wrong")
            assert isinstance(err, AuthError)
            assert one_line(err) == (f"server {url} refused the token (invalid token): check "
                                     "token= against the server's --token-file")
            assert server.acct.rejected_tokens == 1
            monkeypatch.setattr(server_mod, "PROTOCOL_VERSION", 99)
            err = await strict_error(url, token="s3cret")
            assert isinstance(err, ProtocolVersionError)
            assert f"client protocol version {PROTOCOL_VERSION}, server 99" in one_line(err)
            assert "install the same lopinfer version" in str(err)

    asyncio.run(main())


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp -> ImportError
    monkeypatch.delitem(sys.modules, "lopinfer.transports._ws", raising=False)
    err = asyncio.run(strict_error("ws://127.0.0.1:1/lopinfer"))
    assert isinstance(err, MissingDependencyError)
    assert one_line(err) == ("the optional package 'aiohttp' is needed for ws:// transports: "
                             "pip install 'lopinfer[ws]'")


# -- the façade: validated up front, warned once, strict raises -----------------------------
@pytest.mark.parametrize(("kwargs", "url"), [
    ({"ip": "10.0.0.5"}, "tcp://10.0.0.5:7700"),
    ({"ip": "10.0.0.5:7711"}, "tcp://10.0.0.5:7711"),
    ({"ip": "10.0.0.5", "port": "7711"}, "tcp://10.0.0.5:7711"),
    ({"ip": "10.0.0.5:7711", "port": 7711}, "tcp://10.0.0.5:7711"),
    ({"ip": "tcp://10.0.0.5:7711"}, "tcp://10.0.0.5:7711"),
    ({"ip": "ws://robot.lan:7701/lopinfer"}, "ws://robot.lan:7701/lopinfer"),
    ({"ip": "::1"}, "tcp://[::1]:7700"),
    ({"ip": "[::1]:7711"}, "tcp://[::1]:7711"),
    ({"ip": "robot.lan", "transport": "ws"}, "ws://robot.lan:7700/lopinfer"),
])
def test_ip_and_port_understood(kwargs, url):
    assert server_url(kwargs["ip"], kwargs.get("port"), kwargs.get("transport", "tcp")) == url


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ip": "10.0.0.5:7711", "port": 7700}, "names port 7711 but port=7700; give one"),
    ({"ip": "10.0.0.5", "port": 70000}, "port= must be 1-65535, not 70000"),
    ({"ip": "10.0.0.5", "port": "http"}, "port= must be an integer 1-65535, not 'http'"),
    ({"ip": "10.0.0.5:x"}, "the port in ip='10.0.0.5:x' must be an integer"),
    ({"ip": ""}, "ip= must be a host name or address"),
    ({"ip": "10.0.0.5/24"}, "is not a host name or address"),
    ({"ip": "10.0.0.5", "transport": "udp"}, "transport must be tcp, ws, tls, wss or shm, not 'udp'"),
    ({"url": "tpc://10.0.0.5:7700"}, "the scheme must be one of"),
    ({"url": "tcp://10.0.0.5"}, "no port (e.g. tcp://host:7700)"),
])
def test_bad_addresses_refused_at_once(kwargs, message):
    with pytest.raises(InputError, match=None) as info:
        LOPInfer(**kwargs)
    assert message in one_line(info.value)


def test_facade_warns_once_with_the_cause_and_runs_locally():
    model, x = tiny()
    with torch.no_grad():
        ref = model(x)
    port = free_port()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lop = LOPInfer(ip=f"127.0.0.1:{port}", timeout=2)
        lop.start_client(model=model, example=x)
        for _ in range(3):
            torch.testing.assert_close(model(x), ref)
        lop.close()
    mine = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert mine == [f"connection refused by 127.0.0.1:{port}: nothing listens there (is "
                    f"`lopinfer serve --listen tcp://0.0.0.0:{port}` running, and the port "
                    "right?); running locally until the server is reachable"]
    assert not any("LeafSpec" in str(w.message) for w in caught)  # torch's, hidden
    assert lop.last_report.fell_back


def test_facade_strict_raises():
    model, x = tiny()
    lop = LOPInfer(ip=f"127.0.0.1:{free_port()}", strict=True, timeout=2)
    try:
        with pytest.raises(ConnectError, match="connection refused by"):
            lop.start_client(model=model, example=x)
    finally:
        lop.close()


def test_strict_raises_instead_of_falling_back_mid_session():
    from lopinfer.errors import TransportError
    from lopinfer.graph import capture
    from lopinfer.scheduler import offload_plan

    model, x = tiny()
    graph = capture(model, (x,))

    async def main():
        server = Server()
        (url,) = await server.start("tcp://127.0.0.1:0")
        async with connect(url, strict=True, timeout=2, peer_timeout=5) as client:
            session = await client.deploy(graph, None, plan=offload_plan(graph, 2))
            await session.infer(x)
            assert not session.last_report.fell_back
            await server.aclose(timeout=0.5)
            for _ in range(100):  # the client notices the closed connection
                if not client.connected:
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(TransportError) as info:  # ConnectError is one
                await session.infer(x)
            assert "refused" in one_line(info.value) or "strict" in str(info.value)

    asyncio.run(main())
