"""Tiles aligned with the wavefront: every node's tile edges where its rows become
computable as the input arrives.

Equal tiles lag: with ``n`` equal tiles per node, tile ``k`` of a 3x3 convolution needs
one halo row of tile ``k + 1`` of its input, so each layer waits one more piece than
the one before, and the last pieces of the input leave a diagonal of work behind them
(on vgg19_bn streamed to a server, 31 ms of work after a 55 ms upload at 16 tiles).
Here the input is cut into ``steps`` pieces, and each node's tile edges are the rows
that can be computed once pieces ``0..k`` have arrived (the locality rules' ``need``,
inverted by bisection): every node's tile ``k`` is ready with the input's piece ``k``,
so the work left after the last piece is only what truly depends on it.

A node may keep fewer edges than steps (``counts``: per-tile costs), thinned evenly
from the end, so the tiles computed after the last piece stay as small as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from ..graph import Graph, Node
from ..graph.locality import default_dim
from .builders import partition
from .plan import NodeRows, Plan

__all__ = ["prefix_edges", "align", "merged"]

Interval = tuple[int, int]
Counts = Callable[[Node, str, int], int]
Steps = int | Sequence[float]  # input pieces: a count of equal ones, or relative sizes


def _input_dim(graph: Graph, ref: str) -> int | None:
    dims = getattr(graph, "input_dims", {}) or {}
    return dims[ref] if ref in dims else default_dim(graph.inputs[ref].shape)


def _count(steps: Steps) -> int:
    return steps if isinstance(steps, int) else len(steps)


def prefix_edges(graph: Graph, steps: Steps) -> dict[str, list[int]]:
    """For each tiled node (and input), the rows computable after each input piece
    (``steps`` equal pieces, or pieces of these relative sizes): a non-decreasing list
    with an entry per piece, ending at the node's size."""
    pieces = steps
    steps = _count(steps)
    avail: dict[str, list[int]] = {}  # value -> rows available after each step
    dim: dict[str, int] = {}
    done: dict[str, list[bool]] = {}  # value -> complete after each step
    for ref, meta in graph.inputs.items():
        d = _input_dim(graph, ref)
        if d is None:
            done[ref] = [True] * steps  # read whole: all of it comes at once (first piece)
            continue
        edges = partition(meta.shape[d], pieces)
        edges += [edges[-1]] * (steps + 1 - len(edges))  # fewer rows than pieces
        avail[ref], dim[ref] = edges[1:], d
        done[ref] = [e == meta.shape[d] for e in edges[1:]]
    for n in graph:
        loc = n.locality
        refs = [r for r in n.refs() if r in done]  # parameters: always there
        if loc is None:
            done[n.name] = [all(done[r][k] for r in refs) for k in range(steps)]
            continue
        rows: list[int] = []
        p = 0
        for k in range(steps):
            if any(d.dim is None and d.ref in done and not done[d.ref][k] for d in loc.deps):
                rows.append(p)
                continue
            if p < loc.size:  # complete already: nothing more to find
                p = _largest(loc, p, k, avail, dim, done)
            rows.append(p)
        avail[n.name], dim[n.name] = rows, loc.dim
        done[n.name] = [r == loc.size for r in rows]
    return avail


def _ok(loc, q: int, k: int, avail, dim, done) -> bool:  # type: ignore[no-untyped-def]
    for d, iv in zip(loc.deps, loc.need(0, q)):
        if iv is None or d.ref not in done or done[d.ref][k]:
            continue
        if d.ref not in avail or dim[d.ref] != d.dim:
            return False  # read along another dim than it arrives in: needs it whole
        if iv[1] > avail[d.ref][k]:
            return False
    return True


def _largest(loc, lo: int, k: int, avail, dim, done) -> int:  # type: ignore[no-untyped-def]
    """The most rows computable at step ``k`` (at least ``lo``: earlier steps' rows)."""
    if _ok(loc, loc.size, k, avail, dim, done):
        return loc.size
    hi = loc.size  # not ok
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _ok(loc, mid, k, avail, dim, done):
            lo = mid
        else:
            hi = mid
    return lo


def _thin(cuts: list[int], keep: int) -> list[int]:
    """At most ``keep`` tiles from ``cuts`` (edges), evenly by index, the last kept."""
    tiles = len(cuts) - 1
    if keep >= tiles:
        return cuts
    idx = sorted({tiles - round(j * tiles / keep) for j in range(keep + 1)})
    return [cuts[i] for i in idx]


def align(graph: Graph, plan: Plan, steps: Steps, counts: Counts | None = None, *,
          name: str | None = None, edges: dict[str, list[int]] | None = None) -> Plan:
    """``plan``'s assignment with each peer's rows of each node cut at the wavefront's
    edges for an input in ``steps`` pieces (at most ``counts(node, peer, rows)`` tiles
    per peer's interval when given)."""
    edges = prefix_edges(graph, steps) if edges is None else edges
    nodes: dict[str, NodeRows] = {}
    for n in graph:
        rows = plan.nodes[n.name]
        if n.locality is None or n.name not in edges:
            nodes[n.name] = rows
            continue
        marks = sorted(set(edges[n.name]))
        per: dict[str, tuple[Interval, ...]] = {}
        for peer in ("client", "server"):
            out: list[Interval] = []
            for a, b in merged(rows.on(peer)):
                cuts = [a, *(m for m in marks if a < m < b), b]
                if counts is not None:
                    cuts = _thin(cuts, max(1, counts(n, peer, b - a)))
                out += list(zip(cuts, cuts[1:]))
            per[peer] = tuple(out)
        nodes[n.name] = NodeRows(client=per["client"], server=per["server"])
    in_edges = dict(plan.input_edges)
    for ref, meta in graph.inputs.items():
        d = _input_dim(graph, ref)
        if d is not None:
            in_edges[ref] = tuple(partition(meta.shape[d], steps))
    # new tiles: the scorer orders them anew
    return replace(plan, name=name or f"{plan.base_name}~w{_count(steps)}", nodes=nodes,
                   input_edges=in_edges, tiles=None, ranks={})


def merged(iv: Iterable[Interval]) -> list[Interval]:
    """Intervals sorted, empty ones dropped, overlapping or touching ones joined."""
    out: list[Interval] = []
    for a, b in sorted(iv):
        if a == b:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
