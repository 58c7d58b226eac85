"""Cost model: seconds per task on each peer, seconds per frame on each link direction.

A node's cost on a peer is ``fixed + per_row * rows`` (a fitted line; a global node
is one "row"). Costs come from a profile measured on the peer (see
:mod:`lopinfer.runtime.profiler`) or, before any profile, from FLOPs at a nominal
speed. The link is one FIFO per direction: a frame of ``n`` bytes occupies it for

    link.frame_overhead + sender.frame_cpu + receiver.frame_cpu
      + n * (sender.codec_per_byte + receiver.codec_per_byte)
      [+ n * (compress + decompress seconds per byte)]           when LZ4 pays
      + wire_bytes / bandwidth

and arrives ``latency`` later. The peers' parts are measured by their profiles; the
link's own per-frame part is fitted from the deploy's probe. Whether a frame is
compressed follows the transport's own rule (:class:`~lopinfer.transports.AdaptiveCompressor`)
with the ratio the profile measured on that value, so ``wire_bytes`` is ``n * ratio``
when LZ4 pays and ``n`` otherwise. LZ4's speed depends on the data (a mostly empty
occupancy grid compresses about 6x faster than an activation), so a value's seconds
per byte are the ones measured on it where a profile has them (the sender's own for
compressing; the receiver's average scaled by how much faster or slower the measuring
peer found that value for decompressing), else the peers' averages.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..graph import Graph
from ..transports import compression as lz4rule  # the transport's own LZ4 rule

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
    # The wire, as this peer pays for it (0 where not measured): CPU per frame sent or
    # received, per byte encoded or decoded, per byte LZ4-compressed or decompressed.
    frame_cpu: float = 0.0
    codec_per_byte: float = 0.0
    lz4_per_byte: float = 0.0
    unlz4_per_byte: float = 0.0
    #: value name -> LZ4 compressed size over raw size, measured on its output
    lz4_ratio: dict[str, float] = field(default_factory=dict)
    #: value name -> (compress, decompress) seconds per raw byte measured on it
    lz4_time: dict[str, tuple[float, float]] = field(default_factory=dict)

    def task(self, node: str, rows: int) -> float:
        c = self.nodes.get(node)
        return 0.0 if c is None else c(rows)

    def scaled(self, factor: float, name: str = "") -> PeerCosts:
        """The same peer ``factor`` times slower (>1) or faster (<1)."""
        return PeerCosts({k: NodeCost(v.fixed * factor, v.per_row * factor)
                          for k, v in self.nodes.items()},
                         self.copy_per_byte * factor, name or self.name,
                         self.frame_cpu * factor, self.codec_per_byte * factor,
                         self.lz4_per_byte * factor, self.unlz4_per_byte * factor,
                         dict(self.lz4_ratio),
                         {k: (c * factor, d * factor) for k, (c, d) in self.lz4_time.items()})


@dataclass
class Link:
    """One direction of the link."""

    bandwidth: float  # bytes per second
    latency: float = 0.0005  # one-way, seconds
    # per-frame cost beyond what the peers' profiles measured (network stack, protocol);
    # the default stands for everything when no profile measured the wire
    frame_overhead: float = 30e-6

    def frame_time(self, nbytes: int) -> float:
        """Seconds a raw frame occupies this direction, peers' costs aside."""
        return self.frame_overhead + nbytes / self.bandwidth


@dataclass
class CostModel:
    """Everything the simulator needs to predict a plan's timeline."""

    client: PeerCosts
    server: PeerCosts
    up: Link
    down: Link
    info: dict[str, Any] = field(default_factory=dict)
    compression: str = "auto"  # the transport's LZ4 mode: "auto", "always" or "off"

    def peer(self, name: str) -> PeerCosts:
        return self.client if name == "client" else self.server

    def link_to(self, receiver: str) -> Link:
        return self.up if receiver == "server" else self.down

    def with_bandwidth(self, up: float, down: float | None = None) -> CostModel:
        return CostModel(self.client, self.server,
                         Link(up, self.up.latency, self.up.frame_overhead),
                         Link(down if down is not None else up, self.down.latency,
                              self.down.frame_overhead), dict(self.info), self.compression)

    def transfer(self, receiver: str, nbytes: int, value: str | None = None) -> tuple[float, int]:
        """(seconds a frame of ``nbytes`` raw bytes of ``value`` occupies the direction
        towards ``receiver``, bytes it puts on the wire)."""
        link = self.link_to(receiver)
        src, dst = (self.client, self.server) if receiver == "server" else (self.server, self.client)
        cpu = src.frame_cpu + dst.frame_cpu + nbytes * (src.codec_per_byte + dst.codec_per_byte)
        wire = nbytes
        ratio = None if value is None else src.lz4_ratio.get(value, dst.lz4_ratio.get(value))
        if ratio is not None:
            overhead = lz4_per_byte(src, dst, value)
            if self._compresses(nbytes, ratio, link.bandwidth, overhead):
                wire = int(nbytes * ratio)
                cpu += nbytes * overhead
        return link.frame_overhead + cpu + wire / link.bandwidth, wire

    def _compresses(self, n: int, ratio: float, bandwidth: float, overhead: float) -> bool:
        """The transport's decision (``AdaptiveCompressor``, which keeps each tensor's
        own ratio and speed) once it has learnt them."""
        if self.compression == "off" or not lz4rule.HAVE_LZ4 or n < lz4rule.DEFAULT_MIN_SIZE:
            return False
        if ratio >= lz4rule.MIN_GAIN:
            return False  # tried, did not shrink enough: sent raw
        if self.compression == "always":
            return True
        t_raw = 1 / bandwidth
        return overhead < t_raw * lz4rule.MARGIN and overhead + ratio * t_raw < t_raw * lz4rule.MARGIN


def lz4_per_byte(src: PeerCosts, dst: PeerCosts, value: str | None = None) -> float:
    """Compress on the sender plus decompress on the receiver, seconds per raw byte of
    ``value`` (the module doc; the transport's priors where no profile measured LZ4)."""
    compress = src.lz4_per_byte or 1 / lz4rule.SPEED_PRIOR
    decompress = dst.unlz4_per_byte or 1 / lz4rule.DECOMPRESS_SPEED_PRIOR
    if value is None:
        return compress + decompress
    if value in src.lz4_time and src.lz4_per_byte:
        c, d = src.lz4_time[value]
        compress = c
        if src.unlz4_per_byte:
            decompress *= d / src.unlz4_per_byte  # the receiver, as much faster on it
    elif value in dst.lz4_time and dst.lz4_per_byte:
        c, d = dst.lz4_time[value]
        compress *= c / dst.lz4_per_byte
        decompress = d if dst.unlz4_per_byte else decompress
    return compress + decompress


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


# -- measured costs as data: fitted, written, read back --------------------------------
def fit_line(points: list[tuple[int, float]]) -> NodeCost:
    """Least-squares ``fixed + per_row * rows`` through (rows, seconds), non-negative."""
    if not points:
        return NodeCost(0.0, 0.0)
    xs = [float(r) for r, _ in points]
    ys = [t for _, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return NodeCost(0.0, my / mx if mx else 0.0)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
    slope = max(slope, 0.0)
    fixed = max(my - slope * mx, 0.0)
    if fixed == 0.0:  # refit the slope through the origin
        slope = sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)
    return NodeCost(fixed, slope)


def costs_to_json(costs: PeerCosts) -> str:
    return json.dumps({"name": costs.name, "copy_per_byte": costs.copy_per_byte,
                       "nodes": {k: [v.fixed, v.per_row] for k, v in costs.nodes.items()},
                       "wire": {"frame_cpu": costs.frame_cpu,
                                "codec_per_byte": costs.codec_per_byte,
                                "lz4_per_byte": costs.lz4_per_byte,
                                "unlz4_per_byte": costs.unlz4_per_byte},
                       "lz4_ratio": costs.lz4_ratio,
                       "lz4_time": {k: list(v) for k, v in costs.lz4_time.items()}})


def costs_from_json(text: str) -> PeerCosts:
    d = json.loads(text)
    wire = {k: float(v) for k, v in d.get("wire", {}).items()
            if k in ("frame_cpu", "codec_per_byte", "lz4_per_byte", "unlz4_per_byte")}
    return PeerCosts({str(k): NodeCost(float(a), float(b)) for k, (a, b) in d["nodes"].items()},
                     float(d["copy_per_byte"]), str(d.get("name", "")), **wire,
                     lz4_ratio={str(k): float(v) for k, v in d.get("lz4_ratio", {}).items()},
                     lz4_time={str(k): (max(0.0, float(c)), max(0.0, float(t)))
                               for k, (c, t) in d.get("lz4_time", {}).items()})
