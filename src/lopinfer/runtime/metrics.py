"""Server health and Prometheus metrics (``GET /healthz``, ``GET /metrics``).

Served on the aiohttp app of a ``ws://`` listener. Metrics come from the server's own
counters at scrape time (prometheus-client's custom-collector pattern), so the hot
path only bumps plain integers.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..errors import MissingDependencyError

if TYPE_CHECKING:
    from .server import Server

__all__ = ["health", "metrics_text", "http_routes", "LATENCY_BUCKETS"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def health(server: Server) -> dict[str, Any]:
    s = server.stats
    return {"status": "closing" if server._closing else "ok", "name": server.name,
            "device": str(server.device), "sessions": s.sessions_open,
            "deployments": len(server.deployments)}


def metrics_text(server: Server) -> bytes:
    """The server's counters in the Prometheus text format."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
    except ImportError as exc:
        raise MissingDependencyError("prometheus-client", "ws", "/metrics") from exc

    class _Collector:
        def collect(self) -> Any:
            s = server.stats
            yield GaugeMetricFamily("lopinfer_sessions_open", "Open sessions", s.sessions_open)
            yield CounterMetricFamily("lopinfer_sessions", "Sessions opened", s.sessions_total)
            yield CounterMetricFamily("lopinfer_inferences", "Inferences served", s.inferences)
            yield CounterMetricFamily("lopinfer_inferences_failed", "Inferences failed",
                                      s.inferences_failed)
            yield CounterMetricFamily("lopinfer_deploys", "Deployments (cached included)", s.deploys)
            yield CounterMetricFamily("lopinfer_deploys_cached", "Deployments served from cache",
                                      s.deploys_cached)
            yield CounterMetricFamily("lopinfer_received_bytes", "Tile bytes received", s.bytes_in)
            yield CounterMetricFamily("lopinfer_sent_bytes", "Tile bytes sent", s.bytes_out)
            yield GaugeMetricFamily("lopinfer_worker_busy_seconds", "Device worker busy time",
                                    server.worker.busy_s)
            total: float
            counts, total = [], 0
            for b in LATENCY_BUCKETS:
                counts.append((str(b), sum(1 for v in s.latencies if v <= b)))
            counts.append(("+Inf", len(s.latencies)))
            total = sum(s.latencies)
            yield HistogramMetricFamily("lopinfer_inference_seconds",
                                        "Server-side inference latency (last 1000)",
                                        buckets=counts, sum_value=total)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)


def http_routes(server: Server) -> list[tuple[str, str, Any]]:
    """aiohttp routes (method, path, handler) for a ws listener's app."""
    from aiohttp import web

    async def healthz(request: web.Request) -> web.Response:
        doc = health(server)
        return web.Response(text=json.dumps(doc), content_type="application/json",
                            status=200 if doc["status"] == "ok" else 503)

    async def metrics(request: web.Request) -> web.Response:
        try:
            body = metrics_text(server)
        except MissingDependencyError as exc:
            return web.Response(text=f"{exc}\n", status=501)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})

    return [("GET", "/healthz", healthz), ("GET", "/metrics", metrics)]
