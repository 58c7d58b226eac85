"""The session protocol: every application message, registered into the transports'
message union here (the transports themselves know only ``Error`` and ``Bye``).

Session flow (client -> server unless marked):
``Hello`` / ``Welcome`` (server) or ``Error(code="auth")``; ``Deploy`` with only the
content hash first, the full graph JSON + safetensors only when the server does not
have it (``Deployed(cached=...)`` or ``Error(code="unknown_deployment")``); ``UsePlan``
/ ``PlanReady``; then per inference ``Infer`` followed by tensor frames both ways
(``tensor_id`` is the receiving task's id in the plan's compiled program, identical on
both peers) and ``Done`` (server, with its compute spans) or ``InferFailed``.

A refused request is an ``Error`` whose ``code`` names a class of the exception tree
(``lopinfer.errors.REMOTE_CODES``, one table both ways).
"""

from __future__ import annotations

import msgspec

from ..transports import Message, register_message

__all__ = ["PROTOCOL_VERSION", "Hello", "Welcome", "Deploy", "Deployed", "Working", "FellBack",
           "UsePlan", "PlanReady", "Infer", "Done", "InferFailed", "FRAME_TILE", "FRAME_PROBE",
           "FRAME_WEIGHTS", "WEIGHTS_PART", "ProfileRequest", "Profiled", "ProbeRequest",
           "ProbeResult"]

PROTOCOL_VERSION = 4  # 2: verified deploys, Working keep-alives; 3: weights as typed parts;
# 4: Done's spans packed

FRAME_TILE = 1  # Frame.kind of a row piece of an inference
FRAME_PROBE = 2  # Frame.kind of a link probe (random bytes, measured and dropped)
FRAME_WEIGHTS = 3  # Frame.kind of a part of a deployment's weights (a typed 1-d tensor)
WEIGHTS_PART = 512 << 20  # bytes: a parameter larger than this travels in several parts
MAX_PROBE_BYTES = 4 << 20  # per frame, so a client cannot make the server send gigabytes
MAX_PROBE_FRAMES = 16


@register_message
class Hello(Message, tag="hello"):
    """Client -> server, first message: who is calling and with which token."""

    protocol_version: int = PROTOCOL_VERSION
    token: str = ""
    client_name: str = ""


@register_message
class Welcome(Message, tag="welcome"):
    """Server -> client: the session was opened."""

    session_id: int
    server_name: str = ""
    device: str = "cpu"


@register_message
class Deploy(Message, tag="deploy"):
    """Client -> server: a graph (JSON over the op allow-list) and its weights.

    The weights travel just before this message as ``weights_parts`` tensor frames
    (``weights_size`` bytes in all): each parameter in the graph's order, flattened, in
    one frame of its own dtype (or several, over ``WEIGHTS_PART`` bytes). The server
    keeps the tensors it receives as the parameters: nothing is packed, joined or
    copied on either side (``graph.load.unpack_parts`` checks them against the JSON).
    """

    graph_json: str
    content_hash: str
    weights_parts: int = 0
    weights_size: int = 0


@register_message
class Deployed(Message, tag="deployed"):
    """Server -> client: the deployment ``content_hash`` is ready (``cached``: was already)."""

    content_hash: str
    session_id: int = 0
    cached: bool = False


@register_message
class Working(Message, tag="working"):
    """Server -> client, every few seconds of a long request (unpacking and hashing a
    deployment, compiling a plan, profiling): still alive. Client waits are bounded by
    silence (``peer_timeout``), not by how long honest work takes."""

    what: str = ""


WORKING_INTERVAL = 2.0  # seconds between Working messages


@register_message
class ProfileRequest(Message, tag="profile_request"):
    """Client -> server: measure the deployed graph's per-node costs on your device;
    with ``content_hash``, only the costs kept from an earlier profile of that graph
    (answered before any upload; ``ProfileError`` when there are none)."""

    tiles: list[int] = msgspec.field(default_factory=lambda: [1, 4])
    repeats: int = 2
    content_hash: str = ""


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
    ``spans`` are its compute spans (task id, start, end in seconds from ``Infer``),
    packed by ``report.pack_spans``; the client sums its busy time from them."""

    inference_id: int
    spans: bytes = b""
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
