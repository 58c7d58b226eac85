"""The frame header: its fixed, versioned layout, packing it, and checking it.

Every frame on every transport is ``preamble + meta + payload``::

    preamble  <4sBBHIQ  magic b"LOPI", version, type (tensor|control), flags,
                        meta length, payload length                      (20 bytes)
    tensor meta         kind u16, dtype u8, ndim u8, dim i8, 3 reserved bytes,
                        app flags u32, session/inference/tensor ids u64,
                        row_start/row_stop i64, raw length u64, send time ns i64,
                        shape ndim x u64, layout permutation ndim x u8
    control meta        raw length u64, send time ns i64
    payload             tensor bytes (dense, in layout order) or a msgpack control
                        message; LZ4-compressed block when flags has FLAG_LZ4

Nothing in a header is trusted: every field is checked against the others and
against :class:`~lopinfer.transports.Limits` before a byte of payload is allocated,
and every failure is a :class:`~lopinfer.errors.ProtocolError`.

Separate from :mod:`._frame` (the :class:`Frame` and :class:`Limits` an application
handles) because this is the protocol itself: the bytes a third-party peer must
produce and the checks every received header goes through. ``_frame`` re-exports
all of it.
"""

from __future__ import annotations

import functools
import math
import struct
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ..errors import ProtocolError

if TYPE_CHECKING:
    from ._frame import Limits, PreparedTensor

MAGIC = b"LOPI"
VERSION = 1
TYPE_TENSOR = 1
TYPE_CONTROL = 2
FLAG_LZ4 = 0x0001
_KNOWN_FLAGS = FLAG_LZ4

PREAMBLE = struct.Struct("<4sBBHIQ")
TENSOR_META = struct.Struct("<HBBb3sIQQQqqQq")
CONTROL_META = struct.Struct("<Qq")
_ZERO3 = b"\0\0\0"
_U64 = 1 << 64
_MAX_NDIM_HARD = 32
_MAX_DIM_EXTENT = 1 << 62

# Wire code <-> dtype. Codes are part of the protocol: never renumber, only append.
_DTYPE_NAMES = [
    (1, "float32"), (2, "float64"), (3, "float16"), (4, "bfloat16"),
    (5, "complex64"), (6, "complex128"), (7, "complex32"),
    (8, "uint8"), (9, "int8"), (10, "int16"), (11, "int32"), (12, "int64"), (13, "bool"),
    (14, "uint16"), (15, "uint32"), (16, "uint64"),
    (17, "float8_e4m3fn"), (18, "float8_e5m2"), (19, "float8_e4m3fnuz"),
    (20, "float8_e5m2fnuz"), (21, "float8_e8m0fnu"),
]  # fmt: skip
CODE_TO_DTYPE: dict[int, torch.dtype] = {
    code: getattr(torch, name) for code, name in _DTYPE_NAMES if hasattr(torch, name)
}
DTYPE_TO_CODE: dict[torch.dtype, int] = {dt: code for code, dt in CODE_TO_DTYPE.items()}
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = tuple(CODE_TO_DTYPE.values())



def lz4_bound(n: int) -> int:
    """Largest LZ4 block output for ``n`` input bytes (LZ4_COMPRESSBOUND)."""
    return n + n // 255 + 16


class Preamble(NamedTuple):
    type: int
    flags: int
    meta_len: int
    payload_len: int

    @property
    def header_len(self) -> int:
        return PREAMBLE.size + self.meta_len


class TensorHeader(NamedTuple):
    flags: int  # wire flags
    kind: int
    dtype: torch.dtype
    dim: int
    app_flags: int
    session_id: int
    inference_id: int
    tensor_id: int
    row_start: int
    row_stop: int
    raw_len: int
    send_time_ns: int
    shape: tuple[int, ...]
    perm: tuple[int, ...]


class ControlHeader(NamedTuple):
    flags: int
    raw_len: int
    send_time_ns: int


_IDENT = [tuple(range(n)) for n in range(_MAX_NDIM_HARD + 1)]


def _check_rows(dim: Any, start: Any, stop: Any, shape: tuple[int, ...], exc: type[Exception]) -> None:
    for name, v in (("dim", dim), ("row_start", start), ("row_stop", stop)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise exc(f"{name} must be an int, got {v!r}")
    if dim == -1:
        if start != 0 or stop != 0:
            raise exc(f"row range [{start}, {stop}) given without a tiled dim (dim=-1)")
        return
    if not 0 <= dim < len(shape):
        raise exc(f"tiled dim {dim} out of range for a {len(shape)}-d tensor")
    if not 0 <= start <= stop or stop - start != shape[dim]:
        raise exc(
            f"row range [{start}, {stop}) does not match {shape[dim]} rows along dim {dim}"
        )


@functools.cache
def _tensor_struct(nd: int) -> struct.Struct:
    return struct.Struct(f"<4sBBHIQHBBb3sIQQQqqQq{nd}Q{nd}B")


@functools.cache
def _dims_struct(nd: int) -> struct.Struct:
    return struct.Struct(f"<{nd}Q{nd}B")


def tensor_header(p: PreparedTensor, *, flags: int, payload_len: int) -> bytes:
    """Pack the header of a prepared tensor whose payload is ``payload_len`` bytes on the wire."""
    f = p.frame
    nd = len(p.shape)
    return _tensor_struct(nd).pack(
        MAGIC, VERSION, TYPE_TENSOR, flags, TENSOR_META.size + 9 * nd, payload_len,
        f.kind, p.code, nd, f.dim, _ZERO3, f.flags, f.session_id, f.inference_id,
        f.tensor_id, f.row_start, f.row_stop, p.nbytes, time.time_ns(), *p.shape, *p.perm,
    )  # fmt: skip


def control_header(*, flags: int, raw_len: int, payload_len: int) -> bytes:
    return PREAMBLE.pack(
        MAGIC, VERSION, TYPE_CONTROL, flags, CONTROL_META.size, payload_len
    ) + CONTROL_META.pack(raw_len, time.time_ns())


def parse_preamble(buf: Any, limits: Limits) -> Preamble:
    """Check the fixed 20-byte start of a frame; stream transports use it to find frame ends.

    Raises:
        ProtocolError: bad magic or version, unknown type or flags, sizes over the limits.
    """
    if len(buf) < PREAMBLE.size:
        raise ProtocolError(f"truncated frame: {len(buf)} bytes, a header needs {PREAMBLE.size}")
    magic, version, ftype, flags, meta_len, payload_len = PREAMBLE.unpack_from(buf)
    if magic != MAGIC:
        raise ProtocolError(f"not a LOPInfer frame (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ProtocolError(f"unsupported frame version {version} (this side speaks {VERSION})")
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError(f"unknown frame flags {flags:#06x}")
    if ftype == TYPE_TENSOR:
        if not limits.tensors:
            raise ProtocolError("tensor frames are not accepted before the hello")
        lo, hi = TENSOR_META.size, TENSOR_META.size + 9 * limits.max_ndim
        cap = limits.max_frame_size
    elif ftype == TYPE_CONTROL:
        lo = hi = CONTROL_META.size
        cap = limits.max_message_size
    else:
        raise ProtocolError(f"unknown frame type {ftype}")
    if not lo <= meta_len <= hi or (ftype == TYPE_TENSOR and (meta_len - lo) % 9):
        raise ProtocolError(f"bad header length {meta_len} for frame type {ftype}")
    if payload_len > (lz4_bound(cap) if flags & FLAG_LZ4 else cap):
        raise ProtocolError(f"frame payload of {payload_len} bytes exceeds the limit of {cap}")
    return Preamble(ftype, flags, meta_len, payload_len)


def parse_header(buf: Any, limits: Limits) -> tuple[Preamble, TensorHeader | ControlHeader]:
    """Parse and cross-check a whole header (preamble + meta); ``buf`` may be longer.

    Raises:
        ProtocolError: anything inconsistent (dtype, shape, lengths, rows, layout).
    """
    pre = parse_preamble(buf, limits)
    if len(buf) < pre.header_len:
        raise ProtocolError(f"truncated header: {len(buf)} of {pre.header_len} bytes")
    compressed = bool(pre.flags & FLAG_LZ4)
    off = PREAMBLE.size
    if pre.type == TYPE_CONTROL:
        raw_len, sent = CONTROL_META.unpack_from(buf, off)
        _check_lengths(raw_len, pre.payload_len, compressed, limits.max_message_size)
        return pre, ControlHeader(pre.flags, raw_len, sent)
    (kind, code, nd, dim, reserved, app_flags, sid, iid, tid,
     start, stop, raw_len, sent) = TENSOR_META.unpack_from(buf, off)  # fmt: skip
    if reserved != _ZERO3:
        raise ProtocolError("reserved tensor header bytes are not zero")
    if pre.meta_len != TENSOR_META.size + 9 * nd:
        raise ProtocolError(f"header length {pre.meta_len} does not match ndim={nd}")
    dtype = CODE_TO_DTYPE.get(code)
    if dtype is None:
        raise ProtocolError(f"unknown dtype code {code}")
    dims = _dims_struct(nd).unpack_from(buf, off + TENSOR_META.size)
    shape, perm = dims[:nd], dims[nd:]
    if perm != _IDENT[nd] and sorted(perm) != list(_IDENT[nd]):
        raise ProtocolError(f"layout {perm} is not a permutation of {nd} dims")
    if nd and max(shape) > _MAX_DIM_EXTENT:
        raise ProtocolError(f"shape {shape} has an absurd extent")
    if math.prod(max(n, 1) for n in shape) > _MAX_DIM_EXTENT:
        # an empty tensor with huge other dims: its strides would overflow in torch
        raise ProtocolError(f"shape {shape} has an absurd extent")
    numel = math.prod(shape)
    itemsize = _ITEMSIZE[dtype]
    if numel * itemsize != raw_len:
        raise ProtocolError(
            f"payload of {raw_len} bytes does not hold {dtype}{list(shape)} ({numel * itemsize} bytes)"
        )
    _check_lengths(raw_len, pre.payload_len, compressed, limits.max_frame_size)
    if dim != -1 or start or stop:
        try:
            _check_rows(dim, start, stop, shape, ProtocolError)
        except ProtocolError as exc:
            raise ProtocolError(f"bad tile header: {exc}") from None
    return pre, TensorHeader(
        pre.flags, kind, dtype, dim, app_flags, sid, iid, tid, start, stop, raw_len, sent, shape, perm
    )


_ITEMSIZE = {dt: dt.itemsize for dt in SUPPORTED_DTYPES}
_LZ4_MAX_RATIO = 256


def _check_lengths(raw_len: int, payload_len: int, compressed: bool, cap: int) -> None:
    if raw_len > cap:
        raise ProtocolError(f"frame of {raw_len} bytes exceeds the limit of {cap}")
    if compressed:
        if raw_len == 0 or payload_len == 0 or payload_len > lz4_bound(raw_len):
            raise ProtocolError(f"bad compressed length {payload_len} for {raw_len} raw bytes")
        if raw_len > _LZ4_MAX_RATIO * payload_len + 64:
            # no LZ4 block expands more than ~255x: the declared size is a lie
            raise ProtocolError(f"{payload_len} LZ4 bytes cannot decompress to {raw_len}")
    elif payload_len != raw_len:
        raise ProtocolError(f"payload length {payload_len} differs from raw length {raw_len}")
