"""Link estimator: bandwidth and RTT measured from real transfers, never from OS settings.

Passive: every tile the transport receives (first to last byte) or sends while the
link paces it is a sample of ``bytes / seconds``; samples far from the recent median
(more than ``reject`` median absolute deviations) are dropped as outliers, the rest
update an EWMA. Active: ``probe`` results (a burst at deploy) seed it. RTT is tracked
the same way from request/response pairs.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

__all__ = ["LinkEstimator", "Hysteresis"]


class LinkEstimator:
    """EWMA of bandwidth (bytes/s) with median/MAD outlier rejection, plus RTT."""

    def __init__(self, initial: float | None = None, *, alpha: float = 0.25, window: int = 32,
                 reject: float = 4.0, min_bytes: int = 16 << 10, min_seconds: float = 200e-6) -> None:
        self.alpha, self.reject = alpha, reject
        self.min_bytes, self.min_seconds = min_bytes, min_seconds
        self._bw = initial
        self._rtt: float | None = None
        self._recent: deque[float] = deque(maxlen=window)
        self.samples = 0
        self.rejected = 0

    def observe(self, nbytes: int, seconds: float) -> bool:
        """One transfer of ``nbytes`` taking ``seconds``; False when ignored/rejected."""
        if nbytes < self.min_bytes or seconds < self.min_seconds:
            return False  # too small to say anything about the link
        rate = nbytes / seconds
        if len(self._recent) >= 5:
            med = statistics.median(self._recent)
            mad = statistics.median(abs(r - med) for r in self._recent) or med * 0.05
            if abs(rate - med) > self.reject * mad:
                self._recent.append(rate)  # the link may really have changed: remember
                self.rejected += 1
                return False
        self._recent.append(rate)
        self.samples += 1
        self._bw = rate if self._bw is None else (1 - self.alpha) * self._bw + self.alpha * rate
        return True

    def observe_record(self, record: object) -> bool:
        """A ``lopinfer.transports.TransferRecord`` (received tensors only)."""
        if getattr(record, "direction", "") != "recv" or getattr(record, "kind", "") != "tensor":
            return False
        seconds = (record.end_ns - record.start_ns) / 1e9  # type: ignore[attr-defined]
        return self.observe(record.wire_bytes, seconds)  # type: ignore[attr-defined]

    def observe_rtt(self, seconds: float) -> None:
        self._rtt = seconds if self._rtt is None else 0.8 * self._rtt + 0.2 * seconds

    @property
    def bandwidth(self) -> float | None:
        return self._bw

    @property
    def rtt(self) -> float | None:
        return self._rtt

    def __repr__(self) -> str:
        bw = f"{self._bw / 1e6:.2f} MB/s" if self._bw else "unknown"
        rtt = f"{self._rtt * 1e3:.2f} ms" if self._rtt else "unknown"
        return f"<LinkEstimator {bw} rtt={rtt} samples={self.samples} rejected={self.rejected}>"


@dataclass
class Hysteresis:
    """Pick a plan from a bandwidth grid; switch only when the estimate leaves the
    current plan's band by more than ``margin`` (no flapping on noise)."""

    grid: list[float]  # sorted bandwidths, one plan each
    margin: float = 0.25
    current: int | None = None

    def choose(self, bandwidth: float) -> tuple[int, bool]:
        """(grid index to use, whether it changed)."""
        nearest = min(range(len(self.grid)), key=lambda i: abs(_log(self.grid[i]) - _log(bandwidth)))
        if self.current is None:
            self.current = nearest
            return nearest, True
        if nearest == self.current:
            return nearest, False
        cur = self.grid[self.current]
        if abs(_log(bandwidth) - _log(cur)) > abs(_log(self.grid[nearest]) - _log(bandwidth)) + self.margin:
            self.current = nearest
            return nearest, True
        return self.current, False


def _log(x: float) -> float:
    import math

    return math.log(max(x, 1e-9))
