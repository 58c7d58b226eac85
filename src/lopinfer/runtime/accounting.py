"""What a server counts and logs about its sessions and deployments.

One place for the operator's view, so the server's protocol code only says what
happened (``acct.deployed(sid, key, graph, cached)``): this module keeps the counters
``/metrics`` reports and writes the INFO log lines, each with an ``event`` and its fields
as ``extra`` (``--log-format json`` prints them as keys). Per-session counters live as
long as the session; per-deployment ones as long as the cache or a session holds the
graph, so neither grows without bound.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..log import logger

__all__ = ["Histogram", "Accounts", "SessionStats", "DeploymentStats", "LATENCY_BUCKETS",
           "WAIT_BUCKETS"]

log = logger("server")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


class Histogram:
    """A cumulative Prometheus-style histogram (counts never go down), thread-safe."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # the last: over every bound
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value
            self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count <= le), ..., ("+Inf", count)]``."""
        with self._lock:
            out, total = [], 0
            for b, n in zip(self.buckets, self.counts):
                total += n
                out.append((_num(b), total))
            out.append(("+Inf", self.count))
            return out


def _num(v: float) -> str:
    return repr(float(v))


@dataclass
class SessionStats:
    id: int
    peer: str
    conn: Any
    opened: float = field(default_factory=time.monotonic)
    client: str = ""
    deployment: str = ""  # content hash of the deployed graph
    inferences: int = 0
    failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass
class DeploymentStats:
    name: str
    size: int
    inferences: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    deploys: int = 0
    uploads: int = 0


class Accounts:
    """The server's per-session and per-deployment counters and its INFO log."""

    def __init__(self) -> None:
        self.sessions: dict[int, SessionStats] = {}
        self.deployments: dict[str, DeploymentStats] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.rejected_tokens = 0
        self.client_fallbacks = 0
        self.wire_in_closed = 0  # wire bytes of sessions that ended
        self.wire_out_closed = 0

    # -- session lifecycle ---------------------------------------------------------------
    def opened(self, sid: int, conn: Any) -> None:
        peer = str(getattr(conn, "remote_address", "") or "?")
        self.sessions[sid] = SessionStats(sid, peer, conn)
        log.info("session %x: connection from %s", sid, peer,
                 extra={"event": "connect", "session": f"{sid:x}", "peer": peer})

    def hello(self, sid: int, client: str) -> None:
        s = self.sessions.get(sid)
        if s is None:
            return
        s.client = client[:64]
        log.info("session %x: hello from client %r at %s", sid, s.client, s.peer,
                 extra={"event": "hello", "session": f"{sid:x}", "client": s.client,
                        "peer": s.peer})

    def rejected_token(self, sid: int, client: str) -> None:
        self.rejected_tokens += 1
        s = self.sessions.get(sid)
        peer = s.peer if s else "?"
        log.warning("session %x: rejected token from client %r at %s", sid, client[:64], peer,
                    extra={"event": "rejected_token", "session": f"{sid:x}",
                           "client": client[:64], "peer": peer})

    def closed(self, sid: int, why: str = "") -> None:
        s = self.sessions.pop(sid, None)
        if s is None:
            return
        wire_in, wire_out = _wire(s.conn)
        self.wire_in_closed += wire_in
        self.wire_out_closed += wire_out
        self._forget_unused()
        log.info("session %x: disconnected after %.1f s (%d inferences, %d B in, %d B out)%s",
                 sid, time.monotonic() - s.opened, s.inferences, wire_in, wire_out,
                 f": {why}" if why else "",
                 extra={"event": "disconnect", "session": f"{sid:x}", "client": s.client,
                        "peer": s.peer, "inferences": s.inferences, "wire_bytes_in": wire_in,
                        "wire_bytes_out": wire_out, "why": why})

    # -- what a session does -------------------------------------------------------------
    def deployed(self, sid: int, key: str, graph: Any, cached: bool) -> None:
        from .limits import graph_bytes

        size = graph_bytes(graph)
        d = self.deployments.get(key)
        if d is None:
            d = self.deployments[key] = DeploymentStats(str(getattr(graph, "name", "?")), size)
        d.deploys += 1
        d.uploads += not cached
        s = self.sessions.get(sid)
        if s is not None:
            s.deployment = key
        log.info("session %x: deployed %s (hash %s, %d B weights, %s)", sid, d.name, key[:16],
                 size, "cached" if cached else "uploaded",
                 extra={"event": "deploy", "session": f"{sid:x}", "model": d.name,
                        "hash": key, "bytes": size, "cached": cached})

    def plan(self, sid: int, plan_id: int, plan: Any) -> None:
        name = str(getattr(plan, "name", "?"))
        log.info("session %x: plan %d is %s", sid, plan_id, name,
                 extra={"event": "plan", "session": f"{sid:x}", "plan_id": plan_id,
                        "plan": name})

    def fell_back(self, sid: int, inference_id: int, reason: str) -> None:
        self.client_fallbacks += 1
        s = self.sessions.get(sid)
        client = s.client if s else ""
        reason = " ".join(reason.split())[:200]  # the client's words: one bounded line
        log.warning("session %x: client %r finished inference %d locally: %s", sid, client,
                    inference_id, reason,
                    extra={"event": "client_fallback", "session": f"{sid:x}", "client": client,
                           "inference": inference_id, "reason": reason})

    def inference(self, sid: int, latency_s: float | None) -> None:
        """One inference served (``latency_s``) or failed (None)."""
        s = self.sessions.get(sid)
        d = self.deployments.get(s.deployment) if s else None
        if latency_s is None:
            if s is not None:
                s.failed += 1
            return
        self.latency.observe(latency_s)
        if s is not None:
            s.inferences += 1
        if d is not None:
            d.inferences += 1

    def moved(self, sid: int, bytes_in: int = 0, bytes_out: int = 0) -> None:
        """Tile bytes received from / sent to session ``sid``."""
        s = self.sessions.get(sid)
        if s is None:
            return
        s.bytes_in += bytes_in
        s.bytes_out += bytes_out
        d = self.deployments.get(s.deployment)
        if d is not None:
            d.bytes_in += bytes_in
            d.bytes_out += bytes_out

    # -- reading -------------------------------------------------------------------------
    def wire_bytes(self) -> tuple[int, int]:
        """(received, sent) wire bytes of every session, ended or open."""
        wire_in, wire_out = self.wire_in_closed, self.wire_out_closed
        for s in self.sessions.values():
            i, o = _wire(s.conn)
            wire_in, wire_out = wire_in + i, wire_out + o
        return wire_in, wire_out

    def _forget_unused(self, cached: Any = ()) -> None:
        """Drop deployments no open session uses and the cache no longer holds."""
        used = {s.deployment for s in self.sessions.values()} | set(cached)
        for key in [k for k in self.deployments if k not in used]:
            if len(self.deployments) <= 64:
                break
            del self.deployments[key]


def _wire(conn: Any) -> tuple[int, int]:
    try:
        st = conn.statistics()
        return int(st.wire_bytes_received), int(st.wire_bytes_sent)
    except Exception:  # a connection torn down under us has nothing more to say
        return 0, 0
