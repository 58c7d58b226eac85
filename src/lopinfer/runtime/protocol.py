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

__all__ = ["UsePlan", "PlanReady", "Infer", "Done", "InferFailed", "Report", "FRAME_TILE",
           "FRAME_PROBE", "FRAME_WEIGHTS", "WEIGHTS_CHUNK", "ProfileRequest", "Profiled", "ProbeRequest", "ProbeResult"]

FRAME_TILE = 1  # Frame.kind of a row piece of an inference
FRAME_PROBE = 2  # Frame.kind of a link probe (random bytes, measured and dropped)
FRAME_WEIGHTS = 3  # Frame.kind of a chunk of a deployment's safetensors blob
WEIGHTS_CHUNK = 16 << 20  # weights larger than this travel as chunks, not in Deploy
MAX_PROBE_BYTES = 4 << 20  # per frame, so a client cannot make the server send gigabytes
MAX_PROBE_FRAMES = 16


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


@dataclass
class Report:
    """What one inference did (``session.last_report``)."""

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
    timeline: list[dict[str, Any]] = field(default_factory=list)
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
