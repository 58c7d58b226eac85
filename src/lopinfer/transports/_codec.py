"""Whole-frame encode/decode on byte strings, for tools, tests and third-party peers.

Connections use the same pieces incrementally (header first, payload straight into
its buffer); these helpers work on a complete frame in memory.
"""

from __future__ import annotations

from typing import Any

from ..errors import ProtocolError
from ..steady import CPU, stretched
from ._buffers import as_uint8_array, build_tensor, frame_from_header
from ._compress import decompress_block
from ._frame import (
    FLAG_LZ4,
    TYPE_CONTROL,
    Frame,
    Limits,
    TensorHeader,
    control_header,
    parse_header,
    prepare_tensor,
    tensor_header,
)
from ._messages import Message, decode_message, encode_message

_LIMITS = Limits()


def encode_frame(item: Frame | Message, *, limits: Limits = _LIMITS) -> bytes:
    """The wire bytes of a tensor frame or a control message (uncompressed).

    Raises:
        InputError: the frame or message cannot be encoded.
    """
    with stretched(CPU):  # a slow device's CPU (lopinfer.steady); off by default
        return _encode(item, limits)


def _encode(item: Frame | Message, limits: Limits) -> bytes:
    if isinstance(item, Message):
        body = encode_message(item)
        return control_header(flags=0, raw_len=len(body), payload_len=len(body)) + body
    p = prepare_tensor(item, limits)
    payload = p.materialise()
    return tensor_header(p, flags=0, payload_len=p.nbytes) + payload


def decode_frame(data: Any, *, limits: Limits = _LIMITS) -> Frame | Message:
    """Decode exactly one complete frame from ``data`` (bytes-like).

    Raises:
        ProtocolError: anything wrong with it: header, lengths, payload, trailing bytes.
    """
    with stretched(CPU):
        return _decode(data, limits)


def _decode(data: Any, limits: Limits) -> Frame | Message:
    mv = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else memoryview(data)
    pre, h = parse_header(mv, limits)
    end = pre.header_len + pre.payload_len
    if len(mv) != end:
        raise ProtocolError(f"frame of {len(mv)} bytes, its header says {end}")
    payload = mv[pre.header_len :]
    if pre.flags & FLAG_LZ4:
        raw: Any = decompress_block(payload, h.raw_len)
    else:
        raw = payload
    if pre.type == TYPE_CONTROL:
        return decode_message(raw)
    assert isinstance(h, TensorHeader)
    try:
        return frame_from_header(h, build_tensor(h, as_uint8_array(raw)))
    except ProtocolError:
        raise
    except Exception as exc:  # whatever torch says of a header it cannot build
        raise ProtocolError(f"tensor frame cannot be built: {str(exc)[:200]}") from exc
