"""Link spans for the bench's timelines: which frames were on the link, and when.

The runtime's report holds compute spans of both peers; the device process adds the
link rows from its connection's per-frame :class:`~lopinfer.transports.TransferRecord`s
(:class:`TransferLog` is the connection's observer):

- ``link-down``: every tensor frame the device received, from its first byte to its
  last (the shaper paces the bytes, so that is its time on the link);
- ``link-up``: every tensor frame the device sent. The sender cannot see its bytes leave
  the shaper, so each frame occupies the link for its wire bytes at the shaped rate,
  first-in first-out from the moment it was written (or the previous frame left).
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["TransferLog", "link_spans"]


class TransferLog:
    """Observer of a connection: its last ``maxlen`` tensor frames, both directions."""

    def __init__(self, maxlen: int = 1 << 16) -> None:
        self.records: deque[Any] = deque(maxlen=maxlen)

    def __call__(self, record: Any) -> None:
        if record.kind == "tensor":
            self.records.append(record)

    def since(self, t0_ns: int) -> list[Any]:
        return [r for r in list(self.records) if r.end_ns >= t0_ns]


def link_spans(records: list[Any], t0_ns: int, rate_up: float | None) -> list[dict[str, Any]]:
    """Timeline spans (seconds from ``t0_ns``) of ``records`` (see the module doc)."""
    spans: list[dict[str, Any]] = []
    free = 0.0  # when the up link is next free
    for r in sorted(records, key=lambda r: r.start_ns):
        start, end = (r.start_ns - t0_ns) / 1e9, (r.end_ns - t0_ns) / 1e9
        if r.direction == "recv":
            spans.append({"peer": "link-down", "kind": "transfer", "start": start,
                          "end": max(end, start), "bytes": r.wire_bytes})
        elif rate_up:
            begin = max(start, free)
            free = begin + r.wire_bytes / rate_up
            spans.append({"peer": "link-up", "kind": "transfer", "start": begin,
                          "end": max(free, end), "bytes": r.wire_bytes})
    return spans
