"""Receive buffers and zero-copy tensor views of them.

Payloads land in numpy-allocated buffers (reused through :class:`BufferPool` once no
tensor refers to them) and become tensors by viewing, never by copying.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np
import torch

from ..errors import ProtocolError
from ._frame import _IDENT, _NUMPY, Frame, TensorHeader


def alloc_payload(n: int) -> tuple[np.ndarray, memoryview]:
    """A fresh writable buffer for ``n`` received bytes, as (uint8 array, memoryview).

    numpy rather than torch.empty: its allocations of a few MB are reused by malloc
    instead of being page-faulted in anew for every frame (4x faster for 4 MB tiles).
    """
    a = np.empty(n, dtype=np.uint8)
    return a, memoryview(a)  # type: ignore[arg-type]


class BufferPool:
    """Receive buffers that are reused once every tensor made from them is gone.

    Fresh multi-megabyte allocations are page-faulted in on every frame (the kernel
    zeroes each page): that costs as much as the copy itself. A pooled buffer is free
    again when nothing but the pool refers to it (every tensor viewing it holds a
    reference to it), so frames the application keeps are never overwritten.
    """

    MIN_SIZE = 64 * 1024
    PER_SIZE = 64

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self._bufs: dict[int, list[np.ndarray]] = {}
        self._bytes = 0
        self._max = max_bytes if _REFCOUNTS_EXACT else 0

    def get(self, n: int) -> tuple[np.ndarray, memoryview]:
        if n < self.MIN_SIZE or not self._max:
            return alloc_payload(n)
        bufs = self._bufs.get(n)
        if bufs is None:
            bufs = self._bufs[n] = []
        for a in bufs:
            if sys.getrefcount(a) <= 3:  # the list, the loop variable, the call
                return a, memoryview(a)  # type: ignore[arg-type]
        a, mv = alloc_payload(n)
        if len(bufs) < self.PER_SIZE and self._bytes + n <= self._max:
            bufs.append(a)
            self._bytes += n
        return a, mv


# free-threaded builds defer reference counts: the pool would not see buffers free up
_REFCOUNTS_EXACT = getattr(sys, "_is_gil_enabled", lambda: True)()


def as_uint8_array(payload: Any) -> np.ndarray:
    """The payload as a writable uint8 array (copies only read-only buffers such as bytes)."""
    if type(payload) is np.ndarray:
        return payload
    if isinstance(payload, torch.Tensor):
        return payload.numpy()
    mv = memoryview(payload)
    if not mv.readonly and mv.format == "B" and mv.contiguous:
        return np.frombuffer(mv, dtype=np.uint8)
    a, out = alloc_payload(mv.nbytes)
    if mv.nbytes:
        out[:] = mv.cast("B") if mv.format != "B" else mv
    return a


def as_uint8_tensor(payload: Any) -> torch.Tensor:
    """The payload as a writable uint8 tensor (copies only read-only buffers such as bytes)."""
    if isinstance(payload, torch.Tensor):
        return payload
    return torch.from_numpy(as_uint8_array(payload))


def build_tensor(h: TensorHeader, raw: Any) -> torch.Tensor:
    """View ``raw`` (``h.raw_len`` bytes: uint8 array or tensor) as the tensor ``h``
    describes; no copy.

    Raises:
        ProtocolError: the bytes are not valid for the dtype (e.g. bool bytes other than 0/1).
    """
    if h.raw_len == 0:
        with warnings.catch_warnings():  # complex32 warns that it is experimental
            warnings.simplefilter("ignore", UserWarning)
            return torch.empty(h.shape, dtype=h.dtype)
    if isinstance(raw, torch.Tensor):
        raw = raw.numpy()
    if raw.size != h.raw_len:
        raise ProtocolError(f"payload has {raw.size} bytes, header says {h.raw_len}")
    perm = h.perm
    ident = perm == _IDENT[len(perm)]
    shape = h.shape if ident else [h.shape[d] for d in perm]
    npdt = _NUMPY.get(h.dtype)
    if npdt is not None:
        if npdt is np.bool_ and raw.max() > 1:
            raise ProtocolError("bool tensor payload holds bytes other than 0 and 1")
        t = torch.from_numpy(raw.view(npdt).reshape(shape))
    else:  # bfloat16, float8, complex32: no numpy dtype
        t = torch.from_numpy(raw).view(h.dtype).view(shape)
    if ident:
        return t
    inv = [0] * len(perm)
    for i, d in enumerate(perm):
        inv[d] = i
    return t.permute(inv)


def frame_from_header(h: TensorHeader, tensor: torch.Tensor) -> Frame:
    return Frame(
        tensor=tensor, kind=h.kind, session_id=h.session_id, inference_id=h.inference_id,
        tensor_id=h.tensor_id, dim=h.dim, row_start=h.row_start, row_stop=h.row_stop,
        flags=h.app_flags,
    )  # fmt: skip
