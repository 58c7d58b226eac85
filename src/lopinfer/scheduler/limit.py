"""The physical limit: the best pipeline bound over every plan this project can express.

A plan's pipeline bound is its busiest resource, ``max(device work, up bytes / B_up,
server work, down bytes / B_down)``, with arbitrarily fine tiles and no per-tile or
per-frame cost: no schedule of that plan can beat it. The limit of a (model, link)
is the least bound over the plan families the planners build (:mod:`.builders`):

- ``local`` and ``offload``;
- ``cut`` at every topological position k;
- ``split``: an intra-layer split of a run of local nodes at fraction f (rows
  ``[0, f)`` on the device, the rest on the server, at the same time), halos sent or
  recomputed, the nodes before it on the device, those after it on either peer (a cut
  and a split combined; the input lives on the device): every sub-run between a
  grid of positions of the maximal local runs with the most device work (four by
  default), f by golden-section search after a coarse grid.

The bound is computed from the plan's rows alone (no compiled program): each peer's
work is ``per_row x rows`` of every node it computes (a global node: one row);
rows a peer reads and does not compute cross the link (halos included: exactly the
rows each consumer's locality rule says it needs); outputs return to the device.
Bytes are wire bytes: LZ4's measured ratio of the value where the transport would
compress it (judged at the value's full size: fine tiles are batched in the limit).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..graph import Graph
from ..graph.locality import default_dim
from .builders import cut_plan, local_plan, local_segments, offload_plan, split_plan
from .cost import CostModel
from .plan import Plan

__all__ = ["Bound", "Limit", "plan_bound", "physical_limit"]

Interval = tuple[int, int]


@dataclass(frozen=True)
class Bound:
    """A plan's busiest resource and every resource's seconds."""

    plan: str
    client: float
    server: float
    up: float
    down: float

    @property
    def seconds(self) -> float:
        return max(self.client, self.server, self.up, self.down)


@dataclass(frozen=True)
class Limit:
    """The least bound found, the plan that has it, and how many plans were tried."""

    seconds: float
    best: Bound
    family_best: dict[str, float]
    plans: int
    plan: Plan | None = None  # the plan whose bound is the limit (rows only: one tile each)


def _merge(iv: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(i for i in iv if i[0] < i[1]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _minus(need: list[Interval], have: list[Interval]) -> int:
    """Rows of ``need`` not in ``have`` (both merged)."""
    missing = 0
    for a, b in need:
        covered = sum(max(0, min(b, y) - max(a, x)) for x, y in have)
        missing += (b - a) - covered
    return missing


class _Model:
    """Per-value sizes and wire ratios of one graph under one cost model (reused)."""

    def __init__(self, graph: Graph, cost: CostModel) -> None:
        self.graph, self.cost = graph, cost
        self.size: dict[str, int] = {}
        for name, meta in graph.inputs.items():
            d = graph.input_dims.get(name, default_dim(meta.shape))
            self.size[name] = meta.shape[d] if d is not None else 1
        for n in graph:
            self.size[n.name] = n.locality.size if n.locality else 1
        self.values = set(self.size)
        self.row_bytes: dict[str, float] = {}
        self.wire: dict[str, dict[str, float]] = {"server": {}, "client": {}}  # receiver -> value -> wire bytes per raw byte
        for name in self.values:
            nbytes = graph.meta(name).nbytes
            self.row_bytes[name] = nbytes / max(self.size[name], 1)
            for receiver in ("server", "client"):
                wire = cost.transfer(receiver, nbytes, name)[1] if nbytes else 0
                self.wire[receiver][name] = wire / nbytes if nbytes else 1.0

    def bound(self, plan: Plan) -> Bound:
        g, cost = self.graph, self.cost
        owned: dict[tuple[str, str], list[Interval]] = {}
        for name in g.inputs:
            owned[("client", name)] = [(0, self.size[name])]
        busy = {"client": 0.0, "server": 0.0}
        needed: dict[tuple[str, str], list[Interval]] = {}
        for n in g:
            rows = plan.nodes[n.name]
            for peer in ("client", "server"):
                iv = _merge(list(rows.on(peer)))
                if not iv:
                    continue
                owned[(peer, n.name)] = iv
                c = cost.peer(peer).nodes.get(n.name)
                if n.locality is None:
                    busy[peer] += c.per_row if c is not None else 0.0  # as simulator.lower_bound
                    for ref in n.refs():
                        if ref in self.values:
                            needed.setdefault((peer, ref), []).append((0, self.size[ref]))
                    continue
                if c is not None:
                    busy[peer] += c.per_row * sum(b - a for a, b in iv)
                for a, b in iv:
                    for dep, need in zip(n.locality.deps, n.locality.need(a, b)):
                        if dep.ref in self.values:
                            rng = need if need is not None else (0, self.size[dep.ref])
                            needed.setdefault((peer, dep.ref), []).append(rng)
        for out in g.outputs:  # results end on the device
            if out in self.values:
                needed.setdefault(("client", out), []).append((0, self.size[out]))
        link = {"server": 0.0, "client": 0.0}
        for (peer, ref), want in needed.items():
            missing = _minus(_merge(want), owned.get((peer, ref), []))
            if missing:
                link[peer] += missing * self.row_bytes[ref] * self.wire[peer][ref]
        return Bound(plan.name, busy["client"], busy["server"],
                     link["server"] / cost.up.bandwidth, link["client"] / cost.down.bandwidth)


    def cut_bounds(self) -> list[Bound]:
        """``bound(cut_plan(graph, k, 1))`` for every k in [0, len(graph)], in one sweep:
        a value crosses at cut k with the rows its consumers at or after k need, so
        each value adds a constant to a range of k between consecutive consumers (a
        difference array), not the whole graph again per cut (resnet152's 515 cuts took
        2.6 s one by one, the search's whole budget)."""
        g, cost = self.graph, self.cost
        n = len(g)
        pos = {name: -1 for name in g.inputs}  # graph inputs: on the device at every cut
        work = {"client": [0.0] * n, "server": [0.0] * n}
        wants: dict[str, dict[int, list[Interval]]] = {}  # value -> consumer -> rows
        for i, node in enumerate(g):
            pos[node.name] = i
            for peer in ("client", "server"):
                c = cost.peer(peer).nodes.get(node.name)
                if c is not None:
                    rows = self.size[node.name] if node.locality is not None else 1
                    work[peer][i] = c.per_row * rows
            if node.locality is None:
                for ref in node.refs():
                    if ref in self.values:
                        wants.setdefault(ref, {}).setdefault(i, []).append((0, self.size[ref]))
                continue
            for dep, need in zip(node.locality.deps, node.locality.need(0, self.size[node.name])):
                if dep.ref in self.values:
                    rng = need if need is not None else (0, self.size[dep.ref])
                    wants.setdefault(dep.ref, {}).setdefault(i, []).append(rng)
        up = [0.0] * (n + 2)  # difference arrays over k
        down = [0.0] * (n + 2)
        for value, uses in wants.items():  # every value is an input or a node's (pos)
            per_row = self.row_bytes[value] * self.wire["server"][value]
            consumers = sorted(uses)
            # rows the consumers at index >= consumers[j] need, from the last one back
            suffix: list[int] = []
            acc: list[Interval] = []
            for j in reversed(consumers):
                acc = _merge(acc + uses[j])
                suffix.append(sum(b - a for a, b in acc))
            suffix.reverse()
            lo = pos[value] + 1  # cuts after the producer: the value is on the device
            for j, user in enumerate(consumers):
                # cuts k in [lo, user]: this consumer and the later ones are on the server
                if user >= lo and suffix[j]:
                    up[lo] += suffix[j] * per_row
                    up[user + 1] -= suffix[j] * per_row
                lo = max(lo, user + 1)
        for out in g.outputs:  # results end on the device: computed on the server below k
            p = pos.get(out)
            if p is not None and p >= 0 and out in self.values:
                full = self.size[out] * self.row_bytes[out] * self.wire["client"][out]
                down[0] += full
                down[p + 1] -= full
        bounds = []
        client = 0.0
        server = sum(work["server"])
        up_now = down_now = 0.0
        for k in range(n + 1):
            up_now += up[k]
            down_now += down[k]
            bounds.append(Bound(f"cut@{k}/t1", client, server,
                                max(0.0, up_now) / cost.up.bandwidth,
                                max(0.0, down_now) / cost.down.bandwidth))
            if k < n:
                client += work["client"][k]
                server -= work["server"][k]
        return bounds


def plan_bound(graph: Graph, plan: Plan, cost: CostModel) -> Bound:
    """The pipeline bound of ``plan`` (see the module doc)."""
    return _Model(graph, cost).bound(plan)


def _golden(f: object, lo: float, hi: float, steps: int = 12) -> tuple[float, float]:
    """Minimise ``f`` on [lo, hi] (unimodal enough: a max of rising and falling terms)."""
    r = (5 ** 0.5 - 1) / 2
    a, b = lo, hi
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)  # type: ignore[operator]
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)  # type: ignore[operator]
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)  # type: ignore[operator]
    return (c, fc) if fc <= fd else (d, fd)


def physical_limit(graph: Graph, cost: CostModel, *, points: int = 6,
                   fractions: int = 6, golden: int = 5, max_runs: int = 4,
                   also: Iterable[Plan] = ()) -> Limit:
    """The least pipeline bound over the plan families of the module doc.

    ``points``: positions per maximal local run between which sub-runs are split, in
    the ``max_runs`` runs with the most device work;
    ``fractions``: the coarse grid of split fractions before ``golden`` golden-section
    steps around the best of them; ``also``: more plans (e.g. the planners' choices, so
    that the limit is never above any plan they found)."""
    m = _Model(graph, cost)
    best: dict[str, Bound] = {}
    plans: dict[str, Plan] = {}
    tried = 0

    def keep(family: str, b: Bound, make: Callable[[], Plan]) -> float:
        nonlocal tried
        tried += 1
        if family not in best or b.seconds < best[family].seconds:
            best[family], plans[family] = b, make()
        return b.seconds

    def consider(family: str, plan: Plan) -> float:
        return keep(family, m.bound(plan), lambda: plan)

    for p in also:
        consider(p.kind, p)
    consider("local", local_plan(graph))
    consider("offload", offload_plan(graph, 1))
    cuts = m.cut_bounds()  # as m.bound(cut_plan(graph, k, 1)), in one sweep
    for k in range(1, len(graph)):  # a cut's plan is made only while it is the best
        keep("cut", cuts[k], functools.partial(cut_plan, graph, k, 1))
    # the runs of local nodes with the most device work (as the planner's own search)
    runs = sorted(local_segments(graph), reverse=True, key=lambda r: sum(
        m.cost.client.task(n.name, m.size[n.name]) for n in graph.nodes[r[0]:r[1]]))
    for run_lo, run_hi in runs[:max_runs]:
        step = max(1, (run_hi - run_lo) // points)
        marks = sorted({*range(run_lo, run_hi, step), run_hi})
        for i, start in enumerate(marks):
            for stop in marks[i + 1:]:
                for halo in ("send", "recompute"):
                    for after in ("server", "client"):
                        def f(x: float, s=start, e=stop, h=halo, af=after) -> float:
                            return consider("split", split_plan(graph, x, s, e, 1, halo=h,
                                                                after=af))
                        grid = [(j + 0.5) / fractions for j in range(fractions)]
                        vals = [f(x) for x in grid]
                        j = min(range(fractions), key=vals.__getitem__)
                        _golden(f, max(0.0, grid[j] - 1 / fractions),
                                min(1.0, grid[j] + 1 / fractions), steps=golden)
    family = min(best, key=lambda k: best[k].seconds)
    top = best[family]
    return Limit(top.seconds, top, {k: v.seconds for k, v in best.items()}, tried,
                 plans[family])
