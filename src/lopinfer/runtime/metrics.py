"""Server health, readiness and Prometheus metrics.

``/healthz`` (the process serves: 200 while it runs, draining included), ``/readyz``
(it takes new sessions: 503 before the listeners are bound and once draining starts)
and ``/metrics`` (the Prometheus text format, 0.0.4). Served by ``lopinfer serve
--http HOST:PORT`` (:mod:`lopinfer.runtime.http`, no extra needed) and, as before, on
the aiohttp app of a ``ws://`` listener. Values are read from the server's own
counters at scrape time, so the hot path only bumps plain integers; the text is
written here (a few lines) rather than through prometheus-client, so a server with no
extras installed can be scraped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependencyError
from .accounting import LATENCY_BUCKETS, Histogram

if TYPE_CHECKING:
    from .server import Server

__all__ = ["health", "ready", "metrics_text", "http_routes", "LATENCY_BUCKETS"]


def health(server: Server) -> dict[str, Any]:
    """The ``/healthz`` document: status "ok" or "draining", and what it holds."""
    s = server.stats
    return {"status": "draining" if server._closing else "ok", "name": server.name,
            "device": str(server.device), "sessions": s.sessions_open,
            "deployments": len(server.deployments), "listening": server.urls}


def ready(server: Server) -> bool:
    """Whether the server takes new sessions (bound, and not draining)."""
    return bool(server.listeners) and not server._closing


def _esc(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items()) + "}"


def _num(v: float) -> str:
    return repr(float(v)) if v == v and abs(v) != float("inf") else (
        "NaN" if v != v else ("+Inf" if v > 0 else "-Inf"))


class _Text:
    """Families in the Prometheus text exposition format."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, object], float]]) -> None:
        suffix = "_total" if kind == "counter" else ""
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.lines += [f"{name}{suffix}{_labels(lb)} {_num(v)}" for lb, v in samples]

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, [({}, value)])

    def histogram(self, name: str, help_text: str, hist: Histogram) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        self.lines += [f'{name}_bucket{{le="{le}"}} {_num(n)}' for le, n in hist.cumulative()]
        self.lines += [f"{name}_sum {_num(hist.sum)}", f"{name}_count {_num(hist.count)}"]

    def render(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


def metrics_text(server: Server) -> bytes:
    """The server's counters in the Prometheus text format."""
    from .. import __version__

    s, acct, out = server.stats, server.acct, _Text()
    out.family("lopinfer_info", "gauge", "The server's version and device",
               [({"version": __version__, "device": str(server.device), "name": server.name}, 1)])
    out.one("lopinfer_ready", "gauge", "1 while new sessions are taken (0: draining)",
            int(ready(server)))
    out.one("lopinfer_sessions_open", "gauge", "Open sessions", s.sessions_open)
    out.one("lopinfer_sessions", "counter", "Sessions opened", s.sessions_total)
    out.one("lopinfer_inferences", "counter", "Inferences served", s.inferences)
    out.one("lopinfer_inferences_failed", "counter", "Inferences failed", s.inferences_failed)
    out.one("lopinfer_deploys", "counter", "Deployments (cached included)", s.deploys)
    out.one("lopinfer_deploys_cached", "counter", "Deployments served from cache",
            s.deploys_cached)
    out.one("lopinfer_deploys_stored", "counter",
            "Deployments read back from the model store (of the cached ones)", s.deploys_stored)
    out.one("lopinfer_deployments", "gauge", "Graphs in the cache", len(server.deployments))
    out.one("lopinfer_received_bytes", "counter", "Tile bytes received", s.bytes_in)
    out.one("lopinfer_sent_bytes", "counter", "Tile bytes sent", s.bytes_out)
    wire_in, wire_out = acct.wire_bytes()
    out.one("lopinfer_wire_received_bytes", "counter", "Bytes received on the wire", wire_in)
    out.one("lopinfer_wire_sent_bytes", "counter", "Bytes sent on the wire", wire_out)
    out.one("lopinfer_rejected_tokens", "counter", "Hellos refused for a wrong token",
            acct.rejected_tokens)
    out.one("lopinfer_client_fallbacks", "counter",
            "Inferences clients reported finishing locally", acct.client_fallbacks)
    out.one("lopinfer_worker_busy_seconds", "gauge", "Device worker busy time",
            server.worker.busy_s)
    out.histogram("lopinfer_worker_queue_wait_seconds",
                  "Time ready work waited for the device worker", server.worker.queue_wait)
    out.histogram("lopinfer_inference_seconds", "Server-side inference latency", acct.latency)
    sessions = list(acct.sessions.values())

    def per_session(attr: str) -> list[tuple[dict[str, object], float]]:
        return [({"session": f"{x.id:x}", "client": x.client}, getattr(x, attr))
                for x in sessions]

    out.family("lopinfer_session_inferences", "counter", "Inferences per open session",
               per_session("inferences"))
    out.family("lopinfer_session_received_bytes", "counter",
               "Tile bytes received per open session", per_session("bytes_in"))
    out.family("lopinfer_session_sent_bytes", "counter", "Tile bytes sent per open session",
               per_session("bytes_out"))
    deps = list(acct.deployments.items())

    def per_deployment(attr: str) -> list[tuple[dict[str, object], float]]:
        return [({"model": d.name, "hash": key[:16]}, getattr(d, attr)) for key, d in deps]

    out.family("lopinfer_deployment_inferences", "counter", "Inferences per deployment",
               per_deployment("inferences"))
    out.family("lopinfer_deployment_received_bytes", "counter",
               "Tile bytes received per deployment", per_deployment("bytes_in"))
    out.family("lopinfer_deployment_sent_bytes", "counter", "Tile bytes sent per deployment",
               per_deployment("bytes_out"))
    out.family("lopinfer_deployment_weight_bytes", "gauge", "Weight bytes per deployment",
               per_deployment("size"))
    return out.render()


def http_routes(server: Server) -> list[tuple[str, str, Any]]:
    """aiohttp routes (method, path, handler) for a ws listener's app.

    Raises:
        MissingDependencyError: aiohttp is not installed (extra ``ws``).
    """
    try:
        from aiohttp import web
    except ImportError as exc:
        raise MissingDependencyError("aiohttp", "ws", "ws:// listeners") from exc

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(health(server)), content_type="application/json")

    async def readyz(request: web.Request) -> web.Response:
        ok = ready(server)
        return web.Response(text="ready\n" if ok else "not ready\n", status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=metrics_text(server),
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    return [("GET", "/healthz", healthz), ("GET", "/readyz", readyz), ("GET", "/metrics", metrics)]
