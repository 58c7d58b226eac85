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
from typing import Any

__all__ = ["LinkEstimator", "Hysteresis", "ReceiptLog", "transfer_samples"]


class ReceiptLog:
    """The last ``maxlen`` frames a connection received (its ``TransferRecord``s): add
    it as the connection's observer; each peer draws its passive link samples from it."""

    def __init__(self, maxlen: int = 4096) -> None:
        self.records: deque[Any] = deque(maxlen=maxlen)

    def __call__(self, record: Any) -> None:
        if record.direction == "recv":
            self.records.append(record)

    def samples_since(self, since_ns: int) -> list[tuple[int, float]]:
        return transfer_samples(list(self.records), since_ns=since_ns)


def transfer_samples(records: list, *, min_bytes: int = 16 << 10,
                     since_ns: int = 0) -> list[tuple[int, float]]:
    """``(bytes, seconds)`` link samples from received tensor frames, in arrival order.

    A frame's time on the link is the longer of two measures, both on the receiver's
    clock alone (the peers' clocks need not agree):

    - its first-to-last byte (a link that paces bytes, like a kernel shaper);
    - its dispersion: the gap since the previous frame's last byte, when the sender
      queued it before that one had arrived (the sender's own encode times, from the
      header, say so), i.e. it waited for the link.

    A frame sent onto an idle link contributes only the first measure. Only frames
    that ended at or after ``since_ns`` give samples (earlier ones still anchor).
    """
    recs = sorted((r for r in records if getattr(r, "direction", "") == "recv"),
                  key=lambda r: r.end_ns)
    out: list[tuple[int, float]] = []
    prev = None
    for r in recs:  # control messages (e.g. the Infer before the tiles) anchor a train too
        seconds = (r.end_ns - r.start_ns) / 1e9
        if prev is not None:
            gap = (r.end_ns - prev.end_ns) / 1e9
            sender_gap = (r.peer_time_ns - prev.peer_time_ns) / 1e9
            if r.peer_time_ns and prev.peer_time_ns and sender_gap < gap * 0.5:
                seconds = max(seconds, gap)  # it queued behind the previous frame
        prev = r
        if r.end_ns < since_ns:
            continue
        if r.kind == "tensor" and (r.wire_bytes >= min_bytes or seconds >= 2e-3) and seconds > 0:
            out.append((r.wire_bytes, seconds))
    return out


class LinkEstimator:
    """EWMA of bandwidth (bytes/s) with median/MAD outlier rejection, plus RTT."""

    def __init__(self, initial: float | None = None, *, alpha: float = 0.25, window: int = 32,
                 reject: float = 4.0, min_bytes: int = 16 << 10, min_seconds: float = 200e-6,
                 shift: int = 3) -> None:
        self.alpha, self.reject, self.shift = alpha, reject, shift
        self._streak: list[float] = []
        self.shifts = 0
        self.min_bytes, self.min_seconds = min_bytes, min_seconds
        self._bw = initial
        self._rtt: float | None = None
        self._recent: deque[float] = deque(maxlen=window)
        self.samples = 0
        self.rejected = 0

    def observe(self, nbytes: int, seconds: float) -> bool:
        """One transfer of ``nbytes`` taking ``seconds``; False when ignored/rejected.

        A sample far from the recent median is an outlier, unless ``shift`` of them in
        a row lie on the same side: then the link changed, and the estimate jumps to
        their median at once (an EWMA alone would take many inferences to follow a
        link that lost 90% of its rate)."""
        if seconds < self.min_seconds or (nbytes < self.min_bytes and seconds < 2e-3):
            return False  # too small and quick to say anything about the link
        rate = nbytes / seconds
        if len(self._recent) >= 3:
            med = statistics.median(self._recent)
            mad = statistics.median(abs(r - med) for r in self._recent) or med * 0.05
            if abs(rate - med) > self.reject * mad:
                self._recent.append(rate)  # the link may really have changed: remember
                side = rate > med
                self._streak = [r for r in self._streak if (r > med) == side] + [rate]
                if len(self._streak) >= self.shift:
                    self._bw = statistics.median(self._streak)
                    self._recent.clear()
                    self._recent.extend(self._streak)
                    self._streak = []
                    self.samples += 1
                    self.shifts += 1
                    return True
                self.rejected += 1
                return False
        self._streak = []
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
        """The estimate (bytes/s), or None before any sample."""
        return self._bw

    @bandwidth.setter
    def bandwidth(self, value: float | None) -> None:
        # e.g. a probe's median, after its samples filled the outlier window
        self._bw = value

    @property
    def rtt(self) -> float | None:
        return self._rtt

    def __repr__(self) -> str:
        bw = f"{self._bw / 1e6:.2f} MB/s" if self._bw else "unknown"
        rtt = f"{self._rtt * 1e3:.2f} ms" if self._rtt else "unknown"
        return (f"<LinkEstimator {bw} rtt={rtt} samples={self.samples} rejected={self.rejected} "
                f"shifts={self.shifts}>")


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
