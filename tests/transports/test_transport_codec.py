"""The frame codec on its own: every dtype and layout, every header check, and fuzzing."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transport_helpers import make, same

from lopinfer.errors import InputError, ProtocolError
from lopinfer.runtime.protocol import PROTOCOL_VERSION, Hello  # the application's messages
from lopinfer.transports import (
    SUPPORTED_DTYPES,
    Bye,
    Error,
    Frame,
    Limits,
    decode_frame,
    encode_frame,
)
from lopinfer.transports._frame import (
    FLAG_LZ4,
    MAGIC,
    PREAMBLE,
    TENSOR_META,
    parse_header,
)


@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (7,), (2, 3, 5, 4)], ids=str)
def test_every_dtype_and_shape_round_trips(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    t = make(dtype, shape)
    f = decode_frame(encode_frame(Frame(tensor=t, kind=3, session_id=2**64 - 1, tensor_id=9, flags=5)))
    assert isinstance(f, Frame)
    assert same(f.tensor, t)
    assert (f.kind, f.session_id, f.tensor_id, f.flags, f.dim) == (3, 2**64 - 1, 9, 5, -1)


@pytest.mark.parametrize(
    "make_view",
    [
        lambda x: x.to(memory_format=torch.channels_last),
        lambda x: x.transpose(1, 3),
        lambda x: x[:, :, ::2],
        lambda x: x[..., 1:3],
        lambda x: x.expand(2, 3, 4, 5) if x.shape[0] == 1 else x[:1].expand(2, 3, 4, 5),
        lambda x: torch.view_as_real(torch.randn(2, 3, 4, dtype=torch.complex64).conj().resolve_conj()),
    ],
    ids=["channels_last", "transposed", "strided", "sliced", "expanded", "from_complex"],
)
def test_layouts_round_trip_with_their_values(make_view) -> None:
    t = make_view(torch.randn(2, 3, 4, 5))
    f = decode_frame(encode_frame(Frame(tensor=t)))
    assert torch.equal(f.tensor, t)


def test_dense_layouts_keep_their_strides() -> None:
    for t in (torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last), torch.randn(4, 6).t()):
        assert decode_frame(encode_frame(Frame(tensor=t))).tensor.stride() == t.stride()


def test_conjugate_and_grad_tensors_are_sent_by_value() -> None:
    z = torch.randn(3, dtype=torch.complex64)
    assert torch.equal(decode_frame(encode_frame(Frame(tensor=z.conj()))).tensor, z.conj().resolve_conj())
    w = torch.randn(3, requires_grad=True)
    assert torch.equal(decode_frame(encode_frame(Frame(tensor=w))).tensor, w.detach())


def test_received_tensors_are_writable_and_own_their_memory() -> None:
    data = bytearray(encode_frame(Frame(tensor=torch.zeros(4))))
    t = decode_frame(bytes(data)).tensor
    t += 1  # must not raise (no read-only buffer behind it)
    assert t.tolist() == [1, 1, 1, 1]


def test_tile_fields_round_trip() -> None:
    t = torch.randn(1, 2, 5, 3)
    f = decode_frame(encode_frame(Frame(tensor=t, dim=2, row_start=10, row_stop=15, inference_id=7)))
    assert (f.dim, f.row_start, f.row_stop, f.inference_id) == (2, 10, 15, 7)


@pytest.mark.parametrize(
    "frame, match",
    [
        (Frame(tensor=torch.zeros(2, 3), dim=1, row_start=0, row_stop=2), "does not match"),
        (Frame(tensor=torch.zeros(2, 3), dim=2, row_start=0, row_stop=1), "out of range"),
        (Frame(tensor=torch.zeros(2), row_start=1, row_stop=2), "without a tiled dim"),
        (Frame(tensor=torch.zeros(2), kind=1 << 16), "kind"),
        (Frame(tensor=torch.zeros(2), tensor_id=-1), "tensor_id"),
        (Frame(tensor=torch.zeros(2), flags=True), "flags"),
        (Frame(tensor=torch.zeros(2).to_sparse()), "dense"),
        (Frame(tensor=torch.zeros((1,) * 9)), "max_ndim"),
        (Frame(tensor=[1, 2]), "torch.Tensor"),  # type: ignore[arg-type]
    ],
)
def test_bad_frames_are_refused_before_sending(frame: Frame, match: str) -> None:
    with pytest.raises(InputError, match=match):
        encode_frame(frame)


def test_frames_over_the_limit_are_refused_before_sending() -> None:
    with pytest.raises(InputError, match="max_frame_size"):
        encode_frame(Frame(tensor=torch.zeros(100)), limits=Limits(max_frame_size=100))


def test_control_messages_round_trip() -> None:
    for msg in (Hello(token="t", client_name="robot"), Bye(reason="done"), Error(code="x", message="y")):
        assert decode_frame(encode_frame(msg)) == msg


# -- every header check is a ProtocolError --------------------------------------------------
def valid() -> bytearray:
    return bytearray(encode_frame(Frame(tensor=torch.arange(12, dtype=torch.float32).reshape(3, 4))))


def patch(buf: bytearray, offset: int, fmt: str, value: object) -> bytearray:
    struct.pack_into(fmt, buf, offset, value)
    return buf


M = PREAMBLE.size  # start of the tensor meta
CASES = {
    "empty": lambda: bytearray(),
    "truncated preamble": lambda: valid()[:10],
    "truncated header": lambda: valid()[: M + 10],
    "truncated payload": lambda: valid()[:-1],
    "trailing bytes": lambda: valid() + b"x",
    "garbage": lambda: bytearray(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "bad magic": lambda: patch(valid(), 0, "4s", b"LOPX"),
    "wrong version": lambda: patch(valid(), 4, "B", 9),
    "unknown type": lambda: patch(valid(), 5, "B", 7),
    "unknown flags": lambda: patch(valid(), 6, "H", 0x8000),
    "meta length": lambda: patch(valid(), 8, "I", 5),
    "oversized payload": lambda: patch(valid(), 12, "Q", 1 << 40),
    "payload length mismatch": lambda: patch(valid(), 12, "Q", 47),
    "unknown dtype": lambda: patch(valid(), M + 2, "B", 200),
    "ndim mismatch": lambda: patch(valid(), M + 3, "B", 3),
    "reserved bytes": lambda: patch(valid(), M + 5, "B", 1),
    "shape vs length": lambda: patch(valid(), M + TENSOR_META.size, "Q", 4),
    "absurd shape": lambda: patch(valid(), M + TENSOR_META.size, "Q", 1 << 63),
    "raw length": lambda: patch(valid(), M + 52, "Q", 44),
    "bad permutation": lambda: patch(valid(), M + TENSOR_META.size + 16, "B", 1),
    "dim out of range": lambda: patch(valid(), M + 4, "b", 5),
    "rows without dim": lambda: patch(valid(), M + 44, "q", 3),
    "lz4 flag on garbage": lambda: patch(valid(), 6, "H", FLAG_LZ4),
    "bool bytes": lambda: bytearray(encode_frame(Frame(tensor=torch.ones(4, dtype=torch.bool)))[:-1] + b"\x07"),
    "bad message": lambda: bytearray(encode_frame(Bye())[:-3] + b"\xc1\xc1\xc1"),
    "message schema": lambda: _replaced(bytearray(encode_frame(Hello())),
                                        b"protocol_version" + bytes([PROTOCOL_VERSION]),
                                        b"protocol_version\xa1" + str(PROTOCOL_VERSION).encode()),
}


def _replaced(data: bytearray, old: bytes, new: bytes) -> bytearray:
    assert old in data  # the case must change something (it silently did not, once)
    return data.replace(old, new)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_bytes_are_protocol_errors(name: str) -> None:
    data = bytes(CASES[name]())
    with pytest.raises(ProtocolError) as info:
        decode_frame(data)
    assert "\n" not in str(info.value)


def test_limits_are_enforced_on_receive() -> None:
    data = encode_frame(Frame(tensor=torch.zeros(1000)))
    with pytest.raises(ProtocolError, match="limit"):
        decode_frame(data, limits=Limits(max_frame_size=100))
    with pytest.raises(ProtocolError, match="bad header length"):
        decode_frame(encode_frame(Frame(tensor=torch.zeros((1,) * 5))), limits=Limits(max_ndim=4))


def test_header_parse_does_not_need_the_payload() -> None:
    data = valid()
    pre, h = parse_header(data, Limits())
    assert h.shape == (3, 4) and pre.payload_len == 48 and data[:4] == MAGIC


# -- fuzzing ------------------------------------------------------------------------------
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    try:
        decode_frame(data)
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_behind_a_valid_magic_only_raise_protocol_error(data: bytes) -> None:
    try:
        decode_frame(MAGIC + b"\x01" + data)
    except ProtocolError:
        pass


SEEDS = [
    bytes(valid()),
    encode_frame(Frame(tensor=torch.ones(2, 3, 4, dtype=torch.bool), dim=1, row_start=4, row_stop=7)),
    encode_frame(Frame(tensor=torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last))),
    encode_frame(Hello(token="abc")),
    encode_frame(Error(code="x", message="y")),
]


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(-3, 3),
)
def test_mutated_frames_only_raise_protocol_error(seed: bytes, edits: list, cut: int) -> None:
    buf = bytearray(seed)
    for pos, byte in edits:
        buf[pos % len(buf)] = byte
    if cut < 0:
        buf = buf[:cut]
    elif cut > 0:
        buf += bytes(cut)
    try:
        decode_frame(bytes(buf))
    except ProtocolError:
        pass


PRE_AUTH = Limits(0, 64 << 10, 8, tensors=False)  # what a server accepts before hello


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=0, max_size=6),
)
def test_before_hello_only_small_control_messages_decode(seed: bytes, edits: list) -> None:
    """The pre-auth path: a tensor frame or anything over 64 KiB is refused from its
    header alone, whatever the bytes after it; only small control messages decode."""
    buf = bytearray(seed)
    for pos, byte in edits:
        buf[pos % len(buf)] = byte
    try:
        item = decode_frame(bytes(buf), limits=PRE_AUTH)
    except ProtocolError:
        return
    assert not isinstance(item, Frame)


def test_before_hello_a_tensor_header_is_refused_without_its_payload() -> None:
    head = encode_frame(Frame(tensor=torch.zeros(1 << 20, dtype=torch.uint8)))[:200]
    with pytest.raises(ProtocolError, match="before the hello"):
        parse_header(head, PRE_AUTH)
