"""The client: deploy a model to a server and run inferences split with it.

``async with lopinfer.connect(url) as client`` opens a session; ``client.deploy(model,
example_inputs)`` captures the model, uploads it (only when the server does not have
its content hash), sends a plan and returns a :class:`Session`;
``await session.infer(x)`` runs one inference: the client computes its tasks on its
compute thread while tiles stream both ways, and returns the model's exact output.

Nothing is lost: a server unreachable at deploy gives a local session (warned once);
a link or server lost mid-inference makes the client finish it locally
(``last_report.fell_back``); the next inference reconnects, with backoff.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any

import torch

from ..errors import (
    AuthError,
    ConnectError,
    DeployError,
    LopInferError,
    ModelChangedError,
    PlanError,
    ProtocolError,
    ProtocolVersionError,
    RemoteError,
    TransportError,
)
from ..graph import Graph, capture
from ..log import logger
from ..scheduler.builders import local_plan, offload_plan
from ..scheduler.cost import CostModel, Link, PeerCosts
from ..scheduler.energy import DEVICE_PROFILES, DeviceProfile, Objective, device_energy
from ..scheduler.link import LinkEstimator, ReceiptLog
from ..scheduler.plan import Plan
from ..scheduler.registry import available, default_methods
from ..transports import (
    Bye,
    Connection,
    Deploy,
    Deployed,
    Error,
    Frame,
    Hello,
    Welcome,
)
from ..transports import connect as transport_connect
from .diagnose import check_url, explain_connect_error, hello_failed
from .executor import TiledExecutor, check_inputs, pack_outputs
from .peer import DeviceWorker, PeerRun
from .program import Bound, Task, compile_plan
from .protocol import (
    FRAME_TILE,
    FRAME_WEIGHTS,
    WEIGHTS_CHUNK,
    Done,
    FellBack,
    Infer,
    InferFailed,
    PlanReady,
    Report,
    UsePlan,
    Working,
)
from .staleness import ModelWatch

if TYPE_CHECKING:  # the planners import the runtime's program compiler: no cycle at runtime
    from ..scheduler.adapt import Choice, PlanBook

__all__ = ["Client", "Session", "connect"]

log = logger("client")


def connect(url: str, *, token: str = "", timeout: float = 10.0, peer_timeout: float = 30.0,
            strict: bool = False, **options: Any) -> Client:
    """A client for the server at ``url``; use as ``async with connect(url) as client``.

    Args:
        token: sent at hello when the server requires one.
        timeout: connect and request timeout (seconds).
        ca, ssl: for ``tls://`` and ``wss://``: a CA file to trust (e.g. the server's
            self-signed certificate), or a whole ``ssl.SSLContext``.
        peer_timeout: longest wait for the server's next tile during an inference
            before the client finishes it locally.
        strict: raise instead of running locally: at connect (``ConnectError`` with a
            ``reason``, ``AuthError``, ``ProtocolVersionError``, ``MissingDependencyError``),
            at deploy, and when an inference would fall back.
        **options: transport options (see ``lopinfer.transports.Options``).

    Raises:
        InputError: a malformed URL (at once, strict or not).
    """
    return Client(url, token=token, timeout=timeout, peer_timeout=peer_timeout, strict=strict,
                  **options)


class Client:
    """A session with one server (see :func:`connect`)."""

    server_process: Any  # the server's child process, set only by runtime.loopback.loopback()

    def __init__(self, url: str, *, token: str = "", timeout: float = 10.0,
                 peer_timeout: float = 30.0, name: str = "lopinfer-client", strict: bool = False,
                 **options: Any) -> None:
        check_url(url)  # a typo is not a server that is down: refused at once
        self.url, self.token, self.timeout, self.peer_timeout = url, token, timeout, peer_timeout
        ca = options.pop("ca", None)
        if ca is not None and options.get("ssl") is None:  # trust a private CA (tls://, wss://)
            from ..transports import client_ssl_context

            options["ssl"] = client_ssl_context(ca)
        self.strict = strict
        self.last_error: Exception | None = None  # why the last connect attempt failed
        self.fallbacks: list[tuple[int, str]] = []  # (inference, why) not yet told the server
        self.name, self.options = name, options
        self.conn: Connection | None = None
        self.welcome: Welcome | None = None
        self.worker = DeviceWorker("lopinfer-client")
        self._reader: asyncio.Task | None = None
        self._replies: asyncio.Queue = asyncio.Queue()
        self._runs: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._backoff = 0.5
        self._next_try = 0.0
        self._last_heard = 0.0  # time.monotonic() of the last thing the server sent
        self._warned = False
        self.sessions: list[Session] = []
        self.received = ReceiptLog()  # the passive down-link samples

    # -- connection -----------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and say hello. Raises ConnectError, AuthError, ProtocolError."""
        try:
            conn = await transport_connect(self.url, timeout=self.timeout, **self.options)
        except ConnectError as exc:
            raise explain_connect_error(self.url, exc, self.timeout) from exc
        try:
            await conn.send_message(Hello(token=self.token, client_name=self.name))
            reply = await conn.recv(timeout=self.timeout)
        except (TransportError, ProtocolError) as exc:
            conn.abort()
            raise hello_failed(self.url, exc, self.timeout) from exc
        except BaseException:
            conn.abort()
            raise
        if isinstance(reply, Error):
            await conn.aclose()
            if reply.code == "auth":
                raise AuthError(f"server {self.url} refused the token ({reply.message}): check "
                                "token= against the server's --token-file")
            if reply.code == "version":
                raise ProtocolVersionError(f"server {self.url} speaks another protocol version "
                                           f"({reply.message}): install the same lopinfer "
                                           "version on the client and the server")
            raise RemoteError(f"server {self.url} refused the session: {reply.code}: {reply.message}")
        if not isinstance(reply, Welcome):
            conn.abort()
            raise ProtocolError(f"expected welcome, got {type(reply).__name__}")
        self.conn, self.welcome = conn, reply
        conn.add_observer(self.received)
        self._replies = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_loop(conn))
        self._backoff = 0.5

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    async def _read_loop(self, conn: Connection) -> None:
        try:
            async for item in conn:
                self._last_heard = time.monotonic()
                if isinstance(item, Working):
                    continue  # a long request is still being served
                if isinstance(item, Frame):
                    pending = self._runs.get(item.inference_id)
                    if pending is None:
                        continue  # an inference already finished locally
                    pending.progress()
                    pending.run.deliver(item.tensor_id, item.row_start, item.row_stop, item.tensor)
                elif isinstance(item, (Done, InferFailed)):
                    pending = self._runs.get(item.inference_id)
                    if pending is not None:
                        pending.server_message(item)
                else:
                    self._replies.put_nowait(item)
        except (TransportError, ProtocolError) as exc:
            log.info("connection to %s lost: %s", self.url, exc)
        finally:
            self._lost(conn)

    def give_up(self, conn: Connection) -> None:
        """Drop a connection to a server that stopped answering, and wait out the
        backoff before trying it again (each try would cost a whole timeout)."""
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)
        self._lost(conn)

    def _lost(self, conn: Connection) -> None:
        if self.conn is conn:
            self.conn = None
            conn.abort()
        for pending in list(self._runs.values()):
            pending.link_lost("the connection to the server was lost")
        self._replies.put_nowait(None)

    async def request(self, msg: Any, want: type, *, timeout: float | None = None) -> Any:
        """Send ``msg`` and wait for the reply of type ``want``.

        The wait ends when the server is silent for ``timeout`` seconds (default
        ``peer_timeout``): a server doing long honest work says so (``Working``), a
        hung one is given up on, and its connection dropped.

        Raises:
            ConnectError: not connected, the connection was lost, or the server was silent.
            PlanError, DeployError, AuthError, RemoteError: the server refused the request.
        """
        if self.conn is None:
            raise ConnectError(f"not connected to {self.url}")
        conn = self.conn
        limit = timeout or self.peer_timeout
        await conn.send_message(msg, timeout=limit)
        sent = time.monotonic()
        while True:
            # our own upload still going counts as the exchange being alive
            silent = time.monotonic() - max(sent, self._last_heard, conn.last_activity)
            if silent >= limit:
                self.give_up(conn)  # a server that does not answer is as good as gone
                raise ConnectError(f"no reply to {type(msg).__name__} from {self.url}: the "
                                   f"server was silent for {limit:g} s")
            try:
                reply = await asyncio.wait_for(self._replies.get(), limit - silent)
                break
            except asyncio.TimeoutError:
                continue
        if reply is None:
            raise ConnectError(f"connection to {self.url} lost")
        if isinstance(reply, Error):
            if reply.code == "plan":
                raise PlanError(f"server rejected the plan: {reply.message}")
            if reply.code == "deploy":
                raise DeployError(f"server refused the deployment: {reply.message}")
            if reply.code == "protocol_error":  # the server ends this session
                self.give_up(conn)
                raise ConnectError(f"server {self.url} ended the session: {reply.message}")
            if reply.code == "profile":
                raise RemoteError(f"server could not profile the model: {reply.message}")
            raise RemoteError(f"{reply.code}: {reply.message}")
        if not isinstance(reply, want):
            raise ProtocolError(f"expected {want.__name__}, got {type(reply).__name__}")
        return reply

    _request = request  # the name the runtime's own modules used

    async def ensure_connected(self) -> bool:
        """Reconnect if the link is down and the backoff allows; True when connected."""
        if self.connected:
            return True
        if time.monotonic() < self._next_try and not self.strict:
            return False
        try:
            await self.open()
            self.last_error = None
            return True
        except (LopInferError, OSError) as exc:
            self.last_error = exc
            # counted from the failure: an attempt that waited out a timeout must not
            # be followed at once by another one
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)
            log.info("server %s unreachable: %s", self.url, exc)
            if self.strict:
                raise
            return False

    # -- deploy ---------------------------------------------------------------------------
    async def deploy(self, model: Any, example_inputs: Any, *,
                     objective: str | Objective = "latency", planner: str = "lopinfer",
                     plan: Plan | None = None, deadline_s: float | None = None,
                     device_profile: str | DeviceProfile | None = None,
                     client_costs: PeerCosts | None = None, adapt: bool = True,
                     grid: list[float] | None = None, progress: bool = False,
                     extra_methods: tuple[str, ...] = (), strict: bool | None = None,
                     watch: ModelWatch | None = None) -> Session:
        """Capture ``model``, upload it unless the server has it, measure, plan.

        With ``planner`` (default ``"lopinfer"``; or ``local``, ``offload``,
        ``neurosurgeon``, ``dads``) the client profiles itself, has the server profile
        itself, probes the link, and plans for the measured bandwidth; plans for a grid
        of bandwidths around it are computed in the background, and each inference
        runs the plan for the current estimate (with hysteresis; ``adapt=False`` keeps
        the first). ``plan=`` runs a given plan instead, unchanged.

        Args:
            objective: "latency", "energy", or an :class:`Objective`; with
                ``deadline_s``, energy is minimised among plans meeting the deadline.
            device_profile: the client's power model (a name in ``DEVICE_PROFILES``).
            client_costs: the client's costs, when known (e.g. a throttled device's
                profile scaled); otherwise measured here.
            grid: the bandwidths (bytes/s) to plan for; default from 1/256 to 16 times
                the probe, a factor 2 apart.
            extra_methods: more planners for the plan book (``"lopinfer-energy"``: least
                device energy at no more than offload's latency), for
                :meth:`Session.use_planner`.
            strict: when the model's parameters or buffers change after deploy, raise
                :class:`ModelChangedError` at the next inference instead of redeploying
                (default: the client's ``strict``, else False).
            watch: how to notice such changes and capture the model again (made here
                for an ``nn.Module``; the facade passes its own).

        A server that cannot be reached gives a local session (warned once).

        Raises:
            CaptureError, InputError, UnsupportedModelError: the model cannot be used.
            PlanError: ``plan`` is invalid for the model, or an unknown planner.
        """
        from ..scheduler.registry import methods as planners

        obj = _objective(objective, deadline_s, device_profile)
        if plan is None and planner not in planners():
            raise PlanError(f"unknown planner {planner!r}; use one of {sorted(planners())}")
        if watch is None and isinstance(model, torch.nn.Module):
            module = model
            watch = ModelWatch(module, lambda xs: capture(module, xs))
        graph = model if isinstance(model, Graph) else await asyncio.to_thread(
            capture, model, example_inputs)
        session = Session(self, graph, objective=obj, planner=None if plan is not None else planner,
                          adapt=adapt and plan is None)
        session.watch = watch
        session.strict = self.strict if strict is None else strict
        session.default_plan = plan if plan is not None else offload_plan(graph, 4, min_rows=2)
        compile_plan(graph, session.default_plan)  # invalid plans fail here, named
        if await self.ensure_connected():
            try:
                await session.upload(use=plan is not None)
                if plan is None:
                    await session.measure_and_plan(client_costs=client_costs, grid=grid,
                                                   progress=progress, extra_methods=extra_methods)
            except (TransportError, ConnectError) as exc:
                if self.strict:
                    raise
                self._warn(f"server {self.url} lost during deploy ({exc}); running locally")
            except DeployError as exc:  # over a server limit, say: it will not change
                if self.strict:
                    raise
                session.refused = str(exc)
                self._warn(f"{exc}; running locally")
        else:
            self._warn(f"{self.last_error or f'server {self.url} unreachable'}; running "
                       "locally until the server is reachable")
        self.sessions.append(session)
        return session

    def _warn(self, message: str) -> None:
        if not self._warned:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            self._warned = True
            log.debug(message)  # the warning said it: printed once, not twice
        else:
            log.info(message)

    async def aclose(self) -> None:
        for session in self.sessions:
            session.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.conn is not None:
            try:
                await self.conn.send_message(Bye(reason="client closing"), timeout=1.0)
            except (TransportError, LopInferError):
                pass
            await self.conn.aclose()
            self.conn = None
        self.worker.close()

    async def __aenter__(self) -> Client:
        await self.ensure_connected()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<Client {self.url} connected={self.connected} sessions={len(self.sessions)}>"


class _Pending:
    """Event-loop side of one inference in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.client_done = loop.create_future()
        self.server_done = loop.create_future()
        self.failure: str | None = None
        self.last_progress = time.monotonic()
        self.run: PeerRun = None  # type: ignore[assignment]
        self.frames_up = self.frames_down = 0
        self.server_spans: list[list[float]] = []
        self.server_busy = 0.0
        self.up_samples: list[list[float]] = []

    def progress(self) -> None:
        self.last_progress = time.monotonic()
        self.frames_down += 1

    def server_message(self, msg: Any) -> None:
        self.progress()
        if isinstance(msg, Done):
            self.server_spans, self.server_busy = msg.spans, msg.busy_s
            self.up_samples = msg.up_samples
            if not self.server_done.done():
                self.server_done.set_result(True)
        else:
            self.link_lost(f"the server failed: {msg.message}")

    def link_lost(self, why: str) -> None:
        if self.failure is None:
            self.failure = why
        for fut in (self.client_done, self.server_done):
            if not fut.done():
                fut.set_result(False)


class Session:
    """A deployed model on a client: ``await session.infer(*inputs)``.

    Attributes:
        cost: the measured cost model (client and server costs, the link), or None.
        book: the plans per bandwidth (a :class:`PlanBook`), or None with a fixed plan.
        up, down: the link estimators (bytes/s), fed by every inference's transfers.
        last_report: what the last inference did (:class:`Report`).
    """

    def __init__(self, client: Client, graph: Graph, *, objective: Objective | str = "latency",
                 planner: str | None = None, adapt: bool = False) -> None:
        self.client, self.graph = client, graph
        self.objective = Objective.parse(objective)
        self.planner, self.adapt = planner, adapt
        self.default_plan: Plan = local_plan(graph)
        self.plan: Plan | None = None
        self.program: Bound | None = None
        self.remote = False
        self.last_report: Report | None = None
        self.cost: CostModel | None = None
        self.book: PlanBook | None = None
        self.choice: Choice | None = None
        self.up = LinkEstimator()
        self.down = LinkEstimator()
        self.reprobe_s = 5.0  # while a local plan runs, re-measure the link this often
        self._last_link_sample = time.monotonic()
        self._stop = threading.Event()
        self._plan_ids = itertools.count(1)
        self._local: TiledExecutor | None = None
        # per plan (kept while the plan book keeps the plan): compiled programs, local
        # executors, and the plan ids the server compiled them under (per connection)
        self._programs: dict[int, tuple[Plan, Bound]] = {}
        self._executors: collections.OrderedDict[int, TiledExecutor] = collections.OrderedDict()
        self._server_plans: dict[int, tuple[Plan, Any, int]] = {}
        self._lock = asyncio.Lock()
        self.watch: ModelWatch | None = None
        self.strict = False
        self.refused = ""  # why the server refused this model (then it runs locally)
        self.redeploys = 0  # times the model's changed weights were deployed again

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
        self.graph, self.redeploys = graph, self.redeploys + 1
        self._programs.clear()  # compiled programs and executors hold the old weights
        self._executors.clear()
        self._local = None
        self._server_plans.clear()
        self.plan = self.program = None
        self.remote = False
        if not same:  # another structure: plans are made anew for it
            if self.planner is None:
                raise PlanError(f"{graph.name}: the model's structure changed after deploy and "
                                f"its plan was given by the caller; deploy it again")
            self.book, self.cost, self.choice = None, None, None
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
            except (TransportError, ConnectError, RemoteError) as exc:
                # the server may still hold the old weights: never run a plan there now;
                # the next inference reconnects and uploads the new ones
                log.info("redeploy failed: %s", exc)
                if client.conn is not None:
                    client._lost(client.conn)
        try:
            await self.use_plan(target, pin=False)
        except (TransportError, ConnectError, RemoteError) as exc:
            log.info("sending the plan failed: %s", exc)
            if client.conn is not None:
                client._lost(client.conn)
            await self.use_plan(target, pin=False)  # compiled here only

    async def upload(self, *, use: bool = True) -> None:
        """Deploy the graph (hash first, content only if needed) and, with ``use``, the
        current plan (or the default one)."""
        from ..graph.serialize import pack

        client = self.client
        self._server_plans.clear()  # a deploy makes the server forget this session's plans
        text, weights, digest = await asyncio.to_thread(pack, self.graph)
        try:
            await client._request(Deploy(graph_json="", content_hash=digest), Deployed)
        except RemoteError as exc:
            if "unknown_deployment" not in str(exc):
                raise
            if len(weights) <= WEIGHTS_CHUNK:
                await client._request(Deploy(graph_json=text, content_hash=digest,
                                             weights=weights), Deployed)
            else:  # over a control message's limit: the blob goes first, in tensor frames
                assert client.conn is not None
                blob = torch.frombuffer(bytearray(weights), dtype=torch.uint8)
                chunks = range(0, len(weights), WEIGHTS_CHUNK)
                for i, a in enumerate(chunks):
                    await client.conn.send_tensor(Frame(tensor=blob[a:a + WEIGHTS_CHUNK],
                                                        kind=FRAME_WEIGHTS, tensor_id=i))
                await client._request(Deploy(graph_json=text, content_hash=digest,
                                             weights_chunks=len(chunks),
                                             weights_size=len(weights)), Deployed)
        if use:
            await self.use_plan(self.plan or self.default_plan, pin=False)

    async def measure_and_plan(self, *, client_costs: PeerCosts | None = None,
                               grid: list[float] | None = None, progress: bool = False,
                               extra_methods: tuple[str, ...] = ()) -> None:
        """Profile both peers (in parallel) and probe the link, then plan (see deploy)."""
        from ..scheduler.adapt import PlanBook
        from .measure import probe_link, server_costs
        from .profiler import profile

        client = self.client
        mine: Any = None
        if client_costs is None:  # measured here, while the server measures itself
            mine = asyncio.wrap_future(client.worker.submit(
                lambda: profile(self.graph, progress=progress, name="client")))
        try:
            theirs = await server_costs(client)
        finally:
            ccosts = await mine if mine is not None else client_costs
        assert ccosts is not None
        probe = await probe_link(client)
        self._seed_link(probe)
        self.cost = CostModel(ccosts, theirs, Link(probe.up, probe.rtt / 2, probe.up_frame_s),
                              Link(probe.down, probe.rtt / 2, probe.down_frame_s),
                              info={"probe": repr(probe)}, compression=self._compression())
        assert self.planner is not None
        methods: tuple[str, ...] = default_methods() if self.planner == "lopinfer" \
            else (self.planner,)
        methods += tuple(m for m in extra_methods if m not in methods)
        methods = tuple(m for m in methods if available(m))  # e.g. dads without networkx
        self.book = PlanBook(self.graph, self.cost, self.objective, methods, grid=grid)
        if self.adapt:  # the whole grid now: planning later would steal the inferences' CPU
            await asyncio.to_thread(self.book.fill, self._stop, progress)
        await self._choose(force=True)

    async def _choose(self, *, force: bool = False) -> None:
        """Switch to the plan for the current bandwidth estimate (between inferences)."""
        if self.book is None or self.planner is None or (not self.adapt and not force):
            return
        choice = await asyncio.to_thread(self.book.choose, self.planner, self.link_estimate())
        self.choice = choice
        if choice.scored.plan is not self.plan:
            await self.use_plan(choice.scored.plan, pin=False)

    def _seed_link(self, probe: Any) -> None:
        self.up, self.down = LinkEstimator(probe.up), LinkEstimator(probe.down)
        self._feed(probe.up_samples, probe.down_samples)  # the window outliers are judged by
        self.up._bw, self.down._bw = probe.up, probe.down  # the probe's median, not its EWMA
        self.up.observe_rtt(probe.rtt)

    async def remeasure_link(self) -> None:
        """Probe the link now and restart the estimators from what it measured."""
        from .measure import probe_link

        async with self._lock:
            self._seed_link(await probe_link(self.client))
            self._last_link_sample = time.monotonic()

    async def use_planner(self, method: str) -> None:
        """Choose plans with ``method``'s planner from now on (benchmarks compare them on
        one session: the same measurements, the same plan book)."""
        if self.book is None or method not in self.book.methods:
            raise PlanError(f"planner {method!r} is not in this session's plan book "
                            f"({self.book.methods if self.book else 'none: deploy with a planner'})")
        async with self._lock:
            self.planner, self.adapt = method, True
            await self._choose(force=True)

    def link_estimate(self) -> float:
        """The up bandwidth the plans are chosen by: each direction's estimate relative
        to the deploy-time probe, the worse of the two (a link degrades both ways)."""
        assert self.cost is not None
        probe_up, probe_down = self.cost.up.bandwidth, self.cost.down.bandwidth
        f_up = (self.up.bandwidth or probe_up) / probe_up
        f_down = (self.down.bandwidth or probe_down) / probe_down
        return probe_up * min(f_up, f_down)

    async def use_plan(self, plan: Plan, *, pin: bool = True) -> None:
        """Make ``plan`` the one the next inferences run (compiled on both peers);
        ``pin`` (the default for callers) also stops adapting to the bandwidth."""
        known = self._programs.get(id(plan))
        if known is not None and known[0] is plan:  # switching back: compiled already
            program = known[1]
        else:
            program = await asyncio.to_thread(compile_plan, self.graph, plan)
            self._programs[id(plan)] = (plan, program)
        if pin:
            self.adapt, self.choice = False, None
        if plan.uses_server() and self.client.connected:
            conn = self.client.conn
            sent = self._server_plans.get(id(plan))
            if sent is not None and sent[0] is plan and sent[1] is conn:
                self.plan_id = sent[2]  # the server still has it compiled
            else:
                pid = next(self._plan_ids)
                await self.client._request(UsePlan(plan_id=pid, plan_json=plan.to_json()),
                                           PlanReady)
                self.plan_id = pid
                self._server_plans[id(plan)] = (plan, conn, pid)
        self.plan, self.program, self.remote = plan, program, plan.uses_server()

    def close(self) -> None:
        """Stop background planning."""
        self._stop.set()

    def _local_executor(self, fell_back: bool) -> TiledExecutor:
        plan = self.plan if self.plan is not None and not fell_back else None
        if plan is None:  # the fallback: the whole model here, in a few tiles
            if self._local is None:
                self._local = TiledExecutor(self.graph, 4, min_rows=4)
            return self._local
        known = self._executors.pop(id(plan), None)
        if known is None or known.plan is not plan:
            known = TiledExecutor(self.graph, plan=plan)
        self._executors[id(plan)] = known  # most recent last
        while len(self._executors) > 8:  # each holds its own packed weights
            self._executors.pop(next(iter(self._executors)))
        return known

    async def infer(self, *inputs: torch.Tensor) -> Any:
        """Run one inference; returns what the model returns (exactly).

        Raises:
            InputError: the inputs do not match the captured ones.
        """
        check_inputs(self.graph, inputs)
        async with self._lock:  # one inference at a time per session: plans switch between
            await self._follow_model(inputs)
            if self.refused:  # the server will not run this model: never upload it again
                return await self._infer_local(inputs, fell_back=True, reason=self.refused)
            client = self.client
            if self.plan is not None and not self.plan.uses_server() and not self.adapt:
                return await self._infer_local(inputs, fell_back=False)  # chosen, not a fallback
            if self.plan is None or not client.connected:
                if await client.ensure_connected():
                    try:
                        await self.upload()
                        if self.planner is not None and self.book is None:
                            await self.measure_and_plan()
                    except (TransportError, ConnectError, RemoteError) as exc:
                        log.info("redeploy failed: %s", exc)
            if self.adapt and client.connected:
                try:
                    await self._reprobe_if_stale()
                    await self._choose()
                except (TransportError, ConnectError, RemoteError) as exc:
                    log.info("adapting the plan failed: %s", exc)
            if self.plan is not None and not self.plan.uses_server():
                return await self._infer_local(inputs, fell_back=False)
            if self.remote and client.connected and self.program is not None:
                return await self._infer_remote(inputs)
            if client.strict:
                raise ConnectError(f"{client.last_error or 'the server is unavailable'} "
                                   "(strict: not run locally)")
            return await self._infer_local(inputs, fell_back=True, reason="server unavailable")

    async def _reprobe_if_stale(self) -> None:
        """A local plan moves no tiles, so nothing measures the link: probe it now and
        then, so that a link that got better is noticed."""
        if self.plan is None or self.plan.uses_server():
            return
        if time.monotonic() - self._last_link_sample < self.reprobe_s:
            return
        from .measure import probe_link

        probe = await probe_link(self.client, max_seconds=0.5)
        self._feed(probe.up_samples, probe.down_samples)
        self._last_link_sample = time.monotonic()

    def _feed(self, up: list, down: list) -> None:
        """Passive samples from an inference's transfers into the estimators."""
        took = [self.up.observe(int(n), float(t)) for n, t in up]
        took += [self.down.observe(int(n), float(t)) for n, t in down]
        if any(took):
            self._last_link_sample = time.monotonic()

    def _predicted(self, plan: Plan) -> tuple[float | None, float | None]:
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

    def _finish_report(self, report: Report, plan: Plan | None) -> Report:
        """Prediction, bound, estimates, modelled device energy and why this plan."""
        if plan is not None and not report.fell_back:
            report.predicted_s, report.bound_s = self._predicted(plan)
            report.plan_reason = (self.choice.reason if self.choice is not None
                                  and self.choice.scored.plan is plan else
                                  "a plan given by the caller" if self.planner is None else
                                  "the deploy-time plan")
        up, down = self.up.bandwidth, self.down.bandwidth
        report.bandwidth_up, report.bandwidth_down = up, down
        up_s = report.bytes_up / up if up else 0.0
        down_s = report.bytes_down / down if down else 0.0
        report.energy_j = device_energy(report.latency_s, report.client_busy_s, up_s, down_s,
                                        self.objective.profile)
        return report

    async def _infer_local(self, inputs: tuple[torch.Tensor, ...], *, fell_back: bool,
                           reason: str = "", t0: float | None = None) -> Any:
        t0 = time.perf_counter() if t0 is None else t0
        ex = self._local_executor(fell_back)
        spans: list = []
        fut = self.client.worker.submit(lambda: ex(*inputs, spans=spans))
        out = await asyncio.wrap_future(fut)
        latency = time.perf_counter() - t0
        timeline = [{"peer": "client", "kind": k, "task": tid, "start": s - t0, "end": e - t0}
                    for k, tid, s, e in spans]
        self.last_report = self._finish_report(Report(
            latency_s=latency, plan=ex.plan.name, fell_back=fell_back,
            reason=reason if fell_back else "", client_busy_s=sum(e - s for _, _, s, e in spans),
            timeline=timeline), None if fell_back else self.plan)
        return out

    def _compression(self) -> str:
        """The LZ4 mode of this client's connections (what the cost model assumes)."""
        return str(self.client.options.get("compression", "auto"))

    def _lz4_bandwidth(self) -> float:
        """The up rate the transport's LZ4 decision uses: this session's estimate, the
        rate the planner assumed, so that frames are compressed as the plan predicted."""
        est = self.up.bandwidth or (self.cost.up.bandwidth if self.cost is not None else None)
        return float(est) if est else float("inf")

    async def _infer_remote(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        client = self.client
        loop = asyncio.get_running_loop()
        program = self.program
        assert program is not None
        if client.conn is not None:
            client.conn.bandwidth_estimate = self._lz4_bandwidth
        iid = next(client._ids)
        pending = _Pending(loop)
        outbox: asyncio.Queue = asyncio.Queue()

        def on_send(task: Task, piece: torch.Tensor) -> None:  # any thread
            loop.call_soon_threadsafe(outbox.put_nowait, (task, piece))

        def on_done(run: PeerRun) -> None:
            loop.call_soon_threadsafe(_set, pending.client_done, run.error is None)

        t0 = time.perf_counter()
        t0_ns = time.perf_counter_ns()
        client._runs[iid] = pending
        sender = None
        try:
            # the run exists before the server hears of the inference; its input pieces
            # wait in the outbox until Infer is sent
            pending.run = PeerRun(program, "client", on_send=on_send, on_done=on_done,
                                  inputs=inputs)
            assert client.conn is not None  # infer() checked `connected`, no await since
            while client.fallbacks:  # the server's log and metrics count them
                fid, why = client.fallbacks.pop(0)
                await client.conn.send_message(FellBack(inference_id=fid, reason=why[:200]))
            await client.conn.send_message(Infer(inference_id=iid, plan_id=self.plan_id))
            sender = asyncio.create_task(self._send_loop(iid, outbox, pending))
            if not pending.run.finished:
                client.worker.add(pending.run)
            ok = await self._wait(pending)
        except (TransportError, ConnectError) as exc:
            pending.link_lost(str(exc))
            ok = False
        finally:
            client._runs.pop(iid, None)
            if sender is not None:
                sender.cancel()
        if not ok or pending.run is None or pending.run.error is not None:
            if pending.run is not None:
                pending.run.cancel()
            reason = pending.failure or (str(pending.run.error) if pending.run else "failed")
            log.warning("inference %d finished locally: %s", iid, reason)
            client.fallbacks.append((iid, reason))  # told to the server when it is back
            del client.fallbacks[:-16]
            if client.strict:
                raise TransportError(f"inference {iid} failed with the server: {reason} "
                                     "(strict: not finished locally)")
            return await self._infer_local(inputs, fell_back=True, reason=reason, t0=t0)
        latency = time.perf_counter() - t0
        outs = pack_outputs(self.graph, pending.run.outputs())
        self._feed(pending.up_samples, client.received.samples_since(t0_ns))
        self.last_report = self._finish_report(self._report(program, pending, t0, latency),
                                               self.plan)
        return outs

    async def _wait(self, pending: _Pending) -> bool:
        """Wait for both peers; False when the server stops making progress or fails."""
        timeout = self.client.peer_timeout
        for fut in (pending.client_done, pending.server_done):
            while not fut.done():
                try:
                    await asyncio.wait_for(asyncio.shield(fut), timeout=min(timeout, 1.0))
                except asyncio.TimeoutError:
                    if time.monotonic() - pending.last_progress > timeout:
                        pending.link_lost(f"no data from the server for {timeout:g} s")
                        if self.client.conn is not None:  # hung: later calls must not wait
                            self.client.give_up(self.client.conn)
            if not fut.result():
                return False
        return pending.failure is None

    async def _send_loop(self, iid: int, outbox: asyncio.Queue, pending: _Pending) -> None:
        conn = self.client.conn
        if conn is None:  # lost between Infer and the first tile
            pending.link_lost("the connection to the server was lost")
            return
        try:
            while True:
                task, piece = await outbox.get()
                await conn.send_tensor(Frame(
                    tensor=piece, kind=FRAME_TILE, inference_id=iid, tensor_id=task.id,
                    dim=-1 if task.dim is None else task.dim,
                    row_start=task.a if task.dim is not None else 0,
                    row_stop=task.b if task.dim is not None else 0))
                pending.frames_up += 1
        except (TransportError, LopInferError) as exc:
            pending.link_lost(f"sending to the server failed: {exc}")

    def _report(self, program: Bound, pending: _Pending, t0: float, latency: float) -> Report:
        moved = program.bytes_moved()
        timeline = [{"peer": "client", "kind": k, "task": tid, "start": s - t0, "end": e - t0}
                    for k, tid, s, e in pending.run.spans]
        timeline += [{"peer": "server", "kind": "compute", "task": int(tid), "start": s, "end": e}
                     for tid, s, e in pending.server_spans]
        return Report(latency_s=latency, plan=self.plan.name if self.plan else "",
                      bytes_up=moved["up"], bytes_down=moved["down"],
                      frames_up=pending.frames_up, frames_down=pending.frames_down,
                      client_busy_s=sum(e - s for _, _, s, e in pending.run.spans),
                      server_busy_s=pending.server_busy, timeline=timeline)

    def __repr__(self) -> str:
        return (f"<Session {self.graph.name!r} plan={self.plan.name if self.plan else None!r} "
                f"remote={self.remote}>")


def _set(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _objective(objective: str | Objective, deadline_s: float | None,
               device_profile: str | DeviceProfile | None) -> Objective:
    """An Objective from deploy()'s arguments (energy under a deadline when given one)."""
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
