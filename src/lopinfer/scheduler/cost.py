"""Cost model: seconds per task on each peer, seconds per frame on each link direction.

A node's cost on a peer is ``fixed + per_row * rows`` (a fitted line; a global node
is one "row"). Costs come from a profile measured on the peer (see
:mod:`lopinfer.runtime.profiler`) or, before any profile, from FLOPs at a nominal
speed. A frame of ``n`` raw bytes goes through three stages, each a FIFO per direction
(:meth:`CostModel.stages`; the transport overlaps them across frames):

    encode  sender.frame_cpu + n * sender.codec_per_byte      [+ n * compress]
    wire    link.frame_overhead + wire_bytes / bandwidth, then ``latency``
    decode  receiver.frame_cpu + n * receiver.codec_per_byte  [+ n * decompress]

the bracketed parts when LZ4 pays. The peers' parts are measured by their profiles; the
link's own per-frame part is fitted from the deploy's probe. Whether a frame is
compressed follows the transport's own rule (:class:`~lopinfer.transports.AdaptiveCompressor`)
with the ratio a profile measured on that value, so ``wire_bytes`` is ``n * ratio``
when LZ4 pays and ``n`` otherwise. Ratios and LZ4 speeds depend on the data: a mostly
empty occupancy grid compresses about 10x faster per byte than an activation, and a
head's output on a camera frame to 0.43 of its size where random input gives 0.81. So
both are taken per value from the client's profile, which ran on the application's
input (the server's ran on random data: it has no input before the first
inference), else from the server's; each peer's LZ4 time for a value is its own
average scaled by how much faster or slower than average that profile found the value.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..graph import Graph
from ..transports import compression as lz4rule  # the transport's own LZ4 rule

__all__ = ["NodeCost", "PeerCosts", "Link", "CostModel", "Stages", "flop_costs", "lz4_costs"]


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


class Stages(NamedTuple):
    """Seconds of one frame's stages (see :meth:`CostModel.stages`) and its wire bytes."""

    encode: float
    wire: float
    decode: float
    wire_bytes: int


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
        """(seconds a frame of ``nbytes`` raw bytes of ``value`` takes towards
        ``receiver`` from the sender's encode to the receiver's decode, latency aside;
        bytes it puts on the wire)."""
        st = self.stages(receiver, nbytes, value)
        return st.encode + st.wire + st.decode, st.wire_bytes

    def stages(self, receiver: str, nbytes: int, value: str | None = None) -> Stages:
        """A frame's three stages: the sender encodes (and compresses), the link carries
        it, the receiver decodes (and decompresses). The transport overlaps them across
        frames (LZ4 on its codec threads while the writer sends the frame before), so
        the simulator queues each stage on its own."""
        link = self.link_to(receiver)
        src, dst = (self.client, self.server) if receiver == "server" else (self.server, self.client)
        encode = src.frame_cpu + nbytes * src.codec_per_byte
        decode = dst.frame_cpu + nbytes * dst.codec_per_byte
        wire = nbytes
        # the client's profile ran on the application's input, the server's on random
        # data (it has no input before the first inference): data-dependent LZ4 ratios
        # and speeds are taken from the client's where it has them
        ratio = None if value is None else self.client.lz4_ratio.get(
            value, self.server.lz4_ratio.get(value))
        if ratio is not None:
            compress, decompress = lz4_costs(src, dst, value, self.client)
            if self._compresses(nbytes, ratio, link.bandwidth, compress + decompress):
                wire = int(nbytes * ratio)
                encode += nbytes * compress
                decode += nbytes * decompress
        return Stages(encode, link.frame_overhead + wire / link.bandwidth, decode, wire)

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


def lz4_costs(src: PeerCosts, dst: PeerCosts, value: str | None = None,
              data: PeerCosts | None = None) -> tuple[float, float]:
    """(compress on the sender, decompress on the receiver) seconds per raw byte of
    ``value`` (the transport's priors where no profile measured LZ4): each peer's
    average LZ4 speed, scaled by how much faster or slower than
    its own average the peer whose profile saw the data (``data``, else the sender,
    else the receiver) found that value."""
    compress = src.lz4_per_byte or 1 / lz4rule.SPEED_PRIOR
    decompress = dst.unlz4_per_byte or 1 / lz4rule.DECOMPRESS_SPEED_PRIOR
    if value is None:
        return compress, decompress
    ref = next((p for p in (data, src, dst) if p is not None and value in p.lz4_time
                and p.lz4_per_byte and p.unlz4_per_byte), None)
    if ref is None:
        return compress, decompress
    c, d = ref.lz4_time[value]
    compress = c if ref is src else compress * c / ref.lz4_per_byte
    decompress = d if ref is dst else decompress * d / ref.unlz4_per_byte
    return compress, decompress


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
