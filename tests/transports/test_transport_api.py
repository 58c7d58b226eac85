"""The public surface: URL registry, options, missing extras, listeners, messages, LZ4 policy."""

from __future__ import annotations

import asyncio
import builtins
import importlib
import sys

import msgspec
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lopinfer.transports as T
from lopinfer.errors import (
    ConnectError,
    ConnectionClosedError,
    InputError,
    MissingDependencyError,
    ProtocolError,
)
from lopinfer.runtime.protocol import PROTOCOL_VERSION, Deploy, Hello  # the application's messages
from lopinfer.transports import (
    AdaptiveCompressor,
    Bye,
    Connection,
    Message,
    connect,
    decode_message,
    encode_message,
    listen,
    register_message,
)
from lopinfer.transports._compress import HAVE_LZ4, _decompress_py, decompress_block


# -- registry and options -------------------------------------------------------------------
@pytest.mark.parametrize("url", ["udp://x:1", "http://x/", "tcp:/x", "nothing", "quic://h:1"])
def test_unknown_scheme_lists_the_valid_ones(url: str) -> None:
    with pytest.raises(InputError) as info:
        asyncio.run(connect(url))
    for scheme in ("tcp://", "ws://", "wss://", "shm://", "mem://"):
        assert scheme in str(info.value)


def test_bad_urls_and_options_are_input_errors() -> None:
    async def main() -> None:
        with pytest.raises(InputError, match="needs a port"):
            await connect("tcp://127.0.0.1")
        with pytest.raises(InputError, match="valid:"):
            await connect("mem://x", no_such_option=1)
        with pytest.raises(InputError, match="compression"):
            await connect("mem://x", compression="zstd")
        with pytest.raises(InputError, match="low_water"):
            await listen("mem://", lambda c: None, send_high_water=1, send_low_water=2)
        with pytest.raises(InputError, match="bad shm URL"):
            await connect("shm://a/b c")

    asyncio.run(main())


@pytest.mark.parametrize("module, package, extra, url", [
    ("aiohttp", "aiohttp", "ws", "ws://127.0.0.1:1/x"),
])  # fmt: skip
def test_missing_optional_package_names_its_extra(monkeypatch, module, package, extra, url) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == module or name.startswith(module + "."):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == module or m.startswith(module + ".") or m == "lopinfer.transports._ws"]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MissingDependencyError) as info:
        asyncio.run(connect(url))
    assert info.value.package == package and info.value.extra == extra
    assert f"lopinfer[{extra}]" in str(info.value)


def test_missing_uvloop_and_lz4_name_their_extras(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(MissingDependencyError, match=r"lopinfer\[uvloop\]"):
        T.event_loop_factory("uvloop")
    assert T.event_loop_factory("auto") is asyncio.new_event_loop
    from lopinfer.transports import _compress

    monkeypatch.setattr(_compress, "_lz4", None)
    monkeypatch.setattr(_compress, "HAVE_LZ4", False)
    with pytest.raises(MissingDependencyError, match=r"lopinfer\[lz4\]"):
        AdaptiveCompressor("always")
    assert AdaptiveCompressor("auto").mode == "off"  # auto quietly sends raw


def test_event_loop_factory() -> None:
    assert T.event_loop_factory("asyncio") is asyncio.new_event_loop
    with pytest.raises(InputError):
        T.event_loop_factory("trio")
    assert T.run(asyncio.sleep(0, result=5), loop="asyncio") == 5


def test_public_api_is_flat() -> None:
    for name in T.__all__:
        assert getattr(T, name) is not None
    assert set(T.SCHEMES) == {"tcp", "tls", "ws", "wss", "shm", "mem"}
    assert importlib.import_module("lopinfer.transports").connect is connect


# -- listeners --------------------------------------------------------------------------------
def test_failing_handler_does_not_stop_the_listener(scheme: str, listen_url: str, arun) -> None:
    async def main() -> None:
        calls = 0

        async def flaky(conn: Connection) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("handler bug")
            await conn.send_message(Bye(reason="ok"))

        async with await listen(listen_url, flaky) as lst:
            async with await connect(lst.url) as c1:
                with pytest.raises(ConnectionClosedError):
                    await c1.recv()
            async with await connect(lst.url) as c2:
                assert await c2.recv() == Bye(reason="ok")
            for _ in range(100):
                if lst.statistics().handler_errors == 1:
                    break
                await asyncio.sleep(0.01)
            assert lst.statistics().handler_errors == 1 and lst.statistics().accepted == 2

    arun(main)


def test_max_connections_and_shutdown(arun) -> None:
    async def main() -> None:
        hold = asyncio.Event()

        async def waiter(conn: Connection) -> None:
            await hold.wait()

        lst = await listen("tcp://127.0.0.1:0", waiter, max_connections=1, shutdown_timeout=0.2)
        c1 = await connect(lst.url)
        for _ in range(100):
            if lst.statistics().active == 1:
                break
            await asyncio.sleep(0.01)
        c2 = await connect(lst.url)
        with pytest.raises(ConnectionClosedError):
            await c2.recv(timeout=5)
        assert lst.statistics().refused == 1 and len(lst.connections) == 1
        await lst.aclose()  # the handler never returns: closed and cancelled after the grace time
        assert "closed" in repr(lst) and lst.statistics().active == 0
        with pytest.raises(ConnectionClosedError):
            await c1.recv(timeout=5)
        await c1.aclose()
        await c2.aclose()

    arun(main)


def test_mem_names_are_unique_and_loop_bound() -> None:
    async def main() -> None:
        async with await listen("mem://same", lambda c: asyncio.sleep(0)):
            with pytest.raises(ConnectError):
                await listen("mem://same", lambda c: asyncio.sleep(0))

    asyncio.run(main())


# -- control messages -------------------------------------------------------------------------
def test_message_registry_is_extensible() -> None:
    class Infer(Message, tag="test-infer"):
        inference_id: int
        shapes: list[list[int]] = []

    with pytest.raises(ProtocolError):
        decode_message(msgspec.msgpack.encode({"type": "test-infer", "inference_id": 1}))
    with pytest.raises(InputError):
        encode_message(Infer(inference_id=1))
    register_message(Infer)
    msg = Infer(inference_id=3, shapes=[[1, 3]])
    assert decode_message(encode_message(msg)) == msg
    assert Infer in T.message_types()
    with pytest.raises(InputError, match="already used"):

        class Other(Message, tag="test-infer"):
            x: int = 0

        register_message(Other)
    with pytest.raises(InputError):
        register_message(int)  # type: ignore[arg-type]


def test_messages_ignore_unknown_fields_and_check_types() -> None:
    data = msgspec.msgpack.encode({"type": "hello", "protocol_version": PROTOCOL_VERSION, "future_field": [1, 2]})
    assert decode_message(data) == Hello()
    with pytest.raises(ProtocolError, match="protocol_version"):
        decode_message(msgspec.msgpack.encode({"type": "hello", "protocol_version": "1"}))
    with pytest.raises(ProtocolError):
        decode_message(msgspec.msgpack.encode({"type": "welcome"}))  # session_id missing


def test_deploy_round_trips() -> None:
    msg = Deploy(graph_json="{}", content_hash="abc", weights_parts=3, weights_size=1 << 40)
    assert decode_message(encode_message(msg)) == msg


# -- LZ4 policy -------------------------------------------------------------------------------
needs_lz4 = pytest.mark.skipif(not HAVE_LZ4, reason="lz4 not installed (extra 'lz4')")


def post_relu() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.interpolate(torch.randn(1, 8, 16, 16, generator=g), size=(128, 128), mode="bilinear")
    return torch.relu(x)


@needs_lz4
def test_adaptive_compression_follows_the_bandwidth() -> None:
    data = memoryview(post_relu().numpy()).cast("B")
    n = len(data)
    c = AdaptiveCompressor("auto")
    assert not c.should_try(n, "k", float("inf"))  # loopback, shm: never
    assert not c.should_try(n, "k", 100e9)  # faster than LZ4 itself
    assert not c.should_try(100, "k", 1e6)  # tiny frames: never
    assert c.should_try(n, "k", 11e6)  # WiFi: yes
    out = c.compress(data, "k")
    assert out is not None and len(out) < n / 1.5 and c.compressed == 1


@needs_lz4
def test_random_data_is_never_sent_compressed() -> None:
    c = AdaptiveCompressor("auto")
    noise = memoryview(torch.randint(0, 256, (1 << 20,), dtype=torch.uint8).numpy())
    tried = 0
    for _ in range(40):
        if c.should_try(len(noise), "noise", 1e6):
            tried += 1
            assert c.compress(noise, "noise") is None
    assert c.compressed == 0
    assert 1 <= tried <= 5  # learnt quickly, re-probed only now and then


@needs_lz4
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 3))
def test_fallback_decoder_matches_lz4(data: bytes, repeat: int) -> None:
    import lz4.block

    data = data * (repeat + 1)
    block = lz4.block.compress(data, store_size=False)
    assert bytes(_decompress_py(block, len(data))) == data
    assert bytes(decompress_block(block, len(data))) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 5000))
def test_corrupt_lz4_blocks_only_raise_protocol_error(block: bytes, n: int) -> None:
    for decode in (_decompress_py, decompress_block):
        try:
            out = decode(block, n)
        except ProtocolError:
            continue
        assert len(out) == n


def test_lz4_blocks_decode_without_the_lz4_package() -> None:
    """A receiver without lz4 still reads compressed frames (pure-Python fallback)."""
    data = b"tile " * 40 + bytes(300) + b"relu" * 30
    block = bytes.fromhex("5f74696c65200500b01f000100ff194f72656c7504005c507572656c75")  # lz4.block.compress
    assert bytes(_decompress_py(block, len(data))) == data
    assert bytes(decompress_block(block, len(data))) == data
    with pytest.raises(ProtocolError):
        _decompress_py(block, len(data) + 1)
