"""Costs that follow the device: per-peer speed factors from measured compute spans.

A profile is taken once, at deploy; a Jetson that throttles when hot, or a robot CPU
shared with other processes, then runs slower than profiled. After every inference
each peer's measured compute seconds are compared with what the cost model predicted
for the same tasks; the factor is the median of the last ``window`` ratios (one slow
inference, a page fault, a first run's allocations do not move it). When a peer's
factor leaves the band ``[1 / (1 + margin), 1 + margin]`` around the factor the plan
book was made with (default 1.5x either way: a shared server's speed moves with its
load, and re-planning on every wobble would flap), the book is made again with that
peer's costs scaled.
"""

from __future__ import annotations

import statistics
from collections import deque

__all__ = ["SpeedTracker"]

PEERS = ("client", "server")


class SpeedTracker:
    """Measured over predicted compute time, per peer, over recent inferences."""

    def __init__(self, window: int = 7, margin: float = 0.5, min_samples: int = 5,
                 min_predicted_s: float = 1e-4) -> None:
        self.window, self.margin, self.min_samples = window, margin, min_samples
        self.min_predicted_s = min_predicted_s  # less than this: too little work to judge
        self.ratios: dict[str, deque[float]] = {p: deque(maxlen=window) for p in PEERS}
        self.followed = set(PEERS)  # peers whose speed moves the book (not a given cost)
        self.planned: dict[str, float] = {p: 1.0 for p in PEERS}  # what the book assumes

    def observe(self, peer: str, predicted_s: float, measured_s: float) -> None:
        if peer in self.followed and predicted_s >= self.min_predicted_s and measured_s > 0:
            self.ratios[peer].append(measured_s / predicted_s)

    def factor(self, peer: str) -> float | None:
        """The peer's current speed factor (>1: slower than profiled), or None."""
        r = self.ratios[peer]
        return statistics.median(r) if len(r) >= self.min_samples else None

    def drifted(self) -> dict[str, float] | None:
        """New factors for every peer when one has moved beyond the margin, else None."""
        now = {p: self.factor(p) for p in PEERS}
        moved = any(f is not None and not (1 / (1 + self.margin) <= f / self.planned[p]
                                           <= 1 + self.margin) for p, f in now.items())
        if not moved:
            return None
        return {p: (f if f is not None else self.planned[p]) for p, f in now.items()}

    def replanned(self, factors: dict[str, float]) -> None:
        """The book was made again for ``factors``; judge drift from them on."""
        self.planned = dict(factors)
        for r in self.ratios.values():
            r.clear()

    def __repr__(self) -> str:
        return f"<SpeedTracker planned={self.planned} now={ {p: self.factor(p) for p in PEERS} }>"
