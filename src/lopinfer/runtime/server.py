"""The server: many sessions on one event loop, compute serialised per device.

Each connection is a session (hello, optional token, deploy, plans, inferences). Graphs
arrive as JSON over an op allow-list plus safetensors weights, are validated, and are
cached by the content hash the server computes itself (a client's claim is only a
lookup key that must match), so a second client with the same model uploads nothing
and no client can change what another one's hash names. Inferences run on the
device's one :class:`DeviceWorker`, a fair queue across sessions by compute time.
A bad frame or message ends that session only; every resource a client can make the
server spend is bounded in bytes or seconds (:class:`~.limits.ServerLimits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import (
    AuthError,
    BusyError,
    ConnectionClosedError,
    DeployError,
    IdleError,
    LopInferError,
    PlanError,
    ProfileError,
    ProtocolError,
    ProtocolVersionError,
    TransportError,
    TransportTimeoutError,
    UnknownDeploymentError,
    error_code,
)
from ..graph import Graph
from ..log import logger
from ..scheduler.link import ReceiptLog
from ..scheduler.plan import Plan
from ..transports import Bye, Connection, Error, Frame, listen
from .accounting import Accounts
from .limits import ServerLimits, check_graph, graph_bytes
from .outbox import Outbox
from .peer import DeviceWorker, PeerRun
from .program import Bound, Task, compile_plan
from .protocol import (
    FRAME_PROBE,
    FRAME_TILE,
    FRAME_WEIGHTS,
    MAX_PROBE_BYTES,
    MAX_PROBE_FRAMES,
    PROTOCOL_VERSION,
    WORKING_INTERVAL,
    Deploy,
    Deployed,
    Done,
    FellBack,
    Hello,
    Infer,
    InferFailed,
    PlanReady,
    ProbeRequest,
    ProbeResult,
    Profiled,
    ProfileRequest,
    UsePlan,
    Welcome,
    Working,
)
from .remote import tile_frame
from .report import busy_s, spans_to_wire

__all__ = ["Server", "ServerStats"]

log = logger("server")


@dataclass
class ServerStats:
    sessions_total: int = 0
    sessions_open: int = 0
    inferences: int = 0
    inferences_failed: int = 0
    deploys: int = 0
    deploys_cached: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    latencies: list[float] = field(default_factory=list)


class Server:
    """Serve LOPInfer sessions on one or more listen URLs.

    Args:
        device: "cpu" or "cuda" (tiles are moved to the device as they arrive).
        token: when set, a client's ``Hello`` must carry it.
        name: reported to clients.
        max_deployments: graphs kept in the content-hash cache.
        max_sessions: concurrent sessions (more are refused at hello).
        hello_timeout: seconds a new connection has to say hello.
        models: pre-deployed graphs (``lopinfer serve --models DIR``), by content hash.
        max_model_size: bytes of weights one deployment may upload (overrides ``limits``).
        limits: every other bound (cache and upload bytes, activations, FLOPs, plan
            size, compile time, in-flight inferences, idle and unauthenticated time).
    """

    def __init__(self, *, device: str = "cpu", token: str | None = None, name: str = "lopinfer",
                 max_deployments: int = 32, max_sessions: int = 256,
                 hello_timeout: float | None = None, models: dict[str, Graph] | None = None,
                 max_model_size: int | None = None, limits: ServerLimits | None = None) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise LopInferError(f"device {device!r}: no CUDA device is available")
        if token is not None and not token.strip():
            raise LopInferError("the token is empty: give a real one, or none")
        self.token = token
        self.name = name
        limits = limits or ServerLimits()
        if max_model_size is not None or hello_timeout is not None:
            import dataclasses

            limits = dataclasses.replace(
                limits, max_model_bytes=limits.max_model_bytes if max_model_size is None
                else max_model_size,
                hello_timeout=limits.hello_timeout if hello_timeout is None else hello_timeout)
        self.limits = limits
        self.max_deployments = max_deployments
        self.max_sessions = max_sessions
        self.hello_timeout = limits.hello_timeout
        self.max_model_size = limits.max_model_bytes
        self.deployments: OrderedDict[str, Graph] = OrderedDict(models or {})
        self.cache_used = sum(graph_bytes(g) for g in self.deployments.values())
        self.pending_upload = 0  # weight chunk bytes held by every session now
        self.compiling = threading.Event()  # set at close: compilations stop at once
        self.worker = DeviceWorker(f"lopinfer-{self.device.type}")
        self.copier = None
        if self.device.type == "cuda":
            from .cuda import DeviceCopier

            self.copier = DeviceCopier(self.device)
        self.stats = ServerStats()
        self.acct = Accounts()  # per-session/deployment counters and the INFO log
        self.listeners: list[Any] = []
        self._ids: set[int] = set()
        self._unauthenticated: OrderedDict[int, Connection] = OrderedDict()
        self._closing = False

    async def start(self, *urls: str, **options: Any) -> list[str]:
        """Listen on every URL; returns the bound URLs (port 0 resolved)."""
        lim = self.limits
        for url in urls:
            opts = dict(options)
            # nothing big before hello: small control frames only, none of them slow
            opts.setdefault("pre_auth_max_size", lim.pre_auth_message_bytes)
            opts.setdefault("min_recv_rate", lim.min_recv_rate)
            opts.setdefault("max_connections", self.max_sessions + lim.max_unauthenticated)
            if url.startswith(("ws://", "wss://")):
                from .metrics import http_routes

                opts.setdefault("http_routes", tuple(http_routes(self)))
            self.listeners.append(await listen(url, self._handle, **opts))
        return [lst.url for lst in self.listeners]

    @property
    def urls(self) -> list[str]:
        return [lst.url for lst in self.listeners]

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop accepting, let in-flight sessions finish for ``timeout``, then close."""
        self._closing = True
        self.compiling.set()
        await asyncio.gather(*(lst.aclose(timeout=timeout) for lst in self.listeners),
                             return_exceptions=True)
        self.worker.close()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- one session ----------------------------------------------------------------------
    async def _handle(self, conn: Connection) -> None:
        sid = self._new_id()
        session = _Session(self, conn, sid)
        self.stats.sessions_total += 1
        self.stats.sessions_open += 1
        self.acct.opened(sid, conn)
        why = ""
        try:
            await session.serve()
        except (TransportError, ProtocolError) as exc:
            why = str(exc)
            if isinstance(exc, ProtocolError) and not conn.closed:  # say why, then close
                await session.refuse(exc)
        finally:
            self.acct.closed(sid, why)
            self.stats.sessions_open -= 1
            self._unauthenticated.pop(sid, None)
            self._ids.discard(sid)
            session.cancel_runs()
            session.release_uploads()

    def _new_id(self) -> int:
        """An unguessable session id: frames name their session, ids must not be forged."""
        while True:
            sid = secrets.randbits(63) or 1
            if sid not in self._ids:
                self._ids.add(sid)
                return sid

    def admit_unauthenticated(self, sid: int, conn: Connection) -> None:
        """Count a connection that has not said hello; over the quota, drop the oldest."""
        self._unauthenticated[sid] = conn
        while len(self._unauthenticated) > self.limits.max_unauthenticated:
            old_sid, old = self._unauthenticated.popitem(last=False)
            log.info("session %x: dropped before hello (max_unauthenticated=%d)", old_sid,
                     self.limits.max_unauthenticated)
            old.abort()

    def remember(self, key: str, graph: Graph) -> None:
        """Cache ``graph`` under ``key`` (a hash this server computed), LRU by bytes."""
        if key in self.deployments:
            self.deployments.move_to_end(key)
            return
        size = graph_bytes(graph)
        if size > self.limits.cache_bytes:
            return  # served to this session, never cached
        self.deployments[key] = graph
        self.cache_used += size
        while self.cache_used > self.limits.cache_bytes or len(self.deployments) > self.max_deployments:
            _, old = self.deployments.popitem(last=False)
            self.cache_used -= graph_bytes(old)

    def __repr__(self) -> str:
        return (f"<Server {self.name!r} device={self.device} urls={self.urls} "
                f"sessions={self.stats.sessions_open} deployments={len(self.deployments)}>")


def _to_device(graph: Graph, device: torch.device) -> None:
    """Weights onto the server's device; ops that create tensors create them there."""
    graph.params = {k: v.to(device) for k, v in graph.params.items()}
    for node in graph.nodes:
        if "device" in node.kwargs:
            node.kwargs = {**node.kwargs, "device": device}


def _check_devices(graph: Graph, device: torch.device) -> None:
    """A graph may only name the server's own device type (or the CPU)."""
    for node in graph.nodes:
        d = node.kwargs.get("device")
        if d is not None and torch.device(d).type not in ("cpu", device.type):
            raise DeployError(f"node {node.name} creates a tensor on {d}, which this "
                              f"{device.type} server lacks")


class _Session:
    def __init__(self, server: Server, conn: Connection, sid: int) -> None:
        self.server, self.conn, self.id = server, conn, sid
        self.graph: Graph | None = None
        self.programs: dict[int, Bound] = {}
        self.runs: dict[int, PeerRun] = {}
        self.started: dict[int, float] = {}
        self.started_ns: dict[int, int] = {}
        self.loop = asyncio.get_running_loop()
        # pieces for the client, bounded in bytes: the compute thread waits for room
        self.outbox = Outbox(self.loop)
        self.received = ReceiptLog()  # for the link samples reported back to the client
        conn.add_observer(self.received)
        self.weight_parts: list[torch.Tensor] = []  # chunks of the next Deploy's weights
        self.weight_bytes = 0  # ... their size (counted in the server's pending uploads)
        self.uploaded = 0  # weight bytes this session uploaded in all

    @contextlib.asynccontextmanager
    async def _working(self, what: str) -> Any:
        """Tell the client, every few seconds, that a long request is still being served."""
        async def beat() -> None:
            try:
                while True:
                    await asyncio.sleep(WORKING_INTERVAL)
                    await self.conn.send_message(Working(what=what))
            except (TransportError, LopInferError):
                return  # the connection is gone: the session ends by itself

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()

    def _samples_since(self, start_ns: int) -> list[list[float]]:
        return [[float(n), s] for n, s in self.received.samples_since(start_ns)]

    async def serve(self) -> None:
        srv = self.server
        srv.admit_unauthenticated(self.id, self.conn)
        hello = await self.conn.recv(timeout=srv.hello_timeout)
        srv._unauthenticated.pop(self.id, None)
        if not isinstance(hello, Hello):
            await self.refuse(ProtocolError("the first message must be hello"))
            return
        if hello.protocol_version != PROTOCOL_VERSION:
            await self.refuse(ProtocolVersionError(
                f"client protocol version {hello.protocol_version}, server {PROTOCOL_VERSION}"))
            return
        if srv.token is not None and not hmac.compare_digest(hello.token.encode(), srv.token.encode()):
            srv.acct.rejected_token(self.id, hello.client_name)
            await self.refuse(AuthError("invalid token"))
            return
        authenticated = srv.stats.sessions_open - len(srv._unauthenticated)
        if srv._closing or authenticated > srv.max_sessions:
            await self.refuse(BusyError("the server is not accepting sessions"))
            return
        self.conn.authenticated()  # tensor frames and full-size messages from now on
        srv.acct.hello(self.id, hello.client_name)
        await self.conn.send_message(Welcome(session_id=self.id, server_name=srv.name,
                                             device=str(srv.device)))
        sender = asyncio.create_task(self._send_loop())
        idle = srv.limits.idle_timeout
        try:
            while True:
                try:
                    item = await self.conn.recv(timeout=idle)
                except TransportTimeoutError:
                    if self.conn.closed:  # the stream broke (a stalled or dripping frame)
                        raise
                    if self.runs:
                        continue  # quiet while computing is not idle
                    await self.refuse(IdleError(f"no message for {idle:g} s (idle_timeout)"))
                    return
                except ConnectionClosedError:
                    if self.conn.closed_cleanly:
                        return
                    raise
                if isinstance(item, Frame):
                    self._on_frame(item)
                elif isinstance(item, Bye):
                    break
                else:
                    await self._on_message(item)
        finally:
            sender.cancel()

    async def refuse(self, exc: LopInferError) -> None:
        """Tell the client why the session ends (the code of ``exc``'s class)."""
        log.info("session %x refused: %s", self.id, exc)
        try:
            await self._fail(exc)
            await self.conn.drain()
        except TransportError:
            pass

    async def _fail(self, exc: LopInferError) -> None:
        """Answer a request with the error ``exc`` (its code from the one table)."""
        await self.conn.send_message(Error(code=error_code(exc), message=str(exc)))

    async def _on_message(self, msg: Any) -> None:
        srv = self.server
        program: Bound | None
        if isinstance(msg, Deploy):
            await self._deploy(msg)
        elif isinstance(msg, UsePlan):
            try:
                if self.graph is None:
                    raise PlanError("no graph deployed")
                async with self._working("compiling the plan"):
                    program = await self._compile(msg.plan_json)
            except PlanError as exc:
                await self._fail(exc)
                return
            self.programs[msg.plan_id] = program
            srv.acct.plan(self.id, msg.plan_id, program.plan)
            await self.conn.send_message(PlanReady(plan_id=msg.plan_id))
        elif isinstance(msg, ProfileRequest):
            await self._profile(msg)
        elif isinstance(msg, ProbeRequest):
            await self._probe(msg)
        elif isinstance(msg, Infer):
            program = self.programs.get(msg.plan_id)
            if program is None or msg.inference_id in self.runs:
                raise ProtocolError(f"infer {msg.inference_id}: unknown plan {msg.plan_id}")
            if len(self.runs) >= srv.limits.max_inflight:
                raise ProtocolError(f"infer {msg.inference_id}: {len(self.runs)} inferences in "
                                    f"flight already (max_inflight={srv.limits.max_inflight})")
            iid = msg.inference_id
            self.started[iid] = time.perf_counter()
            self.started_ns[iid] = time.perf_counter_ns()
            run = PeerRun(program, "server", on_send=self._sender(iid), owner=self.id,
                          # mypy cannot type a lambda with a default (capture) parameter
                          on_done=lambda r, iid=iid: self.loop.call_soon_threadsafe(  # type: ignore[misc]
                              self._finished, iid, r),
                          copier=srv.copier)
            self.runs[iid] = run
            if not run.finished:
                srv.worker.add(run)
        elif isinstance(msg, FellBack):
            srv.acct.fell_back(self.id, msg.inference_id, msg.reason)
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__} message")

    async def _compile(self, plan_json: str) -> Bound:
        """A client's plan, bounded in tiles before compiling and in time while it compiles."""
        assert self.graph is not None
        lim = self.server.limits
        plan = Plan.from_json(plan_json)
        tiles = sum(len(r.client) + len(r.server) for r in plan.nodes.values())
        tiles += sum(len(e) for e in plan.input_edges.values())
        if tiles > lim.max_plan_tiles:
            raise PlanError(f"plan {plan.name!r} has {tiles} tiles, over the server's "
                            f"max_plan_tiles={lim.max_plan_tiles}")
        deadline = time.monotonic() + lim.compile_timeout
        stop = self.server.compiling
        return await asyncio.to_thread(compile_plan, self.graph, plan,
                                       deadline=lambda: time.monotonic() > deadline or stop.is_set())

    async def _deploy(self, msg: Deploy) -> None:
        srv = self.server
        parts, self.weight_parts = self.weight_parts, []
        try:
            async with self._working("deploying"):
                graph, key, cached = await self._deployment(msg, parts)
        except DeployError as exc:
            await self._fail(exc)
            return
        finally:
            del parts
            self.release_uploads()
        if graph is None:
            await self._fail(UnknownDeploymentError(key))
            return
        srv.stats.deploys += 1
        srv.stats.deploys_cached += cached
        self.graph = graph
        self.programs.clear()
        srv.acct.deployed(self.id, key, graph, cached)
        await self.conn.send_message(Deployed(content_hash=key, session_id=self.id, cached=cached))

    async def _deployment(self, msg: Deploy, parts: list[torch.Tensor]
                          ) -> tuple[Graph | None, str, bool]:
        """(graph, its hash, was cached) for a Deploy; the hash is always one this server
        computed from the bytes it received (a client's claim is only a lookup key)."""
        srv = self.server
        if not msg.graph_json:
            return srv.deployments.get(msg.content_hash), msg.content_hash, True
        if len(parts) != msg.weights_chunks or sum(p.numel() for p in parts) != msg.weights_size:
            raise ProtocolError(f"deploy announces {msg.weights_chunks} weight chunks of "
                                f"{msg.weights_size} bytes, {len(parts)} arrived")
        size = msg.weights_size if parts else len(msg.weights)
        if size > srv.limits.max_model_bytes:
            raise DeployError(f"weights of {size} bytes are over the server's "
                              f"max_model_bytes={srv.limits.max_model_bytes}")
        if not parts:
            self._count_upload(size)
        from ..graph.serialize import content_hash, unpack

        # one copy, chunks straight into the bytes safetensors reads (not cat, then tobytes)
        weights = msg.weights if not parts else b"".join(p.numpy().data for p in parts)
        parts.clear()
        try:
            graph = await asyncio.to_thread(unpack, msg.graph_json, weights)
        except DeployError:
            raise
        except LopInferError as exc:
            raise DeployError(str(exc)) from exc
        del weights
        digest = await asyncio.to_thread(content_hash, graph)
        if not hmac.compare_digest(digest, msg.content_hash):
            raise DeployError(f"content hash {msg.content_hash[:16]}... does not match the "
                              f"uploaded graph and weights (they hash to {digest[:16]}...)")
        known = srv.deployments.get(digest)
        if known is not None:  # uploaded again (e.g. a race): keep the cached copy
            srv.remember(digest, known)
            return known, digest, True
        _check_devices(graph, srv.device)
        check_graph(graph, srv.limits)
        if srv.device.type != "cpu":
            _to_device(graph, srv.device)
        srv.remember(digest, graph)
        return graph, digest, False

    async def _profile(self, msg: ProfileRequest) -> None:
        """Measure the deployed graph on this server's device (cached by content hash,
        device and threads), on the device worker so it never races an inference."""
        from .profiler import costs_to_json, profile

        if self.graph is None:
            await self._fail(ProfileError("no graph deployed"))
            return
        tiles = tuple(sorted({max(1, min(int(t), 64)) for t in msg.tiles}))[:4] or (1, 4)
        repeats = max(1, min(int(msg.repeats), 5))
        graph, device = self.graph, self.server.device
        t0 = time.perf_counter()
        fut = self.server.worker.submit(
            lambda: profile(graph, tiles=tiles, repeats=repeats, device=device), owner=self.id)
        try:
            async with self._working("profiling"):
                costs = await asyncio.wrap_future(fut)
        except Exception as exc:  # a graph this device cannot run: the client plans without
            await self._fail(ProfileError(f"profiling failed: {exc}"))
            return
        await self.conn.send_message(Profiled(
            costs_json=costs_to_json(costs), device=str(device), threads=torch.get_num_threads(),
            seconds=time.perf_counter() - t0))

    async def _probe(self, msg: ProbeRequest) -> None:
        """Answer a link probe: samples of the up burst just received, a down burst."""
        if not (0 <= msg.down_frames <= MAX_PROBE_FRAMES and 0 <= msg.down_bytes <= MAX_PROBE_BYTES
                and 0 <= msg.up_frames <= MAX_PROBE_FRAMES):
            raise ProtocolError(f"probe of {msg.down_frames} x {msg.down_bytes} bytes is over "
                                f"the limits ({MAX_PROBE_FRAMES} x {MAX_PROBE_BYTES})")
        from ..scheduler.link import transfer_samples

        # the burst, the frame before it (its anchor) and this request
        recs = list(self.received.records)[-msg.up_frames - 2:] if msg.up_frames else []
        samples = [[float(n), s] for n, s in transfer_samples(recs)]
        noise = torch.randint(0, 256, (msg.down_bytes,), dtype=torch.uint8)  # incompressible
        for i in range(msg.down_frames):
            await self.conn.send_tensor(Frame(tensor=noise, kind=FRAME_PROBE, session_id=self.id,
                                              tensor_id=i))
        await self.conn.send_message(ProbeResult(up_samples=samples))

    def _on_frame(self, frame: Frame) -> None:
        if frame.kind == FRAME_PROBE:
            return  # measured by the observer, nothing else to do
        if frame.kind == FRAME_WEIGHTS:
            t = frame.tensor
            if t.dtype != torch.uint8 or t.dim() != 1:
                raise ProtocolError("a weights chunk must be a 1-d uint8 tensor")
            if self.weight_bytes + t.numel() > self.server.limits.max_model_bytes:
                raise ProtocolError(f"weights over the server's max_model_bytes="
                                    f"{self.server.limits.max_model_bytes}")
            self._count_upload(t.numel(), pending=True)
            self.weight_parts.append(t)
            return
        run = self.runs.get(frame.inference_id)
        if run is None or frame.kind != FRAME_TILE:
            raise ProtocolError(f"frame for unknown inference {frame.inference_id}")
        self.server.stats.bytes_in += frame.tensor.numel() * frame.tensor.element_size()
        self.server.acct.moved(self.id, bytes_in=frame.tensor.numel() * frame.tensor.element_size())
        run.deliver(frame.tensor_id, frame.row_start, frame.row_stop, frame.tensor)

    def _sender(self, iid: int) -> Any:
        def send(task: Task, piece: torch.Tensor) -> None:  # worker thread
            self.outbox.put((iid, task, piece), piece.numel() * piece.element_size())

        return send

    def _finished(self, iid: int, run: PeerRun) -> None:
        self.outbox.put((iid, None, run))  # on the loop: never waits

    async def _send_loop(self) -> None:
        srv = self.server
        while True:
            iid, task, item = await self.outbox.get()
            if task is not None:
                piece = item if item.device.type == "cpu" else item.to("cpu")
                srv.stats.bytes_out += piece.numel() * piece.element_size()
                srv.acct.moved(self.id, bytes_out=piece.numel() * piece.element_size())
                await self.conn.send_tensor(tile_frame(task, piece, iid, self.id))
                continue
            run: PeerRun = item
            self.runs.pop(iid, None)
            t0 = self.started.pop(iid, run.started)
            start_ns = self.started_ns.pop(iid, 0)
            if run.error is not None:
                srv.stats.inferences_failed += 1
                srv.acct.inference(self.id, None)
                await self.conn.send_message(InferFailed(inference_id=iid, message=str(run.error)))
                continue
            srv.stats.inferences += 1
            srv.stats.latencies.append(time.perf_counter() - t0)
            srv.acct.inference(self.id, srv.stats.latencies[-1])
            del srv.stats.latencies[:-1000]
            samples = self._samples_since(start_ns)
            await self.conn.send_message(Done(inference_id=iid, spans=spans_to_wire(run.spans, t0),
                                              busy_s=busy_s(run.spans), up_samples=samples))

    def _count_upload(self, n: int, *, pending: bool = False) -> None:
        """Charge ``n`` uploaded bytes to this session (and, while held, to the server)."""
        srv, lim = self.server, self.server.limits
        if self.uploaded + n > lim.max_session_upload_bytes:
            raise DeployError(f"session uploads over the server's max_session_upload_bytes="
                                f"{lim.max_session_upload_bytes}")
        if pending and srv.pending_upload + n > lim.max_pending_upload_bytes:
            raise DeployError(f"the server holds {srv.pending_upload} bytes of uploads already "
                                f"(max_pending_upload_bytes={lim.max_pending_upload_bytes}); "
                                f"deploy again later")
        self.uploaded += n
        if pending:
            self.weight_bytes += n
            srv.pending_upload += n

    def release_uploads(self) -> None:
        """Give back the server's pending-upload bytes this session held."""
        self.server.pending_upload -= self.weight_bytes
        self.weight_bytes = 0
        self.weight_parts = []

    def cancel_runs(self) -> None:
        self.outbox.close()  # wakes the compute thread if it waits for room
        for run in self.runs.values():
            run.cancel()
        self.runs.clear()
