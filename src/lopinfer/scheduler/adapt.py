"""Adaptation: a book of plans over a bandwidth grid, one chosen per inference.

At deploy the client measures both peers and the link and plans for a log-spaced
grid of bandwidths around the measured one (nearest first; programs are compiled once
for the whole grid). Before each inference the session asks the book for the plan of the current
estimate; a switch needs the estimate to leave the current grid point's band by a
margin (:class:`Hysteresis`), so noise does not make plans flap. A switch happens
between inferences only: the session holds its lock across an inference.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..graph import Graph
from ..progress import progress as show_progress
from .cost import CostModel
from .energy import Objective
from .link import Hysteresis

if TYPE_CHECKING:
    from .bookstore import BookStore
from .plan import Plan
from .planners import Scored, plan_all, plan_key
from .registry import default_methods
from .search import Budget

__all__ = ["PlanBook", "Choice", "bandwidth_grid", "QUICK"]

#: the search budget of the grid point a deploy waits for (the background replans it)
QUICK = Budget(seconds=0.75)


def bandwidth_grid(center: float, *, below: float = 256.0, above: float = 16.0,
                   step: float = 2.0) -> list[float]:
    """Log-spaced bandwidths from ``center / below`` to ``center * above``, ``step``
    apart (wider below: a wireless link loses far more of its rate than it gains).
    The grid is anchored at powers of ``step`` (the centre snapped to the nearest), so
    two deploys on one link plan the same points and a stored book is found again."""
    lo = int(round(math.log(below) / math.log(step)))
    hi = int(round(math.log(above) / math.log(step)))
    anchor = step ** round(math.log(center) / math.log(step))
    return [anchor * step**k for k in range(-lo, hi + 1)]


@dataclass
class Choice:
    """The plan an inference runs and why."""

    scored: Scored
    grid_bandwidth: float
    changed: bool
    reason: str


class PlanBook:
    """Plans of every method at each grid bandwidth (computed lazily, thread-safe).

    Args:
        graph: the captured graph.
        cost: the measured cost model (its up bandwidth is the grid's centre; the
            down/up ratio measured at deploy is kept at every grid point).
        objective: what the planners minimise.
        methods: planners to run (default: the registry's defaults; the searches see
            the others as candidates).
    """

    def __init__(self, graph: Graph, cost: CostModel, objective: Objective,
                 methods: Iterable[str] | None = None,
                 *, grid: list[float] | None = None, margin: float = 0.25,
                 store: BookStore | None = None) -> None:
        self.graph, self.cost, self.objective = graph, cost, objective
        self.store = store  # plans kept on disk (None: made in this process only)
        self.methods = default_methods() if methods is None else tuple(methods)
        self.grid = sorted(grid or bandwidth_grid(cost.up.bandwidth))
        self.ratio = cost.down.bandwidth / cost.up.bandwidth
        self._plans: dict[int, dict[str, Scored]] = {}
        # equal plans planned at different bandwidths are one object, so a session's
        # per-plan caches (programs, executors with packed weights, server plan ids)
        # hit, and moving between grid points that share a plan switches nothing
        self._interned: dict[tuple, Plan] = {}
        self._lock = threading.Lock()
        self._hyst: dict[str, Hysteresis] = {}
        self.margin = margin
        # the grid bandwidth the book this one replaces ran last (None: a first book)
        self.previous_bandwidth: float | None = None
        self.far = 2  # grid steps to the nearest planned point before one is planned now
        self._quick: set[int] = set()  # points planned under QUICK, to plan again fully
        # a full search's pause point (Budget.checkpoint): set for a book filled in the
        # background, so that it yields to the process's inferences
        self.checkpoint: Callable[[], float] | None = None

    def cost_at(self, up: float) -> CostModel:
        return self.cost.with_bandwidth(up, up * self.ratio)

    def plans_at(self, index: int, *, quick: bool = False) -> dict[str, Scored]:
        """Every method's plan at grid point ``index`` (computed on first use).

        ``quick``: under :data:`QUICK` (a deploy waits for this point), or as stored so
        by an earlier book; :meth:`fill` plans such a point again with the full budget,
        and the full plans replace the quick ones in the store."""
        with self._lock:
            if index in self._plans and not (index in self._quick and not quick):
                return self._plans[index]
        cost = self.cost_at(self.grid[index])
        store = self.store
        got = store.get(self.grid[index], quick=quick) if store is not None else None
        # a quick plan, made now or stored by an earlier deploy, is planned again fully
        # by fill (stored quick ones are kept only until then: a second deploy waits
        # for nothing even when the first one's book was not filled yet)
        plans, was_quick = got if got is not None else (None, quick)
        if plans is None:  # (the methods are in the store's key)
            full = None if self.checkpoint is None else Budget(checkpoint=self.checkpoint)
            plans = plan_all(self.graph, cost, self.objective, self.methods,
                             budget=QUICK if quick else full)
            if store is not None:
                store.put(self.grid[index], plans, quick=quick)
        with self._lock:
            for scored in plans.values():  # one Plan object per distinct plan, grid-wide
                scored.plan = self._interned.setdefault(plan_key(scored.plan), scored.plan)
            if was_quick:
                self._quick.add(index)
            elif index in self._quick:  # the full search replaces the quick one
                self._quick.discard(index)
                self._plans[index] = plans
            return self._plans.setdefault(index, plans)

    def nearest(self, bandwidth: float) -> int:
        return min(range(len(self.grid)), key=lambda i: abs(math.log(self.grid[i] / bandwidth)))

    def fill(self, stop: threading.Event | None = None, progress: bool = False) -> None:
        """Compute the whole grid, nearest to the centre first (``stop`` ends it early)."""
        centre = self.nearest(self.cost.up.bandwidth)
        step = show_progress(progress, len(self.grid), "planning")
        with self._lock:
            again = sorted(self._quick)
        for i in again + sorted(range(len(self.grid)), key=lambda i: abs(i - centre)):
            if stop is not None and stop.is_set():
                return
            self.plans_at(i)
            step()

    def ready(self) -> list[int]:
        with self._lock:
            return sorted(self._plans)

    def choose(self, method: str, bandwidth: float) -> Choice:
        """The plan ``method`` runs at the estimated up ``bandwidth`` (with hysteresis).

        Only grid points already planned are candidates, so an inference never waits
        for the planner (the one nearest the deploy-time estimate always is)."""
        ready = self.ready()
        wanted = self.nearest(bandwidth)
        if not ready or min(abs(i - wanted) for i in ready) > self.far:
            # nothing planned near the estimate yet (the background has not got there):
            # a plan for a link 4x off costs more than planning this point now, quickly
            self.plans_at(wanted, quick=True)
            ready = self.ready()
        hyst = self._hyst.setdefault(method, Hysteresis([self.grid[i] for i in ready],
                                                        margin=self.margin))
        if len(hyst.grid) != len(ready):  # more grid points are planned now: widen
            cur = None if hyst.current is None else hyst.grid[hyst.current]
            hyst.grid = [self.grid[i] for i in ready]
            hyst.current = None if cur is None else hyst.grid.index(cur)
        before = hyst.current
        k, changed = hyst.choose(bandwidth)
        index = ready[k]
        with self._lock:  # as planned now: a quick point's full search is the filler's job
            scored = self._plans[index][method]
        grid_bw = self.grid[index]
        if before is None and self.previous_bandwidth is not None:  # a book made again
            why = ("bandwidth changed" if grid_bw != self.previous_bandwidth
                   else "re-planned for a peer's new speed")
            self.previous_bandwidth = None
        elif before is None:
            why = "first inference"
        elif changed:
            why = "bandwidth changed"
        else:
            why = "within the current band"
        reason = (f"{method} plan for {grid_bw / 1e6:.3g} MB/s (estimate {bandwidth / 1e6:.3g} MB/s, "
                  f"{why}); predicted {scored.latency_s * 1e3:.1f} ms")
        return Choice(scored, grid_bw, changed, reason)
