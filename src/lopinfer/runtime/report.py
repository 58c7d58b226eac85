"""What one inference did: the :class:`Report`, and the one timeline builder both
peers use (the server sends its spans relative to ``Infer``; the client turns its own
and the server's into the report's timeline the same way).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ProtocolError

__all__ = ["Report", "timeline", "busy_s", "pack_spans", "unpack_spans"]

Span = tuple[str, int, float, float]  # (kind, task id, start, end), as PeerRun records them


def timeline(peer: str, spans: Iterable[Span], t0: float = 0.0) -> list[dict[str, Any]]:
    """Report timeline entries of one peer's spans, in seconds from ``t0``."""
    return [{"peer": peer, "kind": kind, "task": int(tid), "start": s - t0, "end": e - t0}
            for kind, tid, s, e in spans]


def busy_s(spans: Iterable[Span]) -> float:
    """Seconds of compute in ``spans``."""
    return sum(e - s for _, _, s, e in spans)


# Done.spans, packed: three little-endian columns of n values each, the task ids as
# differences from the one before (int32: mostly small, so the transport's LZ4 takes
# them down further), the starts from Infer and the durations (float32 seconds). 12
# bytes a span, where msgpack lists of floats took about 30 (2675 spans: 79 kB).
_SPAN_BYTES = 12


def pack_spans(spans: Sequence[Span], t0: float) -> bytes:
    """A peer's spans as ``Done.spans`` carries them (times from ``t0``)."""
    n = len(spans)
    if not n:
        return b""
    tid = np.fromiter((s[1] for s in spans), dtype=np.int64, count=n)
    start = np.fromiter((s[2] - t0 for s in spans), dtype=np.float64, count=n)
    end = np.fromiter((s[3] - t0 for s in spans), dtype=np.float64, count=n)
    return (np.diff(tid, prepend=0).astype("<i4").tobytes()
            + start.astype("<f4").tobytes() + (end - start).astype("<f4").tobytes())


def unpack_spans(data: bytes) -> list[Span]:
    """``Done.spans`` back as spans (compute, relative to the inference's start).

    Raises:
        ProtocolError: not whole spans, a task id out of range, a time that is not a
            finite number or a negative duration.
    """
    if len(data) % _SPAN_BYTES:
        raise ProtocolError(f"Done spans of {len(data)} bytes are not whole "
                            f"{_SPAN_BYTES}-byte spans")
    n = len(data) // _SPAN_BYTES
    if not n:
        return []
    tid = np.cumsum(np.frombuffer(data, "<i4", n, 0), dtype=np.int64)
    start = np.frombuffer(data, "<f4", n, 4 * n).astype(np.float64)
    dur = np.frombuffer(data, "<f4", n, 8 * n).astype(np.float64)
    if tid.min() < 0 or tid.max() >= 1 << 31:
        raise ProtocolError("Done spans name a task id out of range")
    if not (np.isfinite(start).all() and np.isfinite(dur).all()) or (dur < 0).any():
        raise ProtocolError("Done spans hold a time that is not finite, or a negative duration")
    return [("compute", t, s, s + d)
            for t, s, d in zip(tid.tolist(), start.tolist(), dur.tolist(), strict=True)]


@dataclass
class Report:
    """What one inference did (``session.last_report``).

    ``str(report)`` is one line (plan, latency, bytes each way, overlap, fell_back),
    ``report.summary()`` a few, ``report.format_timeline()`` the spans; the repr
    leaves the timeline out (it can hold thousands of entries).
    """

    latency_s: float
    plan: str
    fell_back: bool = False
    reason: str = ""
    #: raw bytes the plan moves each way (before LZ4, no headers)
    bytes_up: int = 0
    bytes_down: int = 0
    #: bytes on the wire each way while the inference ran (after LZ4, headers and
    #: control messages included): the connection's counters, so the concurrent
    #: traffic of other sessions on the same client connection is counted too
    wire_up: int = 0
    wire_down: int = 0
    frames_up: int = 0
    frames_down: int = 0
    client_busy_s: float = 0.0
    server_busy_s: float = 0.0
    timeline: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: what the numbers are (docs/runtime.md "What a report's times mean"):
    #: ``predicted_s``: the simulator's latency for this plan at the current estimates;
    #: ``plan_bound_s``: this plan's pipeline bound (its busiest resource with no per-tile
    #: or per-frame cost), never above what this inference's own busiest resource
    #: measured, so never above ``latency_s``; ``limit_s``: the physical limit, the
    #: least bound over every plan the planners can express (None until computed)
    predicted_s: float | None = None
    plan_bound_s: float | None = None
    limit_s: float | None = None
    #: why this plan ran (the planner, the bandwidth grid point, the estimate)
    plan_reason: str = ""
    #: link estimates after this inference (bytes/s), from measured transfers
    bandwidth_up: float | None = None
    bandwidth_down: float | None = None
    #: modelled device energy (J): busy/idle compute power and radio time
    energy_j: float = 0.0

    @property
    def bound_s(self) -> float | None:
        """The earlier name of :attr:`plan_bound_s`."""
        return self.plan_bound_s

    @property
    def overlap(self) -> float:
        """Share of the shorter peer's busy time hidden under the other's (0..1)."""
        seq = self.client_busy_s + self.server_busy_s
        if seq <= 0 or min(self.client_busy_s, self.server_busy_s) <= 0:
            return 0.0
        hidden = max(0.0, seq - self.latency_s)
        return min(1.0, hidden / min(self.client_busy_s, self.server_busy_s))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["overlap"] = self.overlap
        return d

    def save_trace(self, path: str | Path) -> Path:
        """Write the timeline as a Chrome trace (viewable in Perfetto); see
        :mod:`lopinfer.runtime.chrome_trace`."""
        from .chrome_trace import save_trace

        return save_trace(self.timeline, path, name=self.plan,
                          meta={"latency_s": self.latency_s, "plan": self.plan,
                                "fell_back": self.fell_back})

    def __str__(self) -> str:
        fell = f"fell_back=yes ({self.reason})" if self.fell_back else "fell_back=no"
        return (f"{self.plan}: {self.latency_s * 1e3:.1f} ms, up {_kb(self.bytes_up)}, "
                f"down {_kb(self.bytes_down)}, overlap {self.overlap:.0%}, {fell}")

    def summary(self) -> str:
        """A few lines: the one-line report, where the time went, the prediction and
        the link estimates, why this plan."""
        lines = [str(self)]
        lines.append(f"  busy: client {self.client_busy_s * 1e3:.1f} ms, server "
                     f"{self.server_busy_s * 1e3:.1f} ms; frames up {self.frames_up}, down "
                     f"{self.frames_down}; {len(self.timeline)} timeline spans")
        if self.wire_up or self.wire_down:
            lines.append(f"  on the wire: up {_kb(self.wire_up)}, down {_kb(self.wire_down)}")
        if self.predicted_s is not None:
            bound = (f", plan bound {self.plan_bound_s * 1e3:.1f} ms"
                     if self.plan_bound_s is not None else "")
            limit = f", limit {self.limit_s * 1e3:.1f} ms" if self.limit_s is not None else ""
            lines.append(f"  predicted {self.predicted_s * 1e3:.1f} ms{bound}{limit}")
        if self.bandwidth_up or self.bandwidth_down:
            lines.append(f"  link estimate: up {_rate(self.bandwidth_up)}, down "
                         f"{_rate(self.bandwidth_down)}; device energy {self.energy_j:.3g} J")
        if self.plan_reason:
            lines.append(f"  why: {self.plan_reason}")
        return "\n".join(lines)

    def format_timeline(self, limit: int | None = None) -> str:
        """The timeline, one span a line (peer, kind, task, start-end in ms), in start
        order; ``limit`` keeps the first spans only."""
        spans = sorted(self.timeline, key=lambda e: e.get("start", 0.0))
        shown = spans if limit is None else spans[:limit]
        lines = [f"{e.get('peer', '?'):<6} {e.get('kind', '?'):<8} task {e.get('task', '?'):>5}  "
                 f"{e.get('start', 0.0) * 1e3:8.2f} - {e.get('end', 0.0) * 1e3:8.2f} ms"
                 for e in shown]
        if len(shown) < len(spans):
            lines.append(f"... {len(spans) - len(shown)} more spans")
        return "\n".join(lines)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def _rate(bps: float | None) -> str:
    return "-" if not bps else f"{bps / 1e6:.3g} MB/s"
