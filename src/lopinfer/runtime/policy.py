"""The adaptive policy of a session: which plan to run at the link's current speed.

It holds what a deploy measured (the cost model), the plans per bandwidth (the plan
book), the link estimators fed by every inference's transfers, and the re-probe
cadence while a local plan moves nothing over the link. It decides; the session runs
what it decides (policy apart from mechanism).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import LopInferError, PlanError
from ..graph import Graph
from ..log import logger
from ..scheduler.cost import CostModel, Link, PeerCosts
from ..scheduler.energy import DEVICE_PROFILES, DeviceProfile, Objective, device_energy
from ..scheduler.link import LinkEstimator
from ..scheduler.plan import Plan
from ..scheduler.registry import available, default_methods
from ..scheduler.speed import SpeedTracker
from .report import Report

if TYPE_CHECKING:  # the planners import the runtime's program compiler: no cycle at runtime
    from ..scheduler.adapt import Choice, PlanBook
    from .client import Client
    from .measure import LinkProbe
    from .program import Bound

__all__ = ["AdaptivePolicy", "objective_from", "REPROBE_S"]

log = logger("client")

REPROBE_S = 5.0  # while a local plan runs, re-measure the link this often
PROBE_REUSE_S = 60.0  # a deploy this soon after another on one client reuses its probe


_FILLERS: list[tuple[threading.Event, threading.Thread]] = []


class Foreground:
    """Inferences in flight in this process. Background planning is a thread of this
    process, so it holds the GIL between the kernels of an inference's worker: each
    kernel then waits up to the switch interval (5 ms) for it (a 1 ms local inference of
    a small net measured 35-250 ms while a book filled). The filler pauses before each
    candidate plan while any inference runs, for at most ``MAX_PAUSE_S`` at a time (a
    robot inferring back to back still gets its book filled between frames)."""

    MAX_PAUSE_S = 0.5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._idle = threading.Event()
        self._idle.set()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        with self._lock:
            self._running += 1
            self._idle.clear()
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._idle.set()

    def wait_idle(self) -> float:
        """Wait (bounded) until no inference runs; the seconds waited."""
        if self._idle.is_set():
            return 0.0
        t0 = time.perf_counter()
        self._idle.wait(self.MAX_PAUSE_S)
        return time.perf_counter() - t0


FOREGROUND = Foreground()


@atexit.register
def _stop_fillers() -> None:
    """Background planners stop before the interpreter does (torch at shutdown aborts)."""
    for stop, _ in _FILLERS:
        stop.set()
    for _, thread in _FILLERS:
        thread.join(timeout=10)


def _start_filler(book: PlanBook, stop: threading.Event, progress: bool,
                  limits: dict[int, float]) -> None:
    _FILLERS[:] = [(e, t) for e, t in _FILLERS if t.is_alive()]
    thread = threading.Thread(target=_fill_quietly, args=(book, stop, progress, limits),
                              name="lopinfer-planner", daemon=True)

    def pause() -> float:  # only the filler pauses: a point planned for an inference does not
        if threading.current_thread() is not thread:
            return 0.0
        if stop.is_set():  # a closed session's search ends now, not at its budget's end
            raise _Stopped
        return FOREGROUND.wait_idle()

    book.checkpoint = pause
    _FILLERS.append((stop, thread))
    thread.start()


class _Stopped(Exception):
    """A background search given up (its session closed or re-planned)."""


def _fill_quietly(book: PlanBook, stop: threading.Event, progress: bool,
                  limits: dict[int, float]) -> None:
    """Fill ``book`` on this thread at the lowest CPU priority (Linux: per thread), so the
    inferences running meanwhile keep the CPU, then find the physical limit at the
    book's cost model (reports quote it); ``stop`` ends it early."""
    from ..scheduler.limit import physical_limit

    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    try:
        book.fill(stop, progress)
        if not stop.is_set():
            limits[id(book.cost)] = physical_limit(book.graph, book.cost).seconds
    except _Stopped:
        pass
    except Exception as exc:  # a background planning failure costs only its grid points
        log.warning("background planning stopped: %s", exc)


def objective_from(objective: str | Objective, deadline_s: float | None,
                   device_profile: str | DeviceProfile | None) -> Objective:
    """An Objective from deploy()'s arguments (energy under a deadline when given one).

    Raises:
        LopInferError: an unknown device profile name.
    """
    if isinstance(device_profile, str):
        if device_profile not in DEVICE_PROFILES:
            raise LopInferError(f"unknown device profile {device_profile!r}; known: "
                                f"{sorted(DEVICE_PROFILES)}")
        device_profile = DEVICE_PROFILES[device_profile]
    obj = Objective.parse(objective, device_profile)
    if deadline_s is not None or (device_profile is not None and isinstance(objective, str)):
        obj = Objective(obj.kind, deadline_s if deadline_s is not None else obj.deadline_s,
                        device_profile or obj.profile)
    return obj


class AdaptivePolicy:
    """Measurements, plan book and link estimates of one deployed graph.

    Attributes:
        planner: the planner whose plans are chosen (None: the caller gave the plan).
        adapt: whether the plan follows the bandwidth estimate between inferences.
        cost: the measured cost model, or None before measuring.
        book: the plans per bandwidth, or None.
        choice: the last choice made from the book.
        up, down: the link estimators (bytes/s).
    """

    def __init__(self, graph: Graph, objective: Objective | str = "latency", *,
                 planner: str | None = None, adapt: bool = False) -> None:
        self.graph = graph
        self.objective = Objective.parse(objective)
        self.planner, self.adapt = planner, adapt
        self.cost: CostModel | None = None
        self.book: PlanBook | None = None
        self.choice: Choice | None = None
        self.up = LinkEstimator()
        self.down = LinkEstimator()
        self.reprobe_s = REPROBE_S
        self.last_link_sample = time.monotonic()
        self.stop = threading.Event()  # set at close (close()): background planning stops
        self._fill_stop = threading.Event()  # set when the book being filled is replaced
        self.base_cost: CostModel | None = None  # as measured at deploy (speed factor 1)
        self.methods: tuple[str, ...] = ()
        self.grid: list[float] | None = None
        self.graph_hash: str | None = None  # the deploy's content hash: keys stored books
        self.speed = SpeedTracker()
        self._pending_costs: CostModel | None = None
        self._replan: asyncio.Task | None = None  # a book being made for a new speed
        self.store_hits = 0
        self.timings: dict[str, float] = {}
        self._warm: set[int] = set()  # programs run once already
        self.limits: dict[int, float] = {}  # id(cost model) -> its physical limit (s)
        # how each book re-scores plans at the estimate (PlanBook.rescoring): benchmarks
        # set "now", so that no thread runs beside a timed inference, books made again too
        self.rescoring = "background"

    def reset(self, graph: Graph) -> None:
        """Forget what was planned: ``graph`` has another structure (the estimators
        stay: the link did not change with the model)."""
        self.graph = graph
        self._fill_stop.set()  # also drops a re-plan in progress (it checks it)
        self.book, self.cost, self.choice, self.base_cost = None, None, None, None
        self.graph_hash, self._pending_costs = None, None

    def close(self) -> None:
        """Stop background planning."""
        self.stop.set()
        self._fill_stop.set()

    def pin(self) -> None:
        """Stop adapting: the caller chose the plan."""
        self.adapt, self.choice = False, None

    def profile_client(self, client: Client, progress: bool = False,
                       inputs: tuple[Any, ...] | None = None) -> asyncio.Future:
        """Start measuring this peer's costs on its worker (a deploy starts it before the
        upload, which it overlaps); :meth:`measure` takes the future. ``inputs``: the
        application's example, so that the LZ4 ratios the plans count on are those of
        its data (random input, else: a camera frame's head outputs compress to 0.43,
        random ones to 0.81)."""
        from .profiler import profile

        graph = self.graph
        return asyncio.wrap_future(client.worker.submit(
            lambda: profile(graph, inputs, progress=progress, name="client")))

    @staticmethod
    async def probe(client: Client) -> LinkProbe:
        """The link, probed now, or as probed moments ago on this client's connection."""
        from .measure import probe_link

        recent = client.last_probe
        if recent is not None and time.monotonic() - recent[0] < PROBE_REUSE_S:
            return recent[1]
        probe = await probe_link(client)
        client.last_probe = (time.monotonic(), probe)
        return probe

    async def measure(self, client: Client, *, client_costs: PeerCosts | None = None,
                      grid: list[float] | None = None, progress: bool = False,
                      extra_methods: tuple[str, ...] = (),
                      mine: asyncio.Future | None = None,
                      server: PeerCosts | None = None) -> None:
        """Profile both peers (in parallel; ``mine``: this peer's profile, started
        already; ``server``: the server's, kept from an earlier deploy) and probe the
        link, plan the probed bandwidth, and fill the rest of the plan book in the
        background."""
        from .measure import server_costs

        graph = self.graph
        t0 = time.perf_counter()
        if client_costs is None and mine is None:  # measured here, while the server measures
            mine = self.profile_client(client, progress)
        try:
            theirs = server if server is not None else await server_costs(client)
        finally:
            ccosts = await mine if mine is not None else client_costs
        assert ccosts is not None
        t1 = time.perf_counter()
        probe = await self.probe(client)
        self.seed(probe)
        t2 = time.perf_counter()
        self.base_cost = CostModel(ccosts, theirs, Link(probe.up, probe.rtt / 2, probe.up_frame_s),
                                   Link(probe.down, probe.rtt / 2, probe.down_frame_s),
                                   info={"probe": repr(probe)}, compression=client.compression)
        assert self.planner is not None
        methods: tuple[str, ...] = default_methods() if self.planner == "lopinfer" \
            else (self.planner,)
        methods += tuple(m for m in extra_methods if m not in methods)
        self.methods = tuple(m for m in methods if available(m))  # e.g. dads without networkx
        self.grid = grid
        self.speed = SpeedTracker()
        if client_costs is not None:  # the caller's costs (e.g. an emulated device) stand
            self.speed.followed.discard("client")
        await self._new_book(self.base_cost, progress)
        self.timings = {"profiles_s": t1 - t0, "probe_s": t2 - t1,
                        "plan_s": time.perf_counter() - t2}
        log.info("measured and planned %s in %.2f s (profiles %.2f s, link probe %.2f s, "
                 "first plan %.2f s%s)", graph.name, time.perf_counter() - t0,
                 *self.timings.values(),
                 ", from the plan cache" if self.store_hits else "")

    async def _new_book(self, cost: CostModel, progress: bool = False) -> None:
        """A plan book for ``cost``: the grid point nearest the estimate now (what the
        next inference runs), the others in the background at low priority. The book
        in use until then stays in use (it is replaced once the first point is ready)."""
        from ..scheduler.adapt import PlanBook
        from ..scheduler.bookstore import BookStore, book_key

        self._fill_stop.set()  # an older book's filling is of no use any more
        self._fill_stop = stop = threading.Event()
        store = None
        if self.graph_hash is not None:
            store = BookStore(book_key(self.graph_hash, cost, self.objective, self.methods))
        book = PlanBook(self.graph, cost, self.objective, self.methods, grid=self.grid,
                        store=store)
        book.wait_idle = FOREGROUND.wait_idle  # re-scoring at the estimate yields too
        book.rescoring = self.rescoring
        if self.choice is not None:
            book.previous_bandwidth = self.choice.grid_bandwidth
        first = book.nearest(self.link_estimate(cost))
        await asyncio.to_thread(lambda: book.plans_at(first, quick=self.adapt))
        if stop.is_set():  # reset or closed meanwhile: this book is of no use
            return
        self.cost, self.book = cost, book
        self.store_hits = store.hits if store is not None else 0
        if self.adapt:
            _start_filler(book, stop, progress, self.limits)

    def observe(self, report: Report, program: Bound | None) -> bool:
        """Compare this inference's compute spans with what the profile predicted; when
        a peer's speed has moved beyond the margin, re-plan for it (True: a new book)."""
        base = self.base_cost
        if base is None or program is None or report.fell_back or self.book is None:
            return False
        if id(program) not in self._warm:  # a program's first run warms caches and pools
            self._warm.add(id(program))
            return False
        tasks = program.tasks
        sums = {"client": [0.0, 0.0], "server": [0.0, 0.0]}  # predicted, measured
        for span in report.timeline:
            peer = span["peer"]
            if peer not in sums or span["kind"] not in ("tile", "whole", "compute"):
                continue
            tid = span["task"]
            if not 0 <= tid < len(tasks) or tasks[tid].kind not in ("tile", "whole"):
                continue
            t = tasks[tid]
            sums[peer][0] += base.peer(peer).task(t.value, t.b - t.a if t.kind == "tile" else 1)
            sums[peer][1] += span["end"] - span["start"]
        for peer, (predicted, measured) in sums.items():
            self.speed.observe(peer, predicted, measured)
        factors = self.speed.drifted()
        if factors is None or not self.adapt or self.planner is None:
            return False
        log.info("peer speed moved (client x%.2f, server x%.2f of the profile): re-planning",
                 factors["client"], factors["server"])
        self.speed.replanned(factors)
        self._pending_costs = CostModel(
            base.client.scaled(factors["client"]), base.server.scaled(factors["server"]),
            base.up, base.down, dict(base.info), base.compression)
        return True

    async def replan_if_needed(self) -> None:
        """Start making the book a peer's new speed asked for, in the background: the
        inferences meanwhile run the current book's plans (planning its first point
        took 0.2-1.7 s on the test VGG, a stall no robot loop should see), and the next
        choice after it is ready uses the new one."""
        if self._replan is not None and not self._replan.done():
            return  # one at a time: a newer speed waits in _pending_costs
        cost, self._pending_costs = self._pending_costs, None
        if cost is not None:
            self._replan = asyncio.get_running_loop().create_task(self._replan_for(cost))

    async def _replan_for(self, cost: CostModel) -> None:
        try:
            await self._new_book(cost)
        except Exception as exc:  # the current book stays: a failed re-plan costs nothing
            log.warning("re-planning for a peer's new speed failed: %s", exc)

    async def replanned(self) -> None:
        """Wait for a re-plan in progress (tests, benchmarks)."""
        if self._replan is not None:
            await asyncio.shield(self._replan)

    async def choose(self, *, force: bool = False) -> Plan | None:
        """The plan for the current bandwidth estimate, or None when not adapting."""
        if self.book is None or self.planner is None or (not self.adapt and not force):
            return None
        choice = await asyncio.to_thread(self.book.choose, self.planner, self.link_estimate())
        self.choice = choice
        return choice.scored.plan

    def use_planner(self, method: str) -> None:
        """Choose with ``method``'s plans from now on.

        Raises:
            PlanError: ``method`` is not in the plan book.
        """
        if self.book is None or method not in self.book.methods:
            raise PlanError(f"planner {method!r} is not in this session's plan book "
                            f"({self.book.methods if self.book else 'none: deploy with a planner'})")
        self.planner, self.adapt = method, True

    # -- the link -------------------------------------------------------------------------
    def seed(self, probe: LinkProbe) -> None:
        """Restart the estimators from an active probe."""
        self.up, self.down = LinkEstimator(probe.up), LinkEstimator(probe.down)
        self.feed(probe.up_samples, probe.down_samples)  # the window outliers are judged by
        self.up.bandwidth, self.down.bandwidth = probe.up, probe.down  # ... the probe's median
        self.up.observe_rtt(probe.rtt)
        self.last_link_sample = time.monotonic()

    def feed(self, up: list, down: list) -> None:
        """Passive samples ``(bytes, seconds)`` from an inference's transfers."""
        took = [self.up.observe(int(n), float(t)) for n, t in up]
        took += [self.down.observe(int(n), float(t)) for n, t in down]
        if any(took):
            self.last_link_sample = time.monotonic()

    async def reprobe_if_stale(self, client: Client, plan: Plan | None) -> None:
        """A local plan moves no tiles, so nothing measures the link: probe it now and
        then, so that a link that got better is noticed."""
        if plan is None or plan.uses_server():
            return
        if time.monotonic() - self.last_link_sample < self.reprobe_s:
            return
        from .measure import probe_link

        probe = await probe_link(client, max_seconds=0.5)
        self.feed(probe.up_samples, probe.down_samples)
        self.last_link_sample = time.monotonic()

    def link_estimate(self, cost: CostModel | None = None) -> float:
        """The up bandwidth the plans are chosen by: each direction's estimate relative
        to the deploy-time probe (``cost``'s links, default the book's), the worse of
        the two (a link degrades both ways)."""
        cost = cost or self.cost
        assert cost is not None
        probe_up, probe_down = cost.up.bandwidth, cost.down.bandwidth
        f_up = (self.up.bandwidth or probe_up) / probe_up
        f_down = (self.down.bandwidth or probe_down) / probe_down
        return probe_up * min(f_up, f_down)

    def lz4_bandwidth(self) -> float:
        """The up rate the transport's LZ4 decision uses: this estimate, the rate the
        planner assumed, so that frames are compressed as the plan predicted."""
        est = self.up.bandwidth or (self.cost.up.bandwidth if self.cost is not None else None)
        return float(est) if est else float("inf")

    # -- the report -----------------------------------------------------------------------
    def predicted(self, plan: Plan) -> tuple[float | None, float | None]:
        """(predicted latency, pipeline bound) of ``plan`` at the current estimates (not
        the grid point's bandwidth it was planned for)."""
        if self.cost is None:
            return None, None
        from ..scheduler.planners import evaluate

        cost = self.cost
        if self.up.bandwidth and self.down.bandwidth:
            cost = cost.with_bandwidth(self.up.bandwidth, self.down.bandwidth)
        try:
            s = evaluate(self.graph, plan, cost, self.objective)
        except (PlanError, RuntimeError):
            return None, None
        return s.latency_s, s.bound_s

    def annotate(self, report: Report, plan: Plan | None) -> Report:
        """Prediction, bound, estimates, modelled device energy and why this plan."""
        up, down = self.up.bandwidth, self.down.bandwidth
        if plan is not None and not report.fell_back:
            report.predicted_s, model_bound = self.predicted(plan)
            if model_bound is not None:
                # a model that overestimates a peer must not claim a bound the run beat:
                # this run's busiest resource (each at most its latency) caps it
                lat = report.latency_s
                seen = max(report.client_busy_s, report.server_busy_s,
                           min(lat, report.bytes_up / up) if up else 0.0,
                           min(lat, report.bytes_down / down) if down else 0.0)
                report.plan_bound_s = min(model_bound, seen)
            limit = self.limits.get(id(self.cost))
            # the limit is at most any plan's bound, this one's (honest) bound included
            report.limit_s = (limit if limit is None or report.plan_bound_s is None
                              else min(limit, report.plan_bound_s))
            report.plan_reason = (self.choice.reason if self.choice is not None
                                  and self.choice.scored.plan is plan else
                                  "a plan given by the caller" if self.planner is None else
                                  "the deploy-time plan")
        report.bandwidth_up, report.bandwidth_down = up, down
        up_s = report.bytes_up / up if up else 0.0
        down_s = report.bytes_down / down if down else 0.0
        report.energy_j = device_energy(report.latency_s, report.client_busy_s, up_s, down_s,
                                        self.objective.profile)
        return report

    def __repr__(self) -> str:
        return (f"<AdaptivePolicy planner={self.planner!r} adapt={self.adapt} "
                f"up={self.up.bandwidth} down={self.down.bandwidth}>")
