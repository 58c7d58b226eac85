"""Measuring a server before planning for it: ``lopinfer probe`` and ``lopinfer plan
--server``.

Both use what a deploy uses (:mod:`.measure`): the same active link probe, the same
``ProfileRequest`` the server answers with its own device's costs, and the same client
profiler, so a plan printed here is the plan a deploy would choose from the same
numbers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..graph import Graph
from ..scheduler.cost import CostModel, Link, PeerCosts
from .client import connect
from .measure import LinkProbe, probe_link, server_costs

__all__ = ["probe_server", "probe_report", "measured_cost_model"]


async def probe_server(url: str, *, token: str = "", timeout: float = 10.0,
                       max_seconds: float = 2.0) -> tuple[LinkProbe, Any]:
    """(the link probe, the server's ``Welcome``) of the server at ``url``.

    Raises:
        ConnectError, AuthError, ProtocolVersionError, MissingDependencyError: as
            ``connect(url, strict=True)``.
    """
    async with connect(url, token=token, timeout=timeout, strict=True,
                       name="lopinfer-probe") as client:
        probe = await probe_link(client, max_seconds=max_seconds)
        return probe, client.welcome


def probe_report(url: str, probe: LinkProbe, welcome: Any) -> dict[str, Any]:
    """The ``lopinfer probe --json`` document."""
    return {
        "url": url, "server": getattr(welcome, "server_name", ""),
        "device": getattr(welcome, "device", ""),
        "rtt_ms": probe.rtt * 1e3,
        "up_bytes_per_s": probe.up, "down_bytes_per_s": probe.down,
        "up_frame_us": probe.up_frame_s * 1e6, "down_frame_us": probe.down_frame_s * 1e6,
        "up_samples": len(probe.up_samples), "down_samples": len(probe.down_samples),
        "seconds": probe.seconds,
    }


async def measured_cost_model(url: str, graph: Graph, *, token: str = "",
                              timeout: float = 10.0,
                              client_costs: PeerCosts | None = None) -> CostModel:
    """The cost model a deploy of ``graph`` to ``url`` would plan with: this machine
    profiled as the client (unless ``client_costs``), the server's real profile of its
    own device (the graph is uploaded unless it has it), the link probed."""
    from ..scheduler.builders import local_plan
    from .profiler import profile

    async with connect(url, token=token, timeout=timeout, strict=True,
                       name="lopinfer-plan") as client:
        # a local plan: deploy uploads the graph and compiles nothing on the server
        await client.deploy(graph, None, plan=local_plan(graph))
        mine: Any = None
        if client_costs is None:  # measured here while the server measures itself
            mine = asyncio.ensure_future(asyncio.to_thread(profile, graph, name="client"))
        try:
            theirs = await server_costs(client)
        finally:
            ccosts = await mine if mine is not None else client_costs
        probe = await probe_link(client)
    assert ccosts is not None  # measured, or given
    return CostModel(ccosts, theirs, Link(probe.up, probe.rtt / 2, probe.up_frame_s),
                     Link(probe.down, probe.rtt / 2, probe.down_frame_s),
                     info={"probe": repr(probe), "server": url})
