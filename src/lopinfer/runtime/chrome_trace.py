"""A report's timeline in the Chrome trace event format (``chrome://tracing``, Perfetto).

One process per peer row of the timeline (``client``, ``link-up``, ``server``,
``link-down``), complete events (``"ph": "X"``) in microseconds from the inference's
start, the span's kind as the event's category and its task id in ``args``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["chrome_trace", "save_trace", "ROWS"]

ROWS = ("client", "link-up", "server", "link-down")


def chrome_trace(timeline: Iterable[Mapping[str, Any]], *, name: str = "inference",
                 meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trace as a JSON-ready dict: ``{"traceEvents": [...], "otherData": meta}``."""
    spans = list(timeline)
    rows = [*ROWS, *sorted({str(s["peer"]) for s in spans} - set(ROWS))]
    events: list[dict[str, Any]] = []
    for pid, row in enumerate(rows, start=1):
        events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                       "args": {"name": row}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
                       "args": {"sort_index": pid}})
    pid_of = {row: pid for pid, row in enumerate(rows, start=1)}
    for s in spans:
        start, end = float(s["start"]), float(s["end"])
        args = {k: v for k, v in s.items() if k not in ("peer", "kind", "start", "end")}
        events.append({"name": f"{s['kind']} {s.get('task', '')}".strip(), "cat": str(s["kind"]),
                       "ph": "X", "pid": pid_of[str(s["peer"])], "tid": 0,
                       "ts": start * 1e6, "dur": max(0.0, end - start) * 1e6, "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"name": name, **(meta or {})}}


def save_trace(timeline: Iterable[Mapping[str, Any]], path: str | Path, **kw: Any) -> Path:
    """Write :func:`chrome_trace` to ``path`` (open it in https://ui.perfetto.dev)."""
    p = Path(path)
    p.write_text(json.dumps(chrome_trace(timeline, **kw)))
    return p
