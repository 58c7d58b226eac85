"""The session protocol's own control messages and the inference report.

Session flow (client -> server unless marked):
``Hello`` / ``Welcome`` (server) or ``Error(code="auth")``; ``Deploy`` with only the
content hash first, the full graph JSON + safetensors only when the server does not
have it (``Deployed(cached=...)`` or ``Error(code="unknown_deployment")``); ``UsePlan``
/ ``PlanReady``; then per inference ``Infer`` followed by tensor frames both ways
(``tensor_id`` is the receiving task's id in the plan's compiled program, identical on
both peers) and ``Done`` (server, with its compute spans) or ``InferFailed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..transports import Message, register_message

__all__ = ["Working", "FellBack", "UsePlan", "PlanReady", "Infer", "Done", "InferFailed", "Report", "FRAME_TILE",
           "FRAME_PROBE", "FRAME_WEIGHTS", "WEIGHTS_CHUNK", "ProfileRequest", "Profiled", "ProbeRequest", "ProbeResult"]

FRAME_TILE = 1  # Frame.kind of a row piece of an inference
FRAME_PROBE = 2  # Frame.kind of a link probe (random bytes, measured and dropped)
FRAME_WEIGHTS = 3  # Frame.kind of a chunk of a deployment's safetensors blob
WEIGHTS_CHUNK = 16 << 20  # weights larger than this travel as chunks, not in Deploy
MAX_PROBE_BYTES = 4 << 20  # per frame, so a client cannot make the server send gigabytes
MAX_PROBE_FRAMES = 16


@register_message
class Working(Message, tag="working"):
    """Server -> client, every few seconds of a long request (unpacking and hashing a
    deployment, compiling a plan, profiling): still alive. Client waits are bounded by
    silence (``peer_timeout``), not by how long honest work takes."""

    what: str = ""


WORKING_INTERVAL = 2.0  # seconds between Working messages


@register_message
class ProfileRequest(Message, tag="profile_request"):
    """Client -> server: measure the deployed graph's per-node costs on your device."""

    tiles: list[int] = msgspec.field(default_factory=lambda: [1, 4])
    repeats: int = 2


@register_message
class Profiled(Message, tag="profiled"):
    """Server -> client: per-node costs (``PeerCosts`` JSON) measured on ``device``."""

    costs_json: str
    device: str = ""
    threads: int = 1
    seconds: float = 0.0


@register_message
class ProbeRequest(Message, tag="probe_request"):
    """Client -> server, after ``up_frames`` probe frames: send ``down_frames`` probe
    frames of ``down_bytes`` each, then a ``ProbeResult``."""

    up_frames: int
    down_frames: int
    down_bytes: int


@register_message
class ProbeResult(Message, tag="probe_result"):
    """Server -> client: ``[bytes, seconds]`` transfer samples of the up probe frames."""

    up_samples: list[list[float]] = []


@register_message
class UsePlan(Message, tag="use_plan"):
    """Client -> server: compile this plan (JSON) for the deployed graph as ``plan_id``."""

    plan_id: int
    plan_json: str


@register_message
class PlanReady(Message, tag="plan_ready"):
    """Server -> client: ``plan_id`` is compiled."""

    plan_id: int


@register_message
class Infer(Message, tag="infer"):
    """Client -> server: inference ``inference_id`` with plan ``plan_id`` starts now."""

    inference_id: int
    plan_id: int


@register_message
class Done(Message, tag="done"):
    """Server -> client: the server's share of ``inference_id`` is computed and sent.
    ``spans`` are its compute spans as [task id, start, end] in seconds from ``Infer``."""

    inference_id: int
    spans: list[list[float]] = []
    busy_s: float = 0.0
    up_samples: list[list[float]] = []  # [bytes, seconds] of the tiles it received


@register_message
class InferFailed(Message, tag="infer_failed"):
    """Server -> client: the server could not compute its share (the client finishes)."""

    inference_id: int
    message: str = ""


@register_message
class FellBack(Message, tag="fell_back"):
    """Client -> server, before its next inference: inference ``inference_id`` was
    finished locally, and why (for the server's log and metrics)."""

    inference_id: int
    reason: str = ""


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
    bytes_up: int = 0
    bytes_down: int = 0
    frames_up: int = 0
    frames_down: int = 0
    client_busy_s: float = 0.0
    server_busy_s: float = 0.0
    timeline: list[dict[str, Any]] = field(default_factory=list, repr=False)
    #: the simulator's latency for this plan at the current estimate, and the pipeline
    #: lower bound of the same assignment (no per-tile overhead, arbitrarily fine tiles)
    predicted_s: float | None = None
    bound_s: float | None = None
    #: why this plan ran (the planner, the bandwidth grid point, the estimate)
    plan_reason: str = ""
    #: link estimates after this inference (bytes/s), from measured transfers
    bandwidth_up: float | None = None
    bandwidth_down: float | None = None
    #: modelled device energy (J): busy/idle compute power and radio time
    energy_j: float = 0.0

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
        if self.predicted_s is not None:
            bound = f", bound {self.bound_s * 1e3:.1f} ms" if self.bound_s is not None else ""
            lines.append(f"  predicted {self.predicted_s * 1e3:.1f} ms{bound}")
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
