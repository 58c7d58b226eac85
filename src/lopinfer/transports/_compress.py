"""LZ4 per frame, adaptive: compress only when it is expected to finish sooner.

The sender keeps, per stream of similar frames (same kind and tensor id), a measured
compression ratio and speed, and compresses a frame when

    n / compress_speed + ratio * n / bandwidth + n / decompress_speed  <  n / bandwidth

with a 5% margin; a frame that does not shrink by at least 3% goes raw whatever the
model said, so random data is never sent compressed. Frames skipped by the model are
re-probed now and then so that the ratio follows the data. The receiver needs no
negotiation: a flag in each header says whether its payload is an LZ4 block. Without
the ``lz4`` package nothing is compressed and received blocks are decoded by a slow
pure-Python decoder.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from ..errors import MissingDependencyError, ProtocolError
from ..log import logger
from ..steady import CPU, stretched

try:  # optional extra: lopinfer[lz4]
    import lz4.block as _lz4
except ImportError:  # pragma: no cover - depends on the environment
    _lz4 = None

log = logger("transports")

HAVE_LZ4 = _lz4 is not None
CompressionMode = Literal["auto", "always", "off"]
COMPRESSION_MODES = ("auto", "always", "off")

MARGIN = 0.95  # compress only when expected to take < 95% of the raw time
MIN_GAIN = 0.97  # and send compressed only when it shrank by >= 3%
_REPROBE = 16  # re-measure a stream judged incompressible every 16th frame
_ALPHA = 0.3  # EWMA weight of a new measurement
_MAX_KEYS = 1024
DEFAULT_MIN_SIZE = 8192  # smaller frames are never compressed
SPEED_PRIOR = 800e6  # LZ4 compress, input bytes/s, until measured
DECOMPRESS_SPEED_PRIOR = 2.5e9

_pool: ThreadPoolExecutor | None = None


def codec_executor() -> ThreadPoolExecutor:
    """The shared worker threads for large codec work (compression, copies) off the loop."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lopinfer-codec")
    return _pool


class _KeyStats:
    __slots__ = ("ratio", "speed", "seen", "measured")

    def __init__(self, ratio: float, speed: float) -> None:
        self.ratio = ratio
        self.speed = speed
        self.seen = 0
        self.measured = False


class AdaptiveCompressor:
    """Decides per frame whether LZ4 pays off, compresses, and learns from each result.

    Args:
        mode: ``"auto"`` (adaptive), ``"always"`` (every frame of at least ``min_size``
            bytes that shrinks), ``"off"``.
        min_size: frames smaller than this are never compressed.

    Raises:
        MissingDependencyError: ``mode="always"`` without the ``lz4`` package.
    """

    def __init__(self, mode: CompressionMode = "auto", min_size: int = DEFAULT_MIN_SIZE) -> None:
        if mode not in COMPRESSION_MODES:
            raise ValueError(f"compression must be one of {COMPRESSION_MODES}, got {mode!r}")
        if mode == "always" and not HAVE_LZ4:
            raise MissingDependencyError("lz4", "lz4", "LZ4 compression")
        self.mode = mode if HAVE_LZ4 else "off"
        self.min_size = min_size
        self.ratio = 0.5  # prior: typical post-ReLU activations
        self.speed = SPEED_PRIOR  # compress, input bytes/s; replaced by measurements
        self.decompress_speed = DECOMPRESS_SPEED_PRIOR
        self.compressed = 0
        self.attempts = 0
        self.bytes_saved = 0
        self._keys: OrderedDict[Hashable, _KeyStats] = OrderedDict()

    def should_try(self, n: int, key: Hashable, bandwidth: float | None) -> bool:
        """Whether to spend time compressing an ``n``-byte frame at ``bandwidth`` bytes/s."""
        if self.mode == "off" or n < self.min_size:
            return False
        if self.mode == "always":
            return True
        if not bandwidth or bandwidth <= 0 or bandwidth == float("inf"):
            return False
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _KeyStats(self.ratio, self.speed)
            if len(self._keys) > _MAX_KEYS:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        st.seen += 1
        overhead = 1 / st.speed + 1 / self.decompress_speed
        t_raw = 1 / bandwidth
        if overhead >= t_raw * MARGIN:
            return False  # the link is faster than LZ4 itself: nothing to win
        if overhead + st.ratio / bandwidth < t_raw * MARGIN:
            return True
        return st.seen % _REPROBE == 0

    def compress(self, data: Any, key: Hashable) -> bytes | None:
        """LZ4-compress ``data`` and learn from it; ``None`` when it did not shrink enough."""
        assert _lz4 is not None
        n = memoryview(data).nbytes
        t0 = time.perf_counter()
        with stretched(CPU):  # a slow device's CPU (lopinfer.steady); off by default
            out = _lz4.compress(data, store_size=False)
        dt = max(time.perf_counter() - t0, 1e-7)
        ratio = len(out) / n
        speed = n / dt
        self.attempts += 1
        self.ratio += _ALPHA * (ratio - self.ratio)
        self.speed += _ALPHA * (speed - self.speed)
        st = self._keys.get(key)
        if st is not None:
            if st.measured:
                st.ratio += _ALPHA * (ratio - st.ratio)
                st.speed += _ALPHA * (speed - st.speed)
            else:  # the first measurement of a stream replaces the prior
                st.ratio, st.speed, st.measured = ratio, speed, True
        if len(out) >= n * MIN_GAIN:
            return None
        self.compressed += 1
        self.bytes_saved += n - len(out)
        return out

    def decompress(self, data: Any, raw_len: int) -> np.ndarray:
        """Decode an LZ4 block of ``raw_len`` bytes into a fresh writable uint8 array.

        Raises:
            ProtocolError: corrupt block or wrong decoded length.
        """
        t0 = time.perf_counter()
        with stretched(CPU):
            out = decompress_block(data, raw_len)
        dt = time.perf_counter() - t0
        if dt > 0:
            self.decompress_speed += _ALPHA * (raw_len / dt - self.decompress_speed)
        return np.frombuffer(out, dtype=np.uint8)


def decompress_block(data: Any, raw_len: int) -> bytearray:
    """Decode one LZ4 block that must expand to exactly ``raw_len`` bytes.

    Raises:
        ProtocolError: the block is corrupt or decodes to another length.
    """
    if _lz4 is None:
        return _decompress_py(bytes(data), raw_len)
    try:
        out = _lz4.decompress(data, uncompressed_size=raw_len, return_bytearray=True)
    except _lz4.LZ4BlockError as exc:
        raise ProtocolError(f"corrupt LZ4 payload: {exc}") from None
    if len(out) != raw_len:
        raise ProtocolError(f"LZ4 payload decoded to {len(out)} bytes, header says {raw_len}")
    return out


_warned = False


def _decompress_py(src: bytes, n: int) -> bytearray:
    """Pure-Python LZ4 block decoder: the fallback when the ``lz4`` package is missing."""
    global _warned
    if not _warned:
        _warned = True
        log.warning("decoding LZ4 frames without the lz4 package (slow): pip install 'lopinfer[lz4]'")
    out = bytearray()
    i, end = 0, len(src)

    def bad(why: str) -> ProtocolError:
        return ProtocolError(f"corrupt LZ4 payload: {why} at byte {i}")

    while True:
        if i >= end:
            raise bad("missing token")
        token = src[i]
        i += 1
        lit = token >> 4
        if lit == 15:
            while True:
                if i >= end:
                    raise bad("truncated literal length")
                b = src[i]
                i += 1
                lit += b
                if b != 255:
                    break
        if i + lit > end or len(out) + lit > n:
            raise bad("literals overrun")
        out += src[i : i + lit]
        i += lit
        if i == end:
            break  # the last sequence holds literals only
        if i + 2 > end:
            raise bad("truncated match offset")
        off = src[i] | (src[i + 1] << 8)
        i += 2
        if off == 0 or off > len(out):
            raise bad(f"match offset {off} outside the output")
        ml = token & 15
        if ml == 15:
            while True:
                if i >= end:
                    raise bad("truncated match length")
                b = src[i]
                i += 1
                ml += b
                if b != 255:
                    break
        ml += 4
        if len(out) + ml > n:
            raise bad("match overruns the declared size")
        start = len(out) - off
        if off >= ml:
            out += out[start : start + ml]
        else:
            pattern = out[start:]
            out += (pattern * (ml // off + 1))[:ml]
    if len(out) != n:
        raise ProtocolError(f"LZ4 payload decoded to {len(out)} bytes, header says {n}")
    return out


def require_lz4() -> None:
    """Raise :class:`MissingDependencyError` unless the ``lz4`` package is importable."""
    if _lz4 is None:
        raise MissingDependencyError("lz4", "lz4", "LZ4 compression")
