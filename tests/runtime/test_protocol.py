"""The protocol in one layer: the error-code table both ways, the application's
messages registered from the runtime, and a refusal raised on the client as its class."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import lopinfer.errors as E
from lopinfer import transports as T
from lopinfer.runtime import Server, connect
from lopinfer.runtime.protocol import PROTOCOL_VERSION, Deploy, Deployed, Hello, UsePlan, Welcome
from lopinfer.transports import Error, decode_message, encode_message


@pytest.mark.parametrize("code", sorted(E.REMOTE_CODES))
def test_every_code_maps_to_a_class_and_back(code):
    cls = E.REMOTE_CODES[code]
    assert issubclass(cls, E.LopInferError)
    assert E.error_code(cls) == code and E.error_code(cls("x")) == code
    exc = E.remote_error(code, "why")
    assert type(exc) is cls and str(exc) == "why"
    # and over the wire, as the server sends it and the client reads it
    wire = decode_message(encode_message(Error(code=E.error_code(cls("why")), message="why")))
    assert type(E.remote_error(wire.code, wire.message)) is cls


def test_the_table_is_one_to_one():
    classes = list(E.REMOTE_CODES.values())
    assert len(set(classes)) == len(classes)
    assert all(name in E.__all__ for name in (c.__name__ for c in classes))


def test_codes_of_classes_outside_the_table():
    class Narrower(E.PlanError):
        pass

    assert E.error_code(Narrower("x")) == "plan"  # a subclass sends its parent's code
    assert E.error_code(E.MissingDependencyError("lz4", "lz4")) == "remote"
    assert E.error_code(ValueError("x")) == "remote"
    exc = E.remote_error("from_a_newer_peer", "something")
    assert type(exc) is E.RemoteError and "from_a_newer_peer" in str(exc)


def test_transports_keep_only_what_moves_frames():
    for name in ("Hello", "Welcome", "Deploy", "Deployed", "PlanMsg", "PROTOCOL_VERSION"):
        assert not hasattr(T, name), name
    tags = {m.__struct_config__.tag for m in T.message_types()}
    assert {"error", "bye", "hello", "welcome", "deploy", "deployed"} <= tags
    assert "plan" not in tags  # PlanMsg is gone
    assert Hello().protocol_version == PROTOCOL_VERSION
    for msg in (Hello(token="t"), Welcome(session_id=1), Deploy(graph_json="", content_hash="h"),
                Deployed(content_hash="h")):
        assert decode_message(encode_message(msg)) == msg


def test_a_refusal_is_raised_as_its_class():
    """The server refuses a plan before any deploy (PlanError) and a hash it does not
    have (UnknownDeploymentError): the client raises those classes, nothing parsed."""

    async def main():
        async with Server() as server:
            (url,) = await server.start("mem://test-protocol")
            async with connect(url) as client:
                with pytest.raises(E.PlanError, match="no graph deployed"):
                    await client.request(UsePlan(plan_id=1, plan_json="{}"), object)
                with pytest.raises(E.UnknownDeploymentError, match="0" * 64):
                    await client.request(Deploy(graph_json="", content_hash="0" * 64), Deployed)
                assert client.connected  # a refused request does not end the session

    asyncio.run(asyncio.wait_for(main(), 30))


def test_done_spans_pack_to_twelve_bytes_each_and_back():
    import math

    from lopinfer.runtime.protocol import Done
    from lopinfer.runtime.report import pack_spans, unpack_spans

    t0 = 1000.0
    spans = [("tile", (7 * i) % 2675, t0 + 0.001 * i, t0 + 0.001 * i + 0.0007)
             for i in range(2675)]
    data = pack_spans(spans, t0)
    assert len(data) == 12 * len(spans)
    back = unpack_spans(data)
    assert [tid for _, tid, _, _ in back] == [tid for _, tid, _, _ in spans]
    for (_, _, s, e), (_, _, s0, e0) in zip(back, spans, strict=True):
        assert math.isclose(s, s0 - t0, rel_tol=1e-6, abs_tol=1e-6)
        assert math.isclose(e - s, e0 - s0, rel_tol=1e-6)
    old_style = len(encode_message(Done(inference_id=1)))  # the list of floats it replaced
    rows = [[float(tid), s - t0, e - t0] for _, tid, s, e in spans]
    import msgspec

    assert len(data) + old_style < len(msgspec.msgpack.encode(rows)) / 2.2  # 2.3x smaller
    assert unpack_spans(b"") == [] and pack_spans([], t0) == b""


@pytest.mark.parametrize("data, why", [
    (b"\x00" * 13, "not whole"),
    (np.array([-1], "<i4").tobytes() + np.zeros(2, "<f4").tobytes(), "out of range"),
    (np.array([1], "<i4").tobytes() + np.array([np.nan, 0], "<f4").tobytes(), "not finite"),
    (np.array([1], "<i4").tobytes() + np.array([0, -1], "<f4").tobytes(), "negative"),
])
def test_garbled_done_spans_are_refused(data, why):
    from lopinfer.errors import ProtocolError
    from lopinfer.runtime.report import unpack_spans

    with pytest.raises(ProtocolError, match=why):
        unpack_spans(data)
