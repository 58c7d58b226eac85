"""Synthetic WiFi throughput traces with the research testbed's statistics.

The research system measured its robot's WiFi link indoors (median about 11 MB/s, 5th
percentile 2, 95th 21) and outdoors (median 9, 5th 1, 95th 28). Its raw traces are not
public, so this module makes seeded, reproducible stand-ins:

1. An Ornstein-Uhlenbeck (AR(1)) process ``z`` in standard-normal space, sampled every
   ``step_s`` with correlation time ``tau_s``: ``z[k+1] = phi*z[k] + sqrt(1-phi^2)*e``,
   ``phi = exp(-step_s/tau_s)``. Its marginal is N(0, 1) at every step, so it only
   supplies the time structure (fades and recoveries lasting a few seconds).
2. A monotone quantile function maps ``z`` to a rate: ``log(rate)`` is piecewise linear in
   the normal score between (z5, log p5), (0, log p50), (z95, log p95), and continues with
   the outer slopes beyond them (log-normal tails), clamped to [0.05, 80] MB/s.
3. With ``match_marginal`` (the default) each sample is mapped by its rank rather than by
   its value, so even a short trace has exactly the target percentiles while keeping the
   process's ordering in time.

In memory a trace is a list of ``(t_s, rate_bytes_per_s)``; the CSV on disk is
``t_s,rate_MBps`` (MB = 1e6 bytes), real time, undilated.
"""

from __future__ import annotations

import csv
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Profile", "PROFILES", "generate", "load", "save", "stats"]

MB = 1e6
_Z95 = statistics.NormalDist().inv_cdf(0.95)  # 1.6449
_MIN_MBPS, _MAX_MBPS = 0.05, 80.0


@dataclass(frozen=True)
class Profile:
    """Target percentiles (MB/s) and correlation time of one environment."""

    p5: float
    p50: float
    p95: float
    tau_s: float  # assumed: the testbed reports no correlation time


PROFILES: dict[str, Profile] = {
    "indoor": Profile(p5=2.0, p50=11.0, p95=21.0, tau_s=4.0),
    "outdoor": Profile(p5=1.0, p50=9.0, p95=28.0, tau_s=2.5),
}


def _quantile_mbps(profile: Profile, z: float) -> float:
    """Rate (MB/s) at normal score ``z``: log-linear in z through p5, p50, p95."""
    lo = math.log(profile.p5)
    mid = math.log(profile.p50)
    hi = math.log(profile.p95)
    slope = (mid - lo) / _Z95 if z < 0 else (hi - mid) / _Z95
    return min(_MAX_MBPS, max(_MIN_MBPS, math.exp(mid + slope * z)))


def generate(
    kind: str,
    seed: int,
    duration_s: float = 300.0,
    step_s: float = 1.0,
    *,
    match_marginal: bool = True,
) -> list[tuple[float, float]]:
    """Make a seeded synthetic throughput trace.

    Args:
        kind: ``"indoor"`` or ``"outdoor"`` (a key of :data:`PROFILES`).
        seed: seed of the private random generator; same arguments, same trace.
        duration_s: length of the trace in real (undilated) seconds.
        step_s: spacing of the samples in seconds.
        match_marginal: map samples by rank so the trace's percentiles are the targets.

    Returns:
        ``[(t_s, rate_bytes_per_s), ...]`` starting at ``t_s = 0``.

    Raises:
        ValueError: unknown ``kind`` or non-positive duration/step.
    """
    if kind not in PROFILES:
        raise ValueError(f"traces: unknown kind {kind!r}; valid: {', '.join(PROFILES)}")
    if duration_s <= 0 or step_s <= 0:
        raise ValueError(f"traces: duration_s and step_s must be > 0 (got {duration_s}, {step_s})")
    profile = PROFILES[kind]
    n = max(1, int(round(duration_s / step_s)))
    rng = random.Random(seed)
    phi = math.exp(-step_s / profile.tau_s)
    noise = math.sqrt(1.0 - phi * phi)
    z = [rng.gauss(0.0, 1.0)]
    for _ in range(n - 1):
        z.append(phi * z[-1] + noise * rng.gauss(0.0, 1.0))
    if match_marginal:
        # Replace each value by the normal score of its rank (ties broken by time).
        normal = statistics.NormalDist()
        order = sorted(range(n), key=lambda i: (z[i], i))
        scores = [0.0] * n
        for rank, i in enumerate(order):
            scores[i] = normal.inv_cdf((rank + 0.5) / n)
        z = scores
    return [(round(k * step_s, 6), _quantile_mbps(profile, zk) * MB) for k, zk in enumerate(z)]


def stats(trace: list[tuple[float, float]]) -> dict[str, float]:
    """Percentiles of a trace's rates, in bytes/s: ``{"p5", "p50", "p95"}``.

    Uses linear interpolation between order statistics (numpy's default method).

    Raises:
        ValueError: fewer than two samples.
    """
    rates = [r for _, r in trace]
    if len(rates) < 2:
        raise ValueError(f"traces: need at least 2 samples for percentiles (got {len(rates)})")
    cuts = statistics.quantiles(rates, n=20, method="inclusive")
    return {"p5": cuts[0], "p50": cuts[9], "p95": cuts[18]}


def save(path: str | Path, trace: list[tuple[float, float]]) -> None:
    """Write ``trace`` (bytes/s in memory) as CSV ``t_s,rate_MBps``."""
    with open(path, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["t_s", "rate_MBps"])
        for t, rate in trace:
            out.writerow([f"{t:g}", f"{rate / MB:.4f}"])


def load(path: str | Path) -> list[tuple[float, float]]:
    """Read a ``t_s,rate_MBps`` CSV into ``[(t_s, rate_bytes_per_s), ...]``.

    Raises:
        ValueError: missing columns, unparsable numbers, negative rates, or times that
            do not increase; the message names the file and line.
    """
    trace: list[tuple[float, float]] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"t_s", "rate_MBps"} <= set(reader.fieldnames):
            raise ValueError(f"traces: {path}: expected columns t_s,rate_MBps, got {reader.fieldnames}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            try:
                t, rate = float(row["t_s"]), float(row["rate_MBps"]) * MB
            except (TypeError, ValueError) as exc:
                raise ValueError(f"traces: {where}: bad number ({exc})") from exc
            if rate < 0 or not math.isfinite(rate):
                raise ValueError(f"traces: {where}: rate must be finite and >= 0 (got {rate / MB})")
            if trace and t <= trace[-1][0]:
                raise ValueError(f"traces: {where}: t_s must increase (got {t} after {trace[-1][0]})")
            trace.append((t, rate))
    if not trace:
        raise ValueError(f"traces: {path}: no samples")
    return trace
