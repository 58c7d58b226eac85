"""Upload: a graph to the server (its content hash first, the content only when the
server lacks it), and plans compiled there under ids the client names.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

from ..errors import UnknownDeploymentError
from ..graph import Graph
from ..scheduler.plan import Plan
from ..transports import Frame
from .gil import responsive_io
from .protocol import FRAME_WEIGHTS, WEIGHTS_PART, Deploy, Deployed, PlanReady, UsePlan

if TYPE_CHECKING:
    from .client import Client

__all__ = ["upload_graph", "ServerPlans"]


async def upload_graph(client: Client, graph: Graph) -> Deployed:
    """Deploy ``graph``: by its hash when the server has it, else the JSON and the
    weights (each parameter in tensor frames of its own dtype, before ``Deploy``).

    Raises:
        DeployError: the server refused the graph (a limit, a hash that does not match).
        ConnectError, TransportError: the connection failed.
    """
    from ..graph.serialize import content_hash, pack_parts

    # the hash first (remembered per graph): a server that has the model needs no more
    digest = await asyncio.to_thread(content_hash, graph)
    try:
        reply: Deployed = await client.request(Deploy(graph_json="", content_hash=digest),
                                               Deployed)
        return reply
    except UnknownDeploymentError:
        pass  # the content goes up
    # the parameters sent from where they are (views), kept by the server as received
    text, parts, digest = await asyncio.to_thread(pack_parts, graph, max_bytes=WEIGHTS_PART)
    size = sum(p.numel() * p.element_size() for p in parts)
    with responsive_io():  # the loop feeds the socket while a planner may compute
        for i, part in enumerate(parts):
            await client.send_frame(Frame(tensor=part, kind=FRAME_WEIGHTS, tensor_id=i))
        return await client.request(Deploy(graph_json=text, content_hash=digest,
                                           weights_parts=len(parts), weights_size=size),
                                    Deployed)


class ServerPlans:
    """The plans the server has compiled for one session, per connection: switching
    back to a plan the server still holds sends nothing."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._sent: dict[int, tuple[Plan, Any, int]] = {}  # id(plan) -> (plan, conn, plan id)

    def forget(self) -> None:
        """A deploy makes the server forget the session's plans."""
        self._sent.clear()

    async def ensure(self, client: Client, plan: Plan) -> int:
        """The server's id of ``plan`` on the current connection, compiled there now
        if it is not yet.

        Raises:
            PlanError: the server rejected the plan.
            ConnectError, TransportError: the connection failed.
        """
        conn = client.conn
        sent = self._sent.get(id(plan))
        if sent is not None and sent[0] is plan and sent[1] is conn:
            return sent[2]
        pid = next(self._ids)
        await client.request(UsePlan(plan_id=pid, plan_json=plan.to_json()), PlanReady)
        self._sent[id(plan)] = (plan, conn, pid)
        return pid

    def __repr__(self) -> str:
        return f"<ServerPlans {len(self._sent)} compiled>"
