"""Cost model: seconds per task on each peer, seconds per frame on each link direction.

A node's cost on a peer is ``fixed + per_row * rows`` (a fitted line; a global node
is one "row"). Costs come from a profile measured on the peer (see
:mod:`lopinfer.scheduler.profiler`) or, before any profile, from FLOPs at a nominal
speed. The link is one FIFO per direction: a frame of ``n`` bytes occupies it for
``frame_overhead + n / bandwidth`` and arrives ``latency`` later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..graph import Graph

__all__ = ["NodeCost", "PeerCosts", "Link", "CostModel", "flop_costs"]


@dataclass(frozen=True)
class NodeCost:
    """Seconds for ``rows`` rows of a node: ``fixed + per_row * rows``."""

    fixed: float
    per_row: float

    def __call__(self, rows: int) -> float:
        return self.fixed + self.per_row * rows


@dataclass
class PeerCosts:
    """Per-node costs on one peer, plus the cost of moving bytes in memory."""

    nodes: dict[str, NodeCost]
    copy_per_byte: float = 1e-10  # gathers and halo concatenations
    name: str = ""

    def task(self, node: str, rows: int) -> float:
        c = self.nodes.get(node)
        return 0.0 if c is None else c(rows)

    def scaled(self, factor: float, name: str = "") -> PeerCosts:
        """The same peer ``factor`` times slower (>1) or faster (<1)."""
        return PeerCosts({k: NodeCost(v.fixed * factor, v.per_row * factor)
                          for k, v in self.nodes.items()},
                         self.copy_per_byte * factor, name or self.name)


@dataclass
class Link:
    """One direction of the link."""

    bandwidth: float  # bytes per second
    latency: float = 0.0005  # one-way, seconds
    frame_overhead: float = 30e-6  # sender + receiver per-frame cost, seconds

    def frame_time(self, nbytes: int) -> float:
        return self.frame_overhead + nbytes / self.bandwidth


@dataclass
class CostModel:
    """Everything the simulator needs to predict a plan's timeline."""

    client: PeerCosts
    server: PeerCosts
    up: Link
    down: Link
    info: dict[str, Any] = field(default_factory=dict)

    def peer(self, name: str) -> PeerCosts:
        return self.client if name == "client" else self.server

    def link_to(self, receiver: str) -> Link:
        return self.up if receiver == "server" else self.down

    def with_bandwidth(self, up: float, down: float | None = None) -> CostModel:
        return CostModel(self.client, self.server,
                         Link(up, self.up.latency, self.up.frame_overhead),
                         Link(down if down is not None else up, self.down.latency,
                              self.down.frame_overhead), dict(self.info))


def flop_costs(graph: Graph, flops_per_s: float, *, per_call: float = 20e-6,
               bytes_per_s: float = 5e9, name: str = "") -> PeerCosts:
    """Costs from FLOPs (compute) and bytes touched (memory), before any profile."""
    from ..graph.flops import flops as count_flops

    fl: Mapping[str, int] = count_flops(graph)
    nodes = {}
    for n in graph:
        rows = n.locality.size if n.locality else 1
        work = fl.get(n.name, 0) / flops_per_s + n.meta.nbytes / bytes_per_s
        nodes[n.name] = NodeCost(per_call, work / max(rows, 1))
    return PeerCosts(nodes, 1.0 / bytes_per_s, name)
