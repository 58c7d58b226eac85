"""What the wire costs this peer: per frame, per byte encoded, per byte LZ4'd.

Part of a profile (:func:`lopinfer.runtime.profiler.profile`), measured on the peer
that pays it, so that a throttled device pays its own slow codec in the plan:

- ``frame_cpu``: one side's share (half the round trip) of encoding and decoding a
  one-row tile frame (headers, checks, the Python around them), from its device to
  wire bytes and back;
- ``codec_per_byte``: the same for a large frame, per byte beyond the small one
  (device-to-host copy, materialising the payload, building the received tensor);
- LZ4: compress and decompress speed, and each value's compressed size over its raw
  size, measured on the values the profile computes (:class:`Lz4Meter`).

The transport's codec and LZ4 are the ones timed (``encode_frame``/``decode_frame``,
``lz4.block``), so a plan pays what the runtime will pay.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ..steady import CPU, stretched
from ..transports import HAVE_LZ4, Frame, decode_frame, encode_frame

__all__ = ["measure_codec", "Lz4Meter"]

_SAMPLE_BYTES = 1 << 20  # LZ4 ratio of a value: its first MiB (speed is per byte anyway)


def _roundtrip_s(t: torch.Tensor, dev: torch.device, repeats: int) -> float:
    frame = Frame(tensor=t, dim=2 if t.dim() == 4 else -1,
                  row_stop=t.shape[2] if t.dim() == 4 else 0)
    times = []
    for _ in range(repeats + 1):
        s = time.perf_counter()
        got = decode_frame(encode_frame(frame))
        back = got.tensor.to(dev) if isinstance(got, Frame) else None
        if dev.type == "cuda" and back is not None:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - s)
    return statistics.median(times[1:])  # the first warms the allocator


def measure_codec(dev: torch.device, *, repeats: int = 9) -> tuple[float, float]:
    """(seconds per frame, seconds per byte) that one side of a transfer costs this
    peer: half of what encoding a tile frame and decoding it back onto its device take.
    The cost model charges the sender its encode and the receiver its decode, each from
    its own profile; charging each the whole round trip counted the codec twice (a
    KAPAO cut streamed at 200 MB/s was predicted +31% in the steady lab, +17% halved)."""
    small = torch.randn(1, 64, 1, 56, device=dev)
    big = torch.randn(1, 64, 64, 256, device=dev)  # 4 MiB
    t_small = _roundtrip_s(small, dev, repeats)
    t_big = _roundtrip_s(big, dev, max(3, repeats // 3))
    per_byte = max(t_big - t_small, 0.0) / (big.numel() * 4 - small.numel() * 4)
    return t_small / 2, per_byte / 2


class Lz4Meter:
    """Compressed-size ratio and LZ4 seconds per byte of each value seen, and this
    peer's average LZ4 speed (LZ4 runs several times faster on a mostly empty grid
    than on an activation, so a value's own speed prices its frames)."""

    def __init__(self) -> None:
        self.ratio: dict[str, float] = {}
        self.time: dict[str, tuple[float, float]] = {}
        self._bytes = 0
        self._compress_s = 0.0
        self._decompress_s = 0.0

    def see(self, name: str, value: Any) -> None:
        """Measure ``value`` (a tensor; anything else is ignored) once per name."""
        if not HAVE_LZ4 or name in self.ratio or not torch.is_tensor(value):
            return
        import lz4.block

        data = value.detach().reshape(-1).cpu().contiguous()
        raw = data.view(torch.uint8)[:_SAMPLE_BYTES].numpy().tobytes()
        if len(raw) < 1024:
            return  # too small to say anything; the transport never compresses it
        if not self.ratio:  # the first calls of a process are slow (allocations)
            lz4.block.decompress(lz4.block.compress(raw, store_size=False),
                                 uncompressed_size=len(raw))
        compress_s = decompress_s = float("inf")
        for _ in range(2):  # the quicker of two: one call is at the mercy of the host
            s = time.perf_counter()
            with stretched(CPU):  # as the transport's own LZ4 (lopinfer.steady)
                packed = lz4.block.compress(raw, store_size=False)
            mid = time.perf_counter()
            with stretched(CPU):
                lz4.block.decompress(packed, uncompressed_size=len(raw))
            end = time.perf_counter()
            compress_s, decompress_s = min(compress_s, mid - s), min(decompress_s, end - mid)
        self.ratio[name] = len(packed) / len(raw)
        self.time[name] = (compress_s / len(raw), decompress_s / len(raw))
        self._bytes += len(raw)
        self._compress_s += compress_s
        self._decompress_s += decompress_s

    def per_byte(self) -> tuple[float, float]:
        """(compress, decompress) seconds per byte; 0 when nothing was measured."""
        if not self._bytes:
            return 0.0, 0.0
        return self._compress_s / self._bytes, self._decompress_s / self._bytes
