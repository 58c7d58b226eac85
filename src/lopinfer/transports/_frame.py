"""Wire codec, the application's side: :class:`Frame`, :class:`Limits`, and tensors
made ready to send as raw bytes behind a header.

A tensor travels as ``preamble + meta + payload``; the header's layout, packing and
checks are in :mod:`._frame_header` (re-exported here, where the rest of the
package and its tests import them from). Tensors are decoded as views of the
received buffer (no extra copy); a channels_last or otherwise permuted dense tensor
travels in its own memory order and comes back with the same strides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ._frame_header import (  # noqa: F401 - re-exported: importers use ._frame
    _IDENT,
    _ITEMSIZE,
    _MAX_NDIM_HARD,
    _U64,
    CODE_TO_DTYPE,
    CONTROL_META,
    DTYPE_TO_CODE,
    FLAG_LZ4,
    MAGIC,
    PREAMBLE,
    SUPPORTED_DTYPES,
    TENSOR_META,
    TYPE_CONTROL,
    TYPE_TENSOR,
    VERSION,
    ControlHeader,
    Preamble,
    TensorHeader,
    _check_rows,
    control_header,
    lz4_bound,
    parse_header,
    parse_preamble,
    tensor_header,
)


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts from its peer; anything larger is a ``ProtocolError``.

    Args:
        max_frame_size: largest uncompressed tensor payload, in bytes.
        max_message_size: largest uncompressed control message, in bytes.
        max_ndim: most dimensions a tensor header may declare.
        tensors: whether tensor frames are accepted at all (not before a hello).
    """

    max_frame_size: int = 1 << 30
    max_message_size: int = 64 << 20
    max_ndim: int = 8
    tensors: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.max_ndim <= _MAX_NDIM_HARD:
            raise InputError(f"max_ndim must be in [0, {_MAX_NDIM_HARD}], got {self.max_ndim}")
        if self.max_frame_size < 0 or self.max_message_size < 0:
            raise InputError("max_frame_size and max_message_size must be >= 0")

    @property
    def max_header_size(self) -> int:
        return PREAMBLE.size + TENSOR_META.size + 9 * self.max_ndim



@dataclass(kw_only=True, slots=True, eq=False)
class Frame:
    """A tensor (or a row tile of one) with the ids that say where it belongs.

    Args:
        tensor: the data; any CPU (or other device, moved to CPU to send) dense or
            strided tensor of a supported dtype. Received frames own their memory.
        kind: application-defined frame kind (0..65535).
        session_id, inference_id, tensor_id: application ids (0..2**64-1).
        dim: the tiled dimension, ``-1`` when the frame is not a tile.
        row_start, row_stop: the rows ``[row_start, row_stop)`` of the full tensor
            along ``dim`` that this tile holds (``tensor.shape[dim]`` rows); both 0
            when ``dim == -1``.
        flags: application flags (0..2**32-1), carried verbatim.
    """

    tensor: torch.Tensor
    kind: int = 0
    session_id: int = 0
    inference_id: int = 0
    tensor_id: int = 0
    dim: int = -1
    row_start: int = 0
    row_stop: int = 0
    flags: int = 0

    def __repr__(self) -> str:
        t = self.tensor
        rows = f", dim={self.dim}, rows=[{self.row_start}, {self.row_stop})" if self.dim >= 0 else ""
        return (
            f"Frame(kind={self.kind}, session={self.session_id}, inference={self.inference_id}, "
            f"tensor={self.tensor_id}{rows}, flags={self.flags:#x}, "
            f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)})"
        )



@dataclass(slots=True)
class PreparedTensor:
    """A tensor validated for sending: header fields plus the (maybe deferred) bytes."""

    frame: Frame
    code: int
    shape: tuple[int, ...]
    perm: tuple[int, ...]
    needs_copy: bool
    nbytes: int
    payload: Any = field(default=None)  # memoryview once materialised

    def materialise(self) -> memoryview:
        """Produce the payload bytes (may copy a strided tensor: call off the loop when big)."""
        if self.payload is None:
            t = self.frame.tensor
            if t.requires_grad:
                t = t.detach()
            if not t.is_cpu:
                t = t.cpu()
            if t.is_complex():
                t = t.resolve_conj().resolve_neg()
            if self.needs_copy:
                t = t.contiguous()
            if self.perm != _IDENT[len(self.perm)]:
                t = t.permute(self.perm)
            if not self.nbytes:
                self.payload = memoryview(b"")
            elif t.dtype in _NUMPY:
                # numpy() is the zero-copy route to a buffer (and keeps the tensor alive)
                self.payload = memoryview(t.numpy()).cast("B")  # type: ignore[arg-type]
            else:
                self.payload = memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
        return self.payload


def _check_uint(value: Any, bits: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise InputError(f"Frame.{name} must be an int in [0, 2**{bits}), got {value!r}")
    return value


def prepare_tensor(frame: Frame, limits: Limits) -> PreparedTensor:
    """Validate ``frame`` for sending and plan its layout; cheap, never copies data.

    Raises:
        InputError: unsupported dtype or layout, ids out of range, inconsistent rows.
    """
    t = frame.tensor
    if type(t) is not torch.Tensor and not isinstance(t, torch.Tensor):
        raise InputError(f"Frame.tensor must be a torch.Tensor, got {type(t).__name__}")
    code = DTYPE_TO_CODE.get(t.dtype)
    if code is None:
        raise InputError(f"dtype {t.dtype} cannot be sent; supported: {sorted(map(str, SUPPORTED_DTYPES))}")
    if t.layout != torch.strided or t.is_nested:
        raise InputError(f"only dense strided tensors can be sent, got layout {t.layout}")
    shape = tuple(t.shape)
    if len(shape) > limits.max_ndim:
        raise InputError(f"tensor has {len(shape)} dims, more than max_ndim={limits.max_ndim}")
    k, fl, sid, iid, tid = frame.kind, frame.flags, frame.session_id, frame.inference_id, frame.tensor_id
    if not (
        type(k) is int and 0 <= k < 1 << 16 and type(fl) is int and 0 <= fl < 1 << 32
        and type(sid) is int and 0 <= sid < _U64 and type(iid) is int and 0 <= iid < _U64
        and type(tid) is int and 0 <= tid < _U64
    ):  # fmt: skip
        for name, bits in (("kind", 16), ("flags", 32), ("session_id", 64), ("inference_id", 64), ("tensor_id", 64)):
            _check_uint(getattr(frame, name), bits, name)
    if frame.dim != -1 or frame.row_start or frame.row_stop:
        _check_rows(frame.dim, frame.row_start, frame.row_stop, shape, InputError)
    nbytes = t.numel() * _ITEMSIZE[t.dtype]
    if nbytes > limits.max_frame_size:
        raise InputError(f"tensor of {nbytes} bytes exceeds max_frame_size={limits.max_frame_size}")
    perm, needs_copy = _layout(t)
    return PreparedTensor(frame, code, shape, perm, needs_copy, nbytes)


def _layout(t: torch.Tensor) -> tuple[tuple[int, ...], bool]:
    """Dense layouts (contiguous, channels_last, transposes) travel as-is, in memory order."""
    nd = t.dim()
    ident = _IDENT[nd]
    if t.is_contiguous() or t.numel() <= 1:
        return ident, False
    strides = t.stride()
    perm = tuple(sorted(range(nd), key=lambda d: (-strides[d], d)))
    if t.permute(perm).is_contiguous():
        return perm, False
    return ident, True



_NUMPY = {
    torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
    torch.complex64: np.complex64, torch.complex128: np.complex128, torch.uint8: np.uint8,
    torch.int8: np.int8, torch.int16: np.int16, torch.int32: np.int32, torch.int64: np.int64,
    torch.bool: np.bool_, torch.uint16: np.uint16, torch.uint32: np.uint32, torch.uint64: np.uint64,
}  # fmt: skip
