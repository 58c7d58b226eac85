"""The ``lopinfer`` search: assignments ranked by their pipeline bound, branch and bound,
tiles sized per node, split fractions refined by the simulator, under a budget.

1. **Assignments** (which rows each peer computes, tiles aside): offload, a cut at every
   topological position, every server-using baseline plan (DADS's partition, ...), and
   intra-layer splits of sub-runs of the local runs with the most device work (halos
   sent or recomputed, the nodes after the split on either peer), each split's fraction
   chosen by golden-section search on the bound. The bound
   (:func:`~lopinfer.scheduler.limit.plan_bound`: the busiest resource with no per-tile
   or per-frame cost) costs no compile and never exceeds what a schedule achieves.
2. **Branch and bound**: assignments in increasing bound; one whose bound is no better
   than the best predicted latency so far is pruned, and so is every later one.
3. **Tiles per node** (:func:`retile`): node ``n`` on peer ``p`` gets
   ``alpha * sqrt(work / per-tile cost)`` tiles (its rows' seconds over the node's fixed
   per-call cost plus, where its rows cross, the link's per-frame cost), capped at
   ``max_tiles``; ``alpha`` is searched on a log2 grid by the simulator, from 1 outwards
   while it improves. Uniform counts 1 and 4 are tried too. The first
   ``Budget.wavefronts`` assignments also get tiles aligned with the wavefront of an
   input in 4, 8, 12, ... pieces (:mod:`.wavefront`) while that improves.
4. **Fractions**: the best split assignments' fractions are refined by golden-section
   search on the simulated latency (with their best ``alpha``).

The cost is bounded by :class:`Budget` (simulated candidates, seconds; the previous
grid search, run first as a seed, gets at most ``grid_share`` of the seconds); every
baseline's plan is a candidate, so the prediction is never worse than theirs. The
returned plan carries ``candidates`` (plans simulated, baselines included) and
``search_s``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import PlanError
from ..graph import Graph, Node
from ..graph.locality import default_dim
from .builders import cut_plan, local_segments, offload_plan, partition, split_plan
from .cost import CostModel
from .energy import Objective, device_energy, score
from .limit import Bound, _Model
from .plan import NodeRows, Plan
from .wavefront import align, prefix_edges
from .wavefront import merged as _merged

__all__ = ["Budget", "SearchStats", "retile", "sqrt_counts", "search", "grid"]

Interval = tuple[int, int]
Counts = Callable[[Node, str, int], int]


@dataclass(frozen=True)
class Budget:
    """At most ``candidates`` simulated plans and about ``seconds`` of search."""

    candidates: int = 600
    seconds: float = 3.0  # a deploy waits for its first grid point: keep it short
    max_tiles: int = 64
    max_runs: int = 3  # local runs whose sub-runs are split
    points: int = 4  # positions per run between which sub-runs are split
    grid: bool = True  # seed with the previous grid search's candidates (never worse)
    # the seed's share of ``seconds``: on a large graph (kapao, 250 nodes) the grid alone
    # took the whole budget and the wavefront plans 21% faster were never simulated
    grid_share: float = 0.4
    wavefronts: int = 3  # assignments (best bounds first) also tried with wavefront tiles
    # called before each candidate; returns the seconds it waited (not counted against
    # ``seconds``): a background search pauses while the process runs inferences
    checkpoint: Callable[[], float] | None = None


@dataclass
class SearchStats:
    candidates: int = 0  # plans simulated (baselines included)
    bounds: int = 0  # plans bounded (no compile)
    pruned: int = 0  # assignments never simulated: bound no better than the best
    seconds: float = 0.0
    exhausted: bool = False  # the budget ran out before the search ended
    log: list[str] = field(default_factory=list)


def retile(graph: Graph, plan: Plan, counts: Counts, *, min_rows: int = 1,
           name: str | None = None) -> Plan:
    """``plan``'s assignment with each peer's rows of each node cut into
    ``counts(node, peer, rows)`` equal tiles (at least ``min_rows`` rows each); inputs
    stream in as many pieces as their finest server reader has tiles."""
    nodes: dict[str, NodeRows] = {}
    in_tiles: dict[str, int] = {}
    for n in graph:
        rows = plan.nodes[n.name]
        if n.locality is None:
            nodes[n.name] = rows
            continue
        per: dict[str, tuple[Interval, ...]] = {}
        for peer in ("client", "server"):
            out: list[Interval] = []
            for a, b in _merged(rows.on(peer)):
                k = max(1, counts(n, peer, b - a))
                out += [(a + x, a + y) for x, y in _pairs(partition(b - a, k, min_rows))]
            per[peer] = tuple(out)
            if peer == "server" and out:
                for ref in n.refs():
                    if ref in graph.inputs:
                        in_tiles[ref] = max(in_tiles.get(ref, 1), len(out))
        nodes[n.name] = NodeRows(client=per["client"], server=per["server"])
    edges = dict(plan.input_edges)
    for ref, meta in graph.inputs.items():
        d = (getattr(graph, "input_dims", {}) or {}).get(ref, default_dim(meta.shape))
        if d is not None and ref in in_tiles:
            edges[ref] = tuple(partition(meta.shape[d], in_tiles[ref], min_rows))
    # new tiles: the scorer orders them anew
    return replace(plan, name=name or f"{plan.base_name}~retiled", nodes=nodes,
                   input_edges=edges, tiles=None, ranks={})


def _pairs(edges: list[int]) -> list[Interval]:
    return list(zip(edges, edges[1:]))


def sqrt_counts(cost: CostModel, alpha: float, max_tiles: int = 64) -> Counts:
    """``alpha * sqrt(work / per-tile cost)`` tiles, between 1 and ``max_tiles``: the
    count that balances a stage's per-tile overhead against the pipeline's fill."""
    frame = {p: cost.link_to(p).frame_overhead + cost.client.frame_cpu + cost.server.frame_cpu
             for p in ("client", "server")}

    def f(node: Node, peer: str, rows: int) -> int:
        c = cost.peer(peer).nodes.get(node.name)
        if c is None or rows <= 1:
            return 1
        over = max(c.fixed, 1e-7) + 0.5 * frame["server" if peer == "client" else "client"]
        n = alpha * math.sqrt(c.per_row * rows / over)
        return int(min(max_tiles, rows, max(1, round(n))))

    return f


def _uniform(k: int) -> Counts:
    return lambda node, peer, rows: k


def search(graph: Graph, cost: CostModel, objective: Objective,
           evaluate: Callable[[Graph, Plan, CostModel, Objective], object],
           baselines: Iterable[object] = (), budget: Budget | None = None) -> tuple[object, SearchStats]:
    """Run the search (module doc). ``evaluate`` is the planners' scorer (returns a
    ``Scored``); ``baselines`` their results. Returns (best Scored, stats)."""
    b = budget or Budget()
    t0 = time.perf_counter()
    st = SearchStats()
    pool: list = list(baselines)
    st.candidates = len(pool)

    def key(s) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        return score(objective, s.latency_s, s.energy_j)

    best = min(pool, key=key) if pool else None
    latency_only = objective.kind == "latency"

    paused = 0.0

    def out_of_budget(share: float = 1.0) -> bool:
        """Whether the budget (or the ``share`` of its seconds a phase has) is spent."""
        full = st.candidates >= b.candidates
        late = time.perf_counter() - t0 - paused > share * b.seconds
        st.exhausted = st.exhausted or full or (late and share == 1.0)
        return full or late

    def consider(plan: Plan, share: float = 1.0) -> object | None:
        nonlocal best, paused
        if b.checkpoint is not None:
            paused += b.checkpoint()
        if out_of_budget(share):
            return None
        try:
            s = evaluate(graph, plan, cost, objective)
        except PlanError:
            return None
        st.candidates += 1
        pool.append(s)
        if best is None or key(s) < key(best):
            best = s
        return s

    def lat(s: object | None) -> float:
        return math.inf if s is None else key(s)[0] + key(s)[1] * 1e-9  # type: ignore[arg-type]

    if b.grid:
        grid(graph, pool, key, lambda p: consider(p, b.grid_share), lat,
             spent=lambda: out_of_budget(b.grid_share))
        st.log.append(f"grid: {st.candidates} candidates in {time.perf_counter() - t0:.2f}s")

    m = _Model(graph, cost)

    def bound(plan: Plan) -> Bound:
        st.bounds += 1
        return m.bound(plan)

    def least_key(bd: Bound) -> tuple[float, float]:
        """The least objective key any tiling of an assignment with bound ``bd`` can
        have: the bound for latency; for energy, the device energy at the bound (each
        resource's busy time is a lower bound and the energy grows with each), so the
        assignments where the least energy lies come first, not the fastest ones."""
        if latency_only:
            return bd.seconds, 0.0
        least = device_energy(bd.seconds, bd.client, bd.up, bd.down, objective.profile)
        return score(objective, bd.seconds, least)

    # -- 1. assignments and their bounds ----------------------------------------------
    # (a cut's plan is made only if the branch and bound gets to it)
    cands: list[tuple[tuple[float, float], Plan | int, Callable[[float], Plan] | None]] = []

    keys: set[tuple] = set()

    def add(plan: Plan, refit: Callable[[float], Plan] | None = None) -> None:
        k = (tuple(sorted(plan.input_edges.items())),
             tuple((n, r.client, r.server) for n, r in plan.nodes.items()))
        if k in keys:
            return
        keys.add(k)
        try:
            cands.append((least_key(bound(plan)), plan, refit))
        except (PlanError, KeyError):
            pass

    add(offload_plan(graph, 1))
    cuts = m.cut_bounds()  # every cut's bound in one sweep
    st.bounds += len(graph) - 1
    cands += [(least_key(cuts[k]), k, None) for k in range(1, len(graph))]
    for s in list(pool):
        p = s.plan
        if p.uses_server() and p.kind not in ("offload", "cut"):
            add(p)
    runs = sorted(local_segments(graph), reverse=True, key=lambda r: sum(
        cost.client.task(n.name, m.size[n.name]) for n in graph.nodes[r[0]:r[1]]))
    split_time = 0.3 * b.seconds  # the bound phase never eats the simulator's budget
    for lo, hi in runs[:b.max_runs]:
        step = max(1, (hi - lo) // b.points)
        marks = sorted({*range(lo, hi, step), hi})
        for i, start in enumerate(marks):
            for stop in marks[i + 1:]:
                for halo in ("send", "recompute"):
                    for after in ("server", "client"):
                        if time.perf_counter() - t0 > split_time:
                            break

                        def mk(x: float, s=start, e=stop, h=halo, af=after) -> Plan:
                            return split_plan(graph, x, s, e, 1, halo=h, after=af)
                        if stop == hi and after == "client" and hi == len(graph):
                            continue  # nothing after the split: the same as after="server"
                        try:
                            fb = _golden_grid(lambda x: bound(mk(x)).seconds, 4, 3)
                        except PlanError:
                            continue
                        add(mk(fb), mk)
    def later(c: tuple) -> bool:  # offload's assignment goes first (below)
        return not (isinstance(c[1], Plan) and c[1].kind == "offload")

    cands.sort(key=lambda c: (later(c), c[0]))
    head = sum(1 for c in cands if not later(c))
    st.log.append(f"{len(cands)} assignments bounded in {time.perf_counter() - t0:.2f}s")

    # -- 2./3. branch and bound, tiles per node ---------------------------------------
    # (energy grows with busy time only where computing draws more than idling)
    energy_bounded = objective.profile.compute_w >= objective.profile.idle_w
    explored: list[tuple[float, Plan, Callable[[float], Plan] | None, Tiling]] = []
    waves = _Wavefronts(graph)
    # offload first, then the assignments in bound order while their bound can beat
    # the best; these first few get wavefront tiles (the costliest candidates to
    # simulate: only these). Streaming offload is the plan a slow link most often calls
    # for, and a cut's bound is loose (it assumes the device's rows pipeline with the
    # upload): resnet152 at 21 MB/s with the lab's profiles ranked offload behind
    # hundreds of cuts, explored 11 of them, predicted 3.5-4.7 s, and kept a cut at
    # 2568 ms, where offload~w8 is 2510 ms.
    for i, (least, assignment, refit) in enumerate(cands):
        if best is not None and (least[0] >= key(best)[0] if latency_only
                                 else energy_bounded and least >= key(best)):
            if i < head:
                continue  # offload's bound cannot win: the rest may
            st.pruned += len(cands) - i
            break
        if out_of_budget():
            break
        plan = cut_plan(graph, assignment, 1) if isinstance(assignment, int) else assignment
        tiling, top = _tile_search(graph, plan, cost, b, consider, lat,
                                   waves if i < head + b.wavefronts else None)
        explored.append((lat(top), plan, refit, tiling))

    # -- 4. fractions by the simulator for the best splits ----------------------------
    splits = sorted((e for e in explored if e[2] is not None), key=lambda e: e[0])[:2]
    for _, plan, refit, (label, tile) in splits:
        if out_of_budget():
            break
        assert refit is not None and plan.split is not None
        f0 = plan.split.fraction

        def g(x: float, refit=refit, tile=tile, label=label) -> float:
            p = refit(x)
            return lat(consider(tile(p, f"{p.name}~{label}")))
        try:
            _golden(g, max(0.01, f0 - 0.2), min(0.99, f0 + 0.2), steps=5)
        except PlanError:
            pass
    st.seconds = time.perf_counter() - t0
    if best is None:
        raise PlanError("no candidate plan")
    return best, st


Tiling = tuple[str, Callable[[Plan, str], Plan]]  # label, (assignment, name) -> tiled plan


class _Wavefronts:
    """Wavefront edges per input piece count, computed once per search."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.edges: dict[int, dict[str, list[int]]] = {}

    def tiling(self, steps: int) -> Tiling:
        def tile(plan: Plan, name: str) -> Plan:
            if steps not in self.edges:
                self.edges[steps] = prefix_edges(self.graph, steps)
            return align(self.graph, plan, steps, name=name, edges=self.edges[steps])

        return f"w{steps}", tile


def _tile_search(graph: Graph, plan: Plan, cost: CostModel, b: Budget,
                 consider: Callable[[Plan], object | None],
                 lat: Callable[[object | None], float],
                 waves: _Wavefronts | None = None,
                 ) -> tuple[Tiling, object | None]:
    """The best tiling of one assignment: uniform 1 and 4 tiles,
    then per-node counts ``alpha * sqrt(work / per-tile cost)`` with alpha from 1
    outwards on a log2 grid while it improves, then tiles aligned with the wavefront of
    an input in 4, 8, 16, ... pieces while that improves (:mod:`.wavefront`). Returns
    ((label, tiler), its Scored)."""
    tried: dict[str, tuple[Tiling, object | None]] = {}

    def counted(counts: Counts, min_rows: int) -> Callable[[Plan, str], Plan]:
        return lambda p, name: retile(graph, p, counts, min_rows=min_rows, name=name)

    def at(label: str, tile: Callable[[Plan, str], Plan]) -> float:
        s = consider(tile(plan, f"{plan.base_name}~{label}"))
        tried[label] = ((label, tile), s)
        return lat(s)

    for k in (1, 4):
        at(f"t{k}", counted(_uniform(k), 2))
    seen = {1.0: at("a1", counted(sqrt_counts(cost, 1.0, b.max_tiles), 1))}
    for direction in (2.0, 0.5):
        a = 1.0
        while 1 / 8 <= a * direction <= 16:
            a *= direction
            seen[a] = at(f"a{a:g}", counted(sqrt_counts(cost, a, b.max_tiles), 1))
            if seen[a] >= seen[a / direction]:
                break
        if len(seen) > 2:  # the first direction improved: no need to try the other
            break
    if waves is not None and plan.uses_server():
        # streamed plans: tiles that are ready with each input piece (no lag per layer)
        prev = math.inf
        for steps in (4, 8, 12, 16, 24):
            label, tile = waves.tiling(steps)
            now = at(label, tile)
            if now >= prev:
                break
            prev = now
    return min(tried.values(), key=lambda t: lat(t[1]))


def grid(graph: Graph, pool: list, key: Callable, consider: Callable[[Plan], Any],
         lat: Callable[[Any], float], spent: Callable[[], bool] = lambda: False) -> None:
    """The previous ``lopinfer`` search, as the seed: cuts x 2, 4, 8 tiles for the whole
    graph, the best cut refined, splits of the 3 longest local segments (fraction by 6
    golden-section steps on the simulator, halos sent or recomputed, the server or the
    client finishing, 1, 2 or 4 tiles). Once ``spent()``, no more plans are built (on
    resnet152, building the plans its share had no time to score took 1.5 s more)."""
    n = len(graph)
    best_k = min(pool, key=key).plan.cut if pool else None
    cuts = sorted(set(range(0, n + 1, max(1, n // 24))) | ({best_k} if best_k is not None else set()))
    for tiles in (2, 4, 8):
        consider(offload_plan(graph, tiles, min_rows=2))
        for k in cuts:
            if spent():
                return
            consider(cut_plan(graph, k, tiles, min_rows=2))
    top = min(pool, key=key) if pool else None
    if top is not None and top.plan.kind == "cut" and top.plan.cut is not None:
        k0, t0 = top.plan.cut, top.plan.tiles or 4
        for k in range(max(0, k0 - n // 24), min(n, k0 + n // 24) + 1):
            if spent():
                return
            consider(cut_plan(graph, k, t0, min_rows=2))
    for start, stop in sorted(local_segments(graph), key=lambda s: s[0] - s[1])[:3]:
        for halo in ("send", "recompute"):
            for after in ("server", "client"):
                for tiles in (1, 2, 4):
                    if spent():
                        return

                    def f(frac: float, start=start, stop=stop, halo=halo, after=after,
                          tiles=tiles) -> float:
                        if spent():
                            return math.inf
                        return lat(consider(split_plan(graph, frac, start, stop, tiles,
                                                       halo=halo, after=after, min_rows=2)))
                    _golden(f, 0.02, 0.98, steps=6, strict=True)


def _golden(f: Callable[[float], float], lo: float, hi: float, steps: int,
            strict: bool = False) -> float:
    r = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(steps):
        if (fc < fd) if strict else (fc <= fd):
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)
    return c if fc <= fd else d


def _golden_grid(f: Callable[[float], float], grid: int, steps: int) -> float:
    """A coarse grid on (0, 1), then golden-section steps around its best point."""
    xs = [(j + 0.5) / grid for j in range(grid)]
    vals = [f(x) for x in xs]
    j = min(range(grid), key=vals.__getitem__)
    return _golden(f, max(0.0, xs[j] - 1 / grid), min(1.0, xs[j] + 1 / grid), steps)
