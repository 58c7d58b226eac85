"""Adaptation: a book of plans over a bandwidth grid, one chosen per inference.

At deploy the client measures both peers and the link and plans for a log-spaced
grid of bandwidths around the measured one (nearest first; programs are compiled once
for the whole grid). Before each inference the session asks the book for the plan of the current
estimate; a switch needs the estimate to leave the current grid point's band by a
margin (:class:`Hysteresis`), so noise does not make plans flap. A switch happens
between inferences only: the session holds its lock across an inference.

A grid point is up to 1.4x from the estimate, and the best plan there need not be the
best at the estimate (densenet121 at 21 MB/s: DADS's partition, planned at a
neighbouring point, predicted 1.7% faster than the searched plan of the point held).
So a searching method's choice is re-scored at the estimate (quantised to
:data:`ESTIMATE_STEP`): every method's plan at the ready points around it and at the
point held, simulated at the estimate, the best taken. That runs on a background
thread after the inference that asked (cached per quantised estimate), never on the
inference's path.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..graph import Graph
from ..log import logger
from ..progress import progress as show_progress
from .cost import CostModel
from .energy import Objective, score
from .link import Hysteresis

if TYPE_CHECKING:
    from .bookstore import BookStore
from .plan import Plan
from .planners import Scored, evaluate, plan_all, plan_key
from .registry import default_methods, registered
from .search import Budget

__all__ = ["PlanBook", "Choice", "bandwidth_grid", "QUICK", "ESTIMATE_STEP"]

log = logger("scheduler")

#: the search budget of the grid point a deploy waits for (the background replans it)
QUICK = Budget(seconds=0.75)
#: estimates are re-scored on a grid 2^(1/8) apart (9%): much finer than the book's 2x,
#: coarse enough that a noisy estimate costs a handful of re-scorings per session
ESTIMATE_STEP = 2.0 ** 0.125
#: a re-scored plan replaces the one running only when predicted this much better
STICK = 0.01
_RESCORED_MAX = 256  # (method, estimate, point) entries kept per book


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
        # re-scoring at the estimate: "background" (after the inference that asked),
        # "now" (on the caller's thread: tests, planning tools) or "off"
        self.rescoring = "background"
        # waits while inferences run (the runtime sets it); the re-scorer calls it
        # before each simulation, as the filler does before each candidate
        self.wait_idle: Callable[[], float] | None = None
        self._version = 0  # bumped whenever a point's plans change: stale re-scorings miss
        self._rescored: OrderedDict[tuple, tuple[Objective, list[Scored]]] = OrderedDict()
        self._running: dict[str, Scored] = {}  # each method's last choice
        self._queued: set[tuple] = set()
        self._jobs: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

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
                self._version += 1
            if index not in self._plans:
                self._version += 1
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
        at_estimate = self._at_estimate(method, bandwidth, index)
        if at_estimate is not None:
            scored = at_estimate
        prev = self._running.get(method)
        changed = changed or (prev is not None and prev.plan is not scored.plan)
        self._running[method] = scored
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
        picked = "" if at_estimate is None else f", re-scored at the estimate: {scored.plan.name}"
        reason = (f"{method} plan for {grid_bw / 1e6:.3g} MB/s (estimate {bandwidth / 1e6:.3g} MB/s, "
                  f"{why}{picked}); predicted {scored.latency_s * 1e3:.1f} ms")
        return Choice(scored, grid_bw, changed, reason)

    # -- re-scoring at the estimate ---------------------------------------------------
    def _estimate_key(self, method: str, bandwidth: float, index: int) -> tuple:
        """(method, quantum: the estimate is ESTIMATE_STEP ** quantum, point, version)"""
        quantum = round(math.log(bandwidth) / math.log(ESTIMATE_STEP))
        return (method, quantum, index, self._version)

    def _at_estimate(self, method: str, bandwidth: float, index: int) -> Scored | None:
        """The plan ``method`` runs at the estimate (None: the grid point's, as planned):
        the best re-scored candidate, unless the one running is within :data:`STICK`."""
        info = registered().get(method)
        if self.rescoring == "off" or info is None or not info.searches:
            return None  # a classic method runs its own plan, as its papers do
        key = self._estimate_key(method, bandwidth, index)
        with self._lock:
            hit = self._rescored.get(key)
            if hit is not None:
                self._rescored.move_to_end(key)
        if hit is None and self.rescoring == "now":
            hit = self.rescore(method, bandwidth, index)
        elif hit is None:
            self._submit(key, (method, bandwidth, index))
            # meanwhile the ranking of the next quantum, if there is one: an estimate
            # that wobbles across a quantum's edge does not flap back to the grid's plan
            m, n, i, v = key
            with self._lock:
                hit = self._rescored.get((m, n + 1, i, v)) or self._rescored.get((m, n - 1, i, v))
        if hit is None or not hit[1]:
            return None
        objective, ranked = hit
        best = ranked[0]
        running = self._running.get(method)
        for s in ranked:  # the plan running, re-scored, if it still is a candidate
            if running is not None and s.plan is running.plan:
                if _within(objective, s, best):
                    return s
                break
        return best

    def rescore(self, method: str, bandwidth: float, index: int,
                ) -> tuple[Objective, list[Scored]] | None:
        """``method``'s candidates at ``bandwidth`` (quantised), best first: every
        method's plan at grid point ``index`` and at the ready points either side of
        the estimate, simulated there (cached; None: nothing to re-score)."""
        key = self._estimate_key(method, bandwidth, index)
        q = ESTIMATE_STEP ** key[1]
        ready = self.ready()
        below = [i for i in ready if self.grid[i] <= q]
        above = [i for i in ready if self.grid[i] >= q]
        points = {index} | ({below[-1]} if below else set()) | ({above[0]} if above else set())
        with self._lock:
            sets = [self._plans[i] for i in sorted(points) if i in self._plans]
        plans = {id(s.plan): s.plan for plans in sets for s in plans.values()}
        cost = self.cost_at(q)
        objective = self.objective
        if method == "lopinfer-energy" and not any("offload" in p for p in sets):
            return None  # its deadline is offload's latency at the estimate
        # a Scored depends on the objective's device profile only: each plan once
        scored = {k: self._evaluate(p, cost, objective) for k, p in plans.items()}
        if method == "lopinfer-energy":  # its goal: the least energy no slower than offload
            deadline = min(scored[id(p["offload"].plan)].latency_s for p in sets if "offload" in p)
            objective = Objective("energy", deadline, objective.profile)
        ranked = sorted(scored.values(), key=lambda s: score(objective, s.latency_s, s.energy_j))
        with self._lock:
            self._rescored[key] = (objective, ranked)
            while len(self._rescored) > _RESCORED_MAX:
                self._rescored.popitem(last=False)
        return objective, ranked

    def settle(self, timeout: float = 30.0) -> bool:
        """Wait until no re-scoring is queued (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queued:
                    return True
            time.sleep(0.01)
        return False

    def _evaluate(self, plan: Plan, cost: CostModel, objective: Objective) -> Scored:
        if self.wait_idle is not None and threading.current_thread() is self._worker:
            self.wait_idle()  # a simulation holds the GIL: not while an inference runs
        return evaluate(self.graph, plan, cost, objective)

    def _submit(self, key: tuple, job: tuple) -> None:
        with self._lock:
            if key in self._queued:
                return
            self._queued.add(key)
            self._jobs.put((key, job))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._rescore_jobs, daemon=True,
                                                name="lopinfer-rescore")
                _RESCORERS.append(self._worker)
                self._worker.start()

    def _rescore_jobs(self) -> None:
        """The re-scorer's thread: jobs until none came for a few seconds, at the lowest
        CPU priority (as the background filler)."""
        with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while not _SHUTDOWN.is_set():
            try:
                job = self._jobs.get(timeout=5.0)
            except queue.Empty:
                with self._lock:  # a job put meanwhile starts a new worker
                    if self._jobs.empty():
                        self._worker = None
                        return
                continue
            key, args = job
            try:
                self.rescore(*args)
            except Exception as exc:  # a failed re-scoring leaves the grid point's plan
                log.warning("re-scoring plans at the estimate failed: %s", exc)
            finally:
                with self._lock:
                    self._queued.discard(key)


def _within(objective: Objective, candidate: Scored, best: Scored) -> bool:
    """``candidate`` scores within :data:`STICK` of ``best`` (no switch for noise)."""
    a = score(objective, candidate.latency_s, candidate.energy_j)
    b = score(objective, best.latency_s, best.energy_j)
    if objective.kind == "latency":
        return a[0] <= b[0] * (1 + STICK)
    return a[0] == b[0] and a[1] <= b[1] * (1 + STICK)


_RESCORERS: list[threading.Thread] = []
_SHUTDOWN = threading.Event()


@atexit.register
def _stop_rescorers() -> None:
    """Re-scorers end before the interpreter does (torch at shutdown aborts)."""
    _SHUTDOWN.set()
    for thread in _RESCORERS:
        thread.join(timeout=5)
