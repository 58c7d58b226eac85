"""A deployed model on a client: ``await session.infer(*inputs)``.

The session runs what its parts decide and deliver: the adaptive policy
(``policy.py``) picks the plan, upload (``deploy.py``) puts the graph and plans on the
server, a remote run (``remote.py``) does one split inference, and when that cannot be
done the session finishes the inference here, exactly (``fell_back``).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, Any

import torch

from ..errors import (
    ConnectError,
    DeployError,
    ModelChangedError,
    PlanError,
    RemoteError,
    TransportError,
)
from ..graph import Graph, capture
from ..log import logger
from ..scheduler.builders import local_plan, offload_plan
from ..scheduler.cost import CostModel, PeerCosts
from ..scheduler.energy import Objective
from ..scheduler.link import LinkEstimator
from ..scheduler.plan import Plan
from .deploy import ServerPlans, upload_graph
from .executor import TiledExecutor, check_inputs, pack_outputs
from .policy import FOREGROUND, AdaptivePolicy
from .program import Bound, compile_plan
from .remote import LATE_REPORT, run_remote
from .report import Report, busy_s, timeline
from .staleness import ModelWatch

if TYPE_CHECKING:
    from ..scheduler.adapt import Choice, PlanBook
    from .client import Client

__all__ = ["Session"]

log = logger("client")

_LINK_ERRORS = (TransportError, ConnectError, RemoteError)  # the server is not usable now
MAX_EXECUTORS = 8  # local executors kept per session: each holds its own packed weights


class Session:
    """A deployed model on a client: ``await session.infer(*inputs)``.

    Attributes:
        policy: the adaptive policy (cost model, plan book, link estimators).
        plan, program: the plan the next inference runs, compiled.
        remote: whether that plan uses the server.
        last_report: what the last inference did (:class:`Report`); the server's spans
            join it when its end-of-run report comes, after the result
            (:meth:`report_complete` waits for that).
        refused: why the server refused this model ("" unless it did: then it runs here).
        redeploys: times the model's changed weights were deployed again.
    """

    def __init__(self, client: Client, graph: Graph, *, objective: Objective | str = "latency",
                 planner: str | None = None, adapt: bool = False) -> None:
        self.client, self.graph = client, graph
        self.policy = AdaptivePolicy(graph, objective, planner=planner, adapt=adapt)
        self.default_plan: Plan = local_plan(graph)
        self.plan: Plan | None = None
        self.program: Bound | None = None
        self.plan_id = 0  # the server's id of ``plan``
        self.remote = False
        self.last_report: Report | None = None
        self._reporting: asyncio.Task | None = None  # completing last_report
        self.server_plans = ServerPlans()
        self._local: TiledExecutor | None = None
        # per plan (kept while the plan book keeps the plan): compiled programs and
        # local executors, most recently used last
        self._programs: dict[int, tuple[Plan, Bound]] = {}
        self._executors: collections.OrderedDict[int, TiledExecutor] = collections.OrderedDict()
        self._lock = asyncio.Lock()  # one inference at a time: plans switch between them
        self.watch: ModelWatch | None = None
        self.strict = False
        self.refused = ""
        self.redeploys = 0

    @classmethod
    async def new(cls, client: Client, model: Any, example_inputs: Any, *,
                  objective: Objective, planner: str, plan: Plan | None, adapt: bool,
                  strict: bool, watch: ModelWatch | None) -> Session:
        """A session for ``model`` (captured here unless a Graph), not yet uploaded: with
        ``plan`` it runs that plan, else ``planner``'s (see :meth:`Client.deploy`).

        Raises:
            CaptureError, UnsupportedModelError: the model cannot be captured.
            PlanError: ``plan`` is invalid for the model.
        """
        if watch is None and isinstance(model, torch.nn.Module):
            module = model
            watch = ModelWatch(module, lambda xs: capture(module, xs))
        graph = model if isinstance(model, Graph) else await asyncio.to_thread(
            capture, model, example_inputs)
        session = cls(client, graph, objective=objective,
                      planner=None if plan is not None else planner, adapt=adapt and plan is None)
        session.watch, session.strict = watch, strict
        session.default_plan = plan if plan is not None else offload_plan(graph, 4, min_rows=2)
        if plan is not None:
            compile_plan(graph, plan)  # an invalid plan fails here, named
        return session

    # -- the policy's state, as the session showed it before it had parts ----------------
    @property
    def objective(self) -> Objective:
        return self.policy.objective

    @property
    def planner(self) -> str | None:
        return self.policy.planner

    @property
    def adapt(self) -> bool:
        return self.policy.adapt

    @property
    def cost(self) -> CostModel | None:
        return self.policy.cost

    @property
    def book(self) -> PlanBook | None:
        return self.policy.book

    @property
    def choice(self) -> Choice | None:
        return self.policy.choice

    @property
    def up(self) -> LinkEstimator:
        return self.policy.up

    @property
    def down(self) -> LinkEstimator:
        return self.policy.down

    def link_estimate(self) -> float:
        """The up bandwidth plans are chosen by (see :meth:`AdaptivePolicy.link_estimate`)."""
        return self.policy.link_estimate()

    # -- deploy ---------------------------------------------------------------------------
    async def upload(self, *, use: bool = True) -> None:
        """Deploy the graph (hash first, content only if needed) and, with ``use``, the
        current plan (or the default one)."""
        self.server_plans.forget()  # a deploy makes the server forget this session's plans
        deployed = await upload_graph(self.client, self.graph)
        self.policy.graph_hash = deployed.content_hash  # equal to ours: the server checked
        if use:
            await self.use_plan(self.plan or self.default_plan, pin=False)

    async def upload_and_plan(self, *, client_costs: PeerCosts | None = None,
                              grid: list[float] | None = None, progress: bool = False,
                              extra_methods: tuple[str, ...] = (),
                              mine: asyncio.Future | None = None) -> None:
        """Upload, measure and plan (see :meth:`Client.deploy`). When the server kept
        its costs for this graph from an earlier deploy, the link is probed first and
        the first plan is made while the weights go up; otherwise the server profiles
        the graph once it has it."""
        from ..graph.serialize import content_hash
        from .measure import kept_server_costs

        digest = await asyncio.to_thread(content_hash, self.graph)
        theirs = await kept_server_costs(self.client, digest)
        if theirs is None:
            await self.upload(use=False)
            await self.measure_and_plan(client_costs=client_costs, grid=grid,
                                        progress=progress, extra_methods=extra_methods,
                                        mine=mine)
            return
        await self.policy.probe(self.client)  # before the weights load the link
        self.policy.graph_hash = digest  # the plan book's key (the server checks it)

        async def plan_and_compile() -> None:  # all of it while the weights go up
            await self.policy.measure(self.client, client_costs=client_costs, grid=grid,
                                      progress=progress, extra_methods=extra_methods,
                                      mine=mine, server=theirs)
            plan = await self.policy.choose(force=True)
            if plan is not None and id(plan) not in self._programs:
                program = await asyncio.to_thread(compile_plan, self.graph, plan)
                self._programs[id(plan)] = (plan, program)

        await _all(self.upload(use=False), plan_and_compile())
        choice = self.policy.choice  # made above: its program is compiled here already
        if choice is not None:
            await self.use_plan(choice.scored.plan, pin=False)

    async def measure_and_plan(self, *, client_costs: PeerCosts | None = None,
                               grid: list[float] | None = None, progress: bool = False,
                               extra_methods: tuple[str, ...] = (),
                               mine: asyncio.Future | None = None) -> None:
        """Profile both peers (in parallel; ``mine``: this peer's profile, started
        already) and probe the link, then plan (see :meth:`Client.deploy`)."""
        await self.policy.measure(self.client, client_costs=client_costs, grid=grid,
                                  progress=progress, extra_methods=extra_methods, mine=mine)
        await self._choose(force=True)

    async def _choose(self, *, force: bool = False) -> None:
        """Switch to the plan for the current bandwidth estimate (between inferences)."""
        plan = await self.policy.choose(force=force)
        if plan is not None and plan is not self.plan:
            await self.use_plan(plan, pin=False)

    async def remeasure_link(self) -> None:
        """Probe the link now and restart the estimators from what it measured."""
        from .measure import probe_link

        async with self._lock:
            self.policy.seed(await probe_link(self.client))

    async def use_planner(self, method: str) -> None:
        """Choose plans with ``method``'s planner from now on (benchmarks compare them on
        one session: the same measurements, the same plan book).

        Raises:
            PlanError: ``method`` is not in this session's plan book.
        """
        async with self._lock:
            self.policy.use_planner(method)
            await self._choose(force=True)

    async def use_plan(self, plan: Plan, *, pin: bool = True) -> None:
        """Make ``plan`` the one the next inferences run (compiled on both peers);
        ``pin`` (the default for callers) also stops adapting to the bandwidth."""
        known = self._programs.get(id(plan))
        if known is not None and known[0] is plan:  # switching back: compiled already
            mine: Any = asyncio.sleep(0, known[1])
        else:
            mine = asyncio.to_thread(compile_plan, self.graph, plan)
        if plan.uses_server() and self.client.connected:  # both peers compile at once
            program, self.plan_id = await _all(mine, self.server_plans.ensure(self.client, plan))
        else:
            program = await mine
        self._programs[id(plan)] = (plan, program)
        if pin:
            self.policy.pin()
        self.plan, self.program, self.remote = plan, program, plan.uses_server()

    def close(self) -> None:
        """Stop background planning."""
        self.policy.close()

    async def report_complete(self) -> Report | None:
        """``last_report`` once it holds the server's spans and link samples: they come
        in the server's end-of-run report, after the result (at most ``DONE_GRACE_S``
        or a quarter of the inference's time later; benchmarks and tests wait here)."""
        task = self._reporting
        if task is not None:
            await asyncio.shield(task)
        return self.last_report

    async def _follow_model(self, inputs: tuple[torch.Tensor, ...]) -> None:
        """If the model's weights changed since deploy, capture and deploy it again (or
        raise, when strict): a plan must never mix old server weights with new ones."""
        if self.watch is None or not self.watch.changed():
            return
        if self.strict:
            raise ModelChangedError(f"{self.graph.name}: the model's parameters or buffers "
                                    f"changed after deploy (strict session: deploy it again)")
        graph = await asyncio.to_thread(self.watch.recapture, inputs)
        from ..graph.serialize import graph_to_json

        same = graph_to_json(graph) == graph_to_json(self.graph)
        plan = self.plan
        self.graph, self.policy.graph, self.redeploys = graph, graph, self.redeploys + 1
        self._programs.clear()  # compiled programs and executors hold the old weights
        self._executors.clear()
        self._local = None
        self.server_plans.forget()
        self.plan = self.program = None
        self.remote = False
        if not same:  # another structure: plans are made anew for it
            if self.planner is None:
                raise PlanError(f"{graph.name}: the model's structure changed after deploy and "
                                f"its plan was given by the caller; deploy it again")
            self.policy.reset(graph)
            self.default_plan = offload_plan(graph, 4, min_rows=2)
            plan = None
        log.info("%s: the model's weights changed; deploying it again", graph.name)
        target = plan or self.default_plan
        client = self.client
        if client.connected:
            try:
                self.refused = ""
                await self.upload(use=False)
            except DeployError as exc:
                self.refused = str(exc)
                log.info("the server refused the changed model: %s", exc)
            except _LINK_ERRORS as exc:
                # the server may still hold the old weights: never run a plan there now;
                # the next inference reconnects and uploads the new ones
                log.info("redeploy failed: %s", exc)
                client.drop()
        try:
            await self.use_plan(target, pin=False)
        except _LINK_ERRORS as exc:
            log.info("sending the plan failed: %s", exc)
            client.drop()
            await self.use_plan(target, pin=False)  # compiled here only

    # -- inference ------------------------------------------------------------------------
    async def infer(self, *inputs: torch.Tensor) -> Any:
        """Run one inference; returns what the model returns (exactly).

        Raises:
            InputError: the inputs do not match the captured ones.
            ModelChangedError: the model changed after deploy and the session is strict.
            ConnectError, TransportError: strict, and the inference would run locally.
        """
        check_inputs(self.graph, inputs)
        with FOREGROUND.busy():  # background planning in this process waits meanwhile
            return await self._infer(inputs)

    async def _infer(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        async with self._lock:
            await self._follow_model(inputs)
            if self.refused:  # the server will not run this model: never upload it again
                return await self._infer_local(inputs, fell_back=True, reason=self.refused)
            client, policy = self.client, self.policy
            if self.plan is not None and not self.plan.uses_server() and not self.adapt:
                return await self._infer_local(inputs, fell_back=False)  # chosen, not a fallback
            if self.plan is None or not client.connected:
                if await client.ensure_connected():
                    try:
                        await self.upload()
                        if self.planner is not None and self.book is None:
                            await self.measure_and_plan()
                    except _LINK_ERRORS as exc:
                        log.info("redeploy failed: %s", exc)
            if self.adapt and client.connected:
                try:
                    await policy.reprobe_if_stale(client, self.plan)
                    await policy.replan_if_needed()  # a peer's speed moved
                    await self._choose()
                except _LINK_ERRORS as exc:
                    log.info("adapting the plan failed: %s", exc)
            if self.plan is not None and not self.plan.uses_server():
                return await self._infer_local(inputs, fell_back=False)
            if self.remote and client.connected and self.program is not None:
                return await self._infer_remote(inputs)
            if client.strict:
                raise ConnectError(f"{client.last_error or 'the server is unavailable'} "
                                   "(strict: not run locally)")
            return await self._infer_local(inputs, fell_back=True, reason="server unavailable")

    def _local_executor(self, fell_back: bool) -> TiledExecutor:
        plan = self.plan if self.plan is not None and not fell_back else None
        if plan is None:  # the fallback: the whole model here, in a few tiles
            if self._local is None:
                self._local = TiledExecutor(self.graph, 4, min_rows=4)
            return self._local
        known = self._executors.pop(id(plan), None)
        if known is None or known.plan is not plan:
            known = TiledExecutor(self.graph, plan=plan)
        self._executors[id(plan)] = known
        while len(self._executors) > MAX_EXECUTORS:
            self._executors.pop(next(iter(self._executors)))
        return known

    async def _infer_local(self, inputs: tuple[torch.Tensor, ...], *, fell_back: bool,
                           reason: str = "", t0: float | None = None) -> Any:
        t0 = time.perf_counter() if t0 is None else t0
        ex = self._local_executor(fell_back)
        spans: list = []
        fut = self.client.worker.submit(lambda: ex(*inputs, spans=spans))
        out = await asyncio.wrap_future(fut)
        report = Report(latency_s=time.perf_counter() - t0, plan=ex.plan.name,
                        fell_back=fell_back, reason=reason if fell_back else "",
                        client_busy_s=busy_s(spans), timeline=timeline("client", spans, t0))
        self.last_report = self.policy.annotate(report, None if fell_back else self.plan)
        self.policy.observe(report, None if fell_back else ex.program)
        return out

    async def _infer_remote(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        client, program, plan = self.client, self.program, self.plan
        assert program is not None and plan is not None
        if client.conn is not None:
            client.conn.bandwidth_estimate = self.policy.lz4_bandwidth
        t0 = time.perf_counter()
        t0_ns = time.perf_counter_ns()
        wire0 = _wire_counts(client.conn)
        iid, flight = await run_remote(client, program, self.plan_id, inputs)
        if not flight.ok:
            reason = flight.why
            log.warning("inference %d finished locally: %s", iid, reason)
            client.fell_back(iid, reason)
            if client.strict:
                raise TransportError(f"inference {iid} failed with the server: {reason} "
                                     "(strict: not finished locally)")
            return await self._infer_local(inputs, fell_back=True, reason=reason, t0=t0)
        latency = time.perf_counter() - t0
        assert flight.run is not None
        outs = pack_outputs(self.graph, flight.run.outputs())
        settled = flight.settled.done()
        self.policy.feed(flight.up_samples if settled else [],
                         client.received.samples_since(t0_ns))
        report = flight.report(program, plan.name, t0, latency)
        wire1 = _wire_counts(client.conn)
        # (a connection replaced meanwhile restarts its counters: never negative)
        report.wire_up, report.wire_down = (max(0, wire1[0] - wire0[0]),
                                            max(0, wire1[1] - wire0[1]))
        self.last_report = self.policy.annotate(report, plan)
        if settled:
            self.policy.observe(report, program)
        else:  # the server's Done is still on its way: the result does not wait for it
            self._reporting = asyncio.create_task(self._complete(flight, report, program, plan))
        return outs

    async def _complete(self, flight: Any, report: Report, program: Bound, plan: Plan) -> None:
        """Add the server's spans and link samples to ``report`` when its Done comes
        (or its grace runs out), and let the policy learn from them."""
        try:
            await asyncio.shield(flight.settled)
            report.server_busy_s = flight.server_busy
            report.timeline += timeline("server", flight.server_spans)
            if flight.server_late:
                report.reason = LATE_REPORT
            self.policy.feed(flight.up_samples, [])
            reason = report.plan_reason  # as chosen for this inference, not the next
            self.policy.annotate(report, plan)
            report.plan_reason = reason
            self.policy.observe(report, program)
        except Exception as exc:  # a report left incomplete costs nothing else
            log.warning("completing the report of an inference failed: %s", exc)

    def __repr__(self) -> str:
        return (f"<Session {self.graph.name!r} plan={self.plan.name if self.plan else None!r} "
                f"remote={self.remote}>")


async def _all(*aws: Any) -> list[Any]:
    """Every awaitable's result, each awaited to its end (none left running unwatched);
    the first failure is raised."""
    got = await asyncio.gather(*aws, return_exceptions=True)
    for r in got:
        if isinstance(r, BaseException):
            raise r
    return got


def _wire_counts(conn: Any) -> tuple[int, int]:
    """(wire bytes sent, received) on ``conn`` so far; zeros without one."""
    if conn is None:
        return 0, 0
    st = conn.statistics()
    return int(st.wire_bytes_sent), int(st.wire_bytes_received)
