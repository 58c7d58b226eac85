"""Hand-written plan builders: local, offload, single cut, intra-layer split.

The planners (and users) combine these; each returns a :class:`Plan` the runtime runs
unchanged. Tiles per node come from a :data:`TileSpec`: a tile count (with a minimum
tile height), relative tile sizes, explicit edges per node, or a function of the node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Union, cast

from ..errors import PlanError
from ..graph import Graph, Node
from ..graph.locality import Locality, default_dim
from .plan import WHOLE, NodeRows, Plan, Split

__all__ = [
    "TileSpec",
    "partition",
    "node_tiles",
    "local_plan",
    "offload_plan",
    "cut_plan",
    "split_plan",
]

TileSpec = Union[int, Sequence[float], Mapping[str, Sequence[int]], Callable[[Node], Sequence[int]]]  # noqa: UP007 (a runtime alias)
Interval = tuple[int, int]


def partition(size: int, tiles: int | Sequence[float], min_rows: int = 1) -> list[int]:
    """Tile edges [0, e1, ..., size] for ``tiles`` equal tiles or relative sizes.

    ``min_rows`` caps an equal split so no tile is thinner than that (tiny tiles of
    small late feature maps cost more per row than they pipeline)."""
    if isinstance(tiles, int):
        if tiles < 1:
            raise ValueError(f"tile count must be >= 1, got {tiles}")
        tiles = max(1, min(tiles, size // max(1, min_rows)))
        weights: Sequence[float] = [1.0] * tiles
    else:
        weights = list(tiles)
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"tile sizes must be non-negative with a positive sum: {tiles}")
    total = float(sum(weights))
    edges, acc = [0], 0.0
    for w in weights:
        acc += w
        edges.append(round(acc / total * size))
    edges[-1] = size
    return sorted(set(edges))


def _edges(node: Node, lo: int, hi: int, spec: TileSpec, min_rows: int) -> list[int]:
    if callable(spec):
        edges = list(spec(node))
    elif isinstance(spec, Mapping):
        assert node.locality is not None  # node_tiles asks only for local nodes
        edges = list(spec[node.name]) if node.name in spec else [0, node.locality.size]
    else:
        edges = [lo + e for e in partition(hi - lo, spec, min_rows)]  # type: ignore[arg-type]
        return edges
    edges = [e for e in edges if lo <= e <= hi]
    edges = sorted(set([lo, *edges, hi]))
    return edges


def node_tiles(node: Node, spec: TileSpec = 1, min_rows: int = 1,
               rows: Interval | None = None) -> tuple[Interval, ...]:
    """Tiles of ``node`` over ``rows`` (default: all its rows); a global node is WHOLE."""
    loc = node.locality
    if loc is None:
        return (WHOLE,)
    lo, hi = rows if rows is not None else (0, loc.size)
    if lo >= hi:
        return ()
    edges = _edges(node, lo, hi, spec, min_rows)
    if edges[0] != lo or edges[-1] != hi or any(x >= y for x, y in zip(edges, edges[1:])):
        raise ValueError(f"bad tile edges for {node.name} (rows [{lo}, {hi})): {edges}")
    return tuple(zip(edges, edges[1:]))


def _input_edges(graph: Graph, tiles: TileSpec, min_rows: int) -> dict[str, tuple[int, ...]]:
    out = {}
    n = tiles if isinstance(tiles, int) else (len(tiles) if isinstance(tiles, Sequence) else 1)
    for name, meta in graph.inputs.items():
        d = (getattr(graph, "input_dims", {}) or {}).get(name, default_dim(meta.shape))
        if d is not None:
            out[name] = tuple(partition(meta.shape[d], n, min_rows))
    return out


def local_plan(graph: Graph, tiles: TileSpec = 1, min_rows: int = 1) -> Plan:
    """Everything on the client (the no-server baseline, and the tiled executor)."""
    nodes = {n.name: NodeRows(client=node_tiles(n, tiles, min_rows)) for n in graph}
    return Plan("local" if tiles == 1 else f"local/t{tiles}", nodes, kind="local",
                tiles=_count(tiles))


def offload_plan(graph: Graph, tiles: TileSpec = 4, min_rows: int = 1) -> Plan:
    """Everything on the server; the input streams up in tiles, the output comes back."""
    nodes = {n.name: NodeRows(server=node_tiles(n, tiles, min_rows)) for n in graph}
    return Plan(f"offload/t{tiles}" if tiles != 1 else "offload", nodes,
                _input_edges(graph, tiles, min_rows), kind="offload", tiles=_count(tiles))


def cut_plan(graph: Graph, k: int, tiles: TileSpec = 4, min_rows: int = 1) -> Plan:
    """Nodes [0, k) on the client, nodes [k, end) on the server (a topological cut):
    the values that cross stream tile by tile, so both sides pipeline."""
    if not 0 <= k <= len(graph):
        raise PlanError(f"cut position {k} outside [0, {len(graph)}]")
    nodes = {}
    for i, n in enumerate(graph):
        t = node_tiles(n, tiles, min_rows)
        nodes[n.name] = NodeRows(client=t) if i < k else NodeRows(server=t)
    return Plan(f"cut@{k}/t{tiles}", nodes, _input_edges(graph, tiles, min_rows), kind="cut",
                tiles=_count(tiles), cut=k)


def split_plan(graph: Graph, fraction: float, start: int, stop: int, tiles: TileSpec = 2,
               *, halo: str = "send", before: str = "client", after: str = "server",
               min_rows: int = 1) -> Plan:
    """Intra-layer split of the local segment ``graph.nodes[start:stop]``: the client
    computes the first ``fraction`` of each node's rows, the server the rest, at the
    same time. Nodes before the segment run on ``before``, after it on ``after``.

    ``halo="send"``: rows each side needs from the other's part cross the link;
    ``halo="recompute"``: both sides extend their rows through the segment (the server
    backwards, the client forwards) so that nothing crosses inside it: each recomputes
    the overlap, and only the segment's input rows and its last node's rows cross."""
    if halo not in ("send", "recompute"):
        raise PlanError(f"halo must be 'send' or 'recompute', got {halo!r}")
    if not 0.0 <= fraction <= 1.0:
        raise PlanError(f"split fraction {fraction} outside [0, 1]")
    seg = graph.nodes[start:stop]
    glob = [n.name for n in seg if n.locality is None]
    if glob:
        raise PlanError(f"split segment [{start}, {stop}) holds global node {glob[0]}")
    # every node of the segment is local (checked above)
    cut = {n.name: round(fraction * cast(Locality, n.locality).size) for n in seg}
    server_lo = dict(cut)
    client_hi = dict(cut)
    if halo == "recompute":
        in_seg = {n.name for n in seg}
        for node in reversed(seg):
            assert node.locality is not None
            lo, hi = server_lo[node.name], node.locality.size
            if lo < hi:
                for dep, need in zip(node.locality.deps, node.locality.need(lo, hi)):
                    if dep.ref in in_seg and need is not None:
                        server_lo[dep.ref] = min(server_lo[dep.ref], need[0])
            top = client_hi[node.name]
            if top > 0:
                for dep, need in zip(node.locality.deps, node.locality.need(0, top)):
                    if dep.ref in in_seg and need is not None:
                        client_hi[dep.ref] = max(client_hi[dep.ref], need[1])
    nodes = {}
    for i, n in enumerate(graph):
        t = node_tiles(n, tiles, min_rows)
        if i < start:
            nodes[n.name] = NodeRows(**{before: t})
        elif i >= stop:
            nodes[n.name] = NodeRows(**{after: t})
        else:
            assert n.locality is not None
            size = n.locality.size
            nodes[n.name] = NodeRows(
                client=node_tiles(n, tiles, min_rows, (0, client_hi[n.name])),
                server=node_tiles(n, tiles, min_rows, (server_lo[n.name], size)),
            )
    name = f"split[{start}:{stop}]@{fraction:g}/{halo}/t{tiles}"
    return Plan(name, nodes, _input_edges(graph, tiles, min_rows), kind="split",
                tiles=_count(tiles), split=Split(fraction, start, stop, halo))


def _count(tiles: TileSpec) -> int | None:
    """The tile count of a uniform spec (None for sizes, edges or a function)."""
    return tiles if isinstance(tiles, int) else None


def local_segments(graph: Graph) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of consecutive local nodes (candidates for splits)."""
    runs, start = [], None
    for i, n in enumerate(graph):
        if n.locality is not None and start is None:
            start = i
        elif n.locality is None and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(graph)))
    return runs


__all__ += ["local_segments"]
