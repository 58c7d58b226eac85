"""What a connection measures: per-frame transfer records and counter snapshots."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple


class TransferRecord(NamedTuple):
    """One frame that crossed the link, for bandwidth estimators.

    Times are ``time.perf_counter_ns()`` on this side. For a send, ``start_ns`` ..
    ``end_ns`` is the write (handing bytes to the OS or peer), ``queued_ns`` when the
    caller submitted it. For a receive, ``start_ns`` .. ``end_ns`` spans its first and
    last byte, and ``peer_time_ns`` is the sender's wall clock (``time.time_ns()``) at
    encoding, from the header.
    """

    direction: str  # "send" | "recv"
    kind: str  # "tensor" | "control"
    wire_bytes: int
    raw_bytes: int
    compressed: bool
    queued_ns: int
    start_ns: int
    end_ns: int
    peer_time_ns: int = 0


LinkObserver = Callable[[TransferRecord], None]


@dataclass(frozen=True)
class ConnectionStatistics:
    """A snapshot of a connection's counters (bytes include headers where ``wire``)."""

    frames_sent: int
    frames_received: int
    wire_bytes_sent: int
    wire_bytes_received: int
    raw_bytes_sent: int
    raw_bytes_received: int
    compressed_sent: int
    compressed_received: int
    compression_attempts: int
    compression_ratio: float  # measured compressed/raw, EWMA
    send_queue_frames: int
    send_queue_bytes: int
    transport_buffered: int
    recv_queue_frames: int
    recv_queue_bytes: int
    send_rate: float | None  # bytes/s measured on sends the link slowed down
    bandwidth_estimate: float | None
    protocol_errors: int
    recent: tuple[TransferRecord, ...]
