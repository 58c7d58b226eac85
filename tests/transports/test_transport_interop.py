"""Third-party peers: a plain WebSocket client and a raw TCP socket get well-formed errors."""

from __future__ import annotations

import asyncio
import socket
import struct

import msgspec
import pytest

from lopinfer.errors import ProtocolError
from lopinfer.runtime.protocol import Hello, Welcome  # the application's messages
from lopinfer.transports import (
    Connection,
    Error,
    decode_frame,
    encode_frame,
    listen,
)
from lopinfer.transports._frame import CONTROL_META, MAGIC, PREAMBLE, TYPE_CONTROL, VERSION


def bad_hello() -> bytes:
    """A well-framed control message whose Hello does not match the schema."""
    body = msgspec.msgpack.encode({"type": "hello", "protocol_version": "one", "token": 7})
    return PREAMBLE.pack(MAGIC, VERSION, TYPE_CONTROL, 0, CONTROL_META.size, len(body)) + CONTROL_META.pack(len(body), 0) + body


GARBAGE = b"GET /lopinfer HTTP/1.1\r\nHost: example\r\n\r\n"


async def greeter(conn: Connection) -> None:
    hello = await conn.recv()  # raises ProtocolError for bad input; the listener logs it
    assert isinstance(hello, Hello)
    await conn.send_message(Welcome(session_id=1, server_name="test"))


def test_raw_tcp_client_gets_a_protocol_error(arun) -> None:
    def client(port: int, payload: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(payload)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    async def main() -> None:
        async with await listen("tcp://127.0.0.1:0", greeter) as lst:
            port = int(lst.url.rsplit(":", 1)[1])
            for payload in (GARBAGE, bad_hello(), b"\0" * 64):
                reply = await asyncio.to_thread(client, port, payload)
                err = decode_frame(reply)  # exactly one well-formed frame, then EOF
                assert isinstance(err, Error) and err.code == "protocol_error", err
                assert err.message and "\n" not in err.message
            good = await asyncio.to_thread(client_ok, port)
            assert isinstance(good, Welcome)

    def client_ok(port: int) -> object:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(encode_frame(Hello(token="t")))
            data = b""
            while True:
                data += s.recv(65536)
                try:
                    return decode_frame(data)
                except ProtocolError:
                    continue

    arun(main)


def test_websockets_client_gets_a_protocol_error(arun) -> None:
    pytest.importorskip("aiohttp", reason="ws:// needs aiohttp (extra 'ws')")
    websockets = pytest.importorskip("websockets", reason="the interop test uses the websockets package")
    from websockets.asyncio.client import connect as ws_connect

    async def main() -> None:
        async with await listen("ws://127.0.0.1:0/lopinfer", greeter) as lst:
            for payload in (GARBAGE, bad_hello(), "a text message"):
                async with ws_connect(lst.url) as ws:
                    await ws.send(payload)
                    reply = await asyncio.wait_for(ws.recv(), 10)
                    err = decode_frame(reply)
                    assert isinstance(err, Error) and err.code == "protocol_error", err
                    with pytest.raises(websockets.ConnectionClosed) as info:
                        await asyncio.wait_for(ws.recv(), 10)
                    assert info.value.rcvd is not None and info.value.rcvd.code == 1002
            async with ws_connect(lst.url) as ws:  # the endpoint still serves
                await ws.send(encode_frame(Hello(token="t")))
                assert isinstance(decode_frame(await asyncio.wait_for(ws.recv(), 10)), Welcome)
            assert lst.statistics().protocol_errors == 3

    arun(main)


def test_plain_http_on_the_ws_endpoint_is_refused(arun) -> None:
    pytest.importorskip("aiohttp", reason="ws:// needs aiohttp (extra 'ws')")

    def get(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /lopinfer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(65536)

    async def main() -> None:
        async with await listen("ws://127.0.0.1:0/lopinfer", greeter) as lst:
            port = int(lst.url.rsplit(":", 1)[1].split("/")[0])
            reply = await asyncio.to_thread(get, port)
            assert reply.startswith(b"HTTP/1.1 426")

    arun(main)


def test_header_struct_is_documented_size() -> None:
    assert PREAMBLE.size == 20 and struct.calcsize("<Qq") == CONTROL_META.size


def test_wss_with_a_self_signed_certificate(tmp_path, arun) -> None:
    pytest.importorskip("aiohttp", reason="wss:// needs aiohttp (extra 'ws')")
    import shutil
    import ssl
    import subprocess

    import torch

    from lopinfer.transports import Frame, connect

    if shutil.which("openssl") is None:
        pytest.skip("openssl not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def echo(conn: Connection) -> None:
        async for item in conn:
            await conn.send_tensor(item)

    async def main() -> None:
        async with await listen("wss://127.0.0.1:0/secure", echo, ssl=server_ctx) as lst:
            assert lst.url.startswith("wss://")
            async with await connect(lst.url, ssl=client_ctx) as c:
                x = torch.randn(3, 4).to(memory_format=torch.contiguous_format)
                await c.send_tensor(Frame(tensor=x))
                assert torch.equal((await c.recv()).tensor, x)

    arun(main)
