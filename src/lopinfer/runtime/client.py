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
import itertools
import logging
import time
import warnings
from typing import Any

import torch

from ..errors import (
    AuthError,
    ConnectError,
    LopInferError,
    PlanError,
    ProtocolError,
    RemoteError,
    TransportError,
)
from ..graph import Graph, capture
from ..scheduler.builders import local_plan, offload_plan
from ..scheduler.plan import Plan
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
from .executor import TiledExecutor, check_inputs, pack_outputs
from .peer import DeviceWorker, PeerRun
from .program import Program, Task, compile_plan
from .protocol import FRAME_TILE, Done, Infer, InferFailed, PlanReady, Report, UsePlan

__all__ = ["Client", "Session", "connect"]

log = logging.getLogger("lopinfer.client")


def connect(url: str, *, token: str = "", timeout: float = 10.0, peer_timeout: float = 30.0,
            **options: Any) -> Client:
    """A client for the server at ``url``; use as ``async with connect(url) as client``.

    Args:
        token: sent at hello when the server requires one.
        timeout: connect and request timeout (seconds).
        peer_timeout: longest wait for the server's next tile during an inference
            before the client finishes it locally.
        **options: transport options (see ``lopinfer.transports.Options``).
    """
    return Client(url, token=token, timeout=timeout, peer_timeout=peer_timeout, **options)


class Client:
    """A session with one server (see :func:`connect`)."""

    server_process: Any  # the server's child process, set only by runtime.loopback.loopback()

    def __init__(self, url: str, *, token: str = "", timeout: float = 10.0,
                 peer_timeout: float = 30.0, name: str = "lopinfer-client", **options: Any) -> None:
        self.url, self.token, self.timeout, self.peer_timeout = url, token, timeout, peer_timeout
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
        self._warned = False
        self.sessions: list[Session] = []

    # -- connection -----------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and say hello. Raises ConnectError, AuthError, ProtocolError."""
        conn = await transport_connect(self.url, timeout=self.timeout, **self.options)
        try:
            await conn.send_message(Hello(token=self.token, client_name=self.name))
            reply = await conn.recv(timeout=self.timeout)
        except BaseException:
            conn.abort()
            raise
        if isinstance(reply, Error):
            await conn.aclose()
            if reply.code == "auth":
                raise AuthError(f"server {self.url} refused the token: {reply.message}")
            raise RemoteError(f"server {self.url} refused the session: {reply.code}: {reply.message}")
        if not isinstance(reply, Welcome):
            conn.abort()
            raise ProtocolError(f"expected welcome, got {type(reply).__name__}")
        self.conn, self.welcome = conn, reply
        self._replies = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_loop(conn))
        self._backoff = 0.5

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    async def _read_loop(self, conn: Connection) -> None:
        try:
            async for item in conn:
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

    def _lost(self, conn: Connection) -> None:
        if self.conn is conn:
            self.conn = None
            conn.abort()
        for pending in list(self._runs.values()):
            pending.link_lost("the connection to the server was lost")
        self._replies.put_nowait(None)

    async def _request(self, msg: Any, want: type) -> Any:
        if self.conn is None:
            raise ConnectError(f"not connected to {self.url}")
        await self.conn.send_message(msg, timeout=self.timeout)
        reply = await asyncio.wait_for(self._replies.get(), self.timeout * 6)
        if reply is None:
            raise ConnectError(f"connection to {self.url} lost")
        if isinstance(reply, Error):
            if reply.code == "plan":
                raise PlanError(f"server rejected the plan: {reply.message}")
            raise RemoteError(f"{reply.code}: {reply.message}")
        if not isinstance(reply, want):
            raise ProtocolError(f"expected {want.__name__}, got {type(reply).__name__}")
        return reply

    async def ensure_connected(self) -> bool:
        """Reconnect if the link is down and the backoff allows; True when connected."""
        if self.connected:
            return True
        now = time.monotonic()
        if now < self._next_try:
            return False
        try:
            await self.open()
            return True
        except (LopInferError, OSError) as exc:
            self._next_try = now + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)
            log.info("server %s unreachable: %s", self.url, exc)
            return False

    # -- deploy ---------------------------------------------------------------------------
    async def deploy(self, model: Any, example_inputs: Any, *, objective: str = "latency",
                     plan: Plan | None = None, tiles: int = 4) -> Session:
        """Capture ``model``, upload it unless the server has it, choose a plan.

        Until the planner exists the default plan is the tiled offload (everything on
        the server, the input streamed in ``tiles`` tiles); ``plan=`` passes any plan.
        A server that cannot be reached gives a local session (warned once).

        Raises:
            CaptureError, InputError, UnsupportedModelError: the model cannot be used.
            PlanError: ``plan`` is invalid for the model.
        """
        graph = model if isinstance(model, Graph) else await asyncio.to_thread(
            capture, model, example_inputs)
        session = Session(self, graph, objective=objective)
        session.default_plan = plan if plan is not None else offload_plan(graph, tiles)
        compile_plan(graph, session.default_plan)  # invalid plans fail here, named
        if await self.ensure_connected():
            try:
                await session.upload()
            except (TransportError, ConnectError) as exc:
                self._warn(f"server {self.url} lost during deploy ({exc}); running locally")
        else:
            self._warn(f"server {self.url} unreachable; running locally until it is back")
        self.sessions.append(session)
        return session

    def _warn(self, message: str) -> None:
        if not self._warned:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            self._warned = True
        log.warning(message)

    async def aclose(self) -> None:
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

    def progress(self) -> None:
        self.last_progress = time.monotonic()
        self.frames_down += 1

    def server_message(self, msg: Any) -> None:
        self.progress()
        if isinstance(msg, Done):
            self.server_spans, self.server_busy = msg.spans, msg.busy_s
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
    """A deployed model on a client: ``await session.infer(*inputs)``."""

    def __init__(self, client: Client, graph: Graph, *, objective: str = "latency") -> None:
        self.client, self.graph, self.objective = client, graph, objective
        self.default_plan: Plan = local_plan(graph)
        self.plan: Plan | None = None
        self.program: Program | None = None
        self.remote = False
        self.last_report: Report | None = None
        self._plan_ids = itertools.count(1)
        self._local: TiledExecutor | None = None
        self._lock = asyncio.Lock()

    async def upload(self) -> None:
        """Deploy the graph (hash first, content only if needed) and the plan."""
        from ..graph.serialize import pack

        client = self.client
        text, weights, digest = await asyncio.to_thread(pack, self.graph)
        try:
            await client._request(Deploy(graph_json="", content_hash=digest), Deployed)
        except RemoteError as exc:
            if "unknown_deployment" not in str(exc):
                raise
            await client._request(Deploy(graph_json=text, content_hash=digest, weights=weights),
                                  Deployed)
        await self.use_plan(self.default_plan)

    async def use_plan(self, plan: Plan) -> None:
        """Make ``plan`` the one the next inferences run (compiled on both peers)."""
        program = await asyncio.to_thread(compile_plan, self.graph, plan)
        if plan.uses_server():
            pid = next(self._plan_ids)
            await self.client._request(UsePlan(plan_id=pid, plan_json=plan.to_json()), PlanReady)
            self.plan_id = pid
        self.plan, self.program, self.remote = plan, program, plan.uses_server()

    def _local_executor(self, fell_back: bool) -> TiledExecutor:
        plan = self.plan if self.plan is not None and not fell_back else None
        if self._local is None or self._local.plan is not plan and plan is not None:
            self._local = (TiledExecutor(self.graph, plan=plan) if plan is not None
                           else TiledExecutor(self.graph, 4, min_rows=4))
        return self._local

    async def infer(self, *inputs: torch.Tensor) -> Any:
        """Run one inference; returns what the model returns (exactly).

        Raises:
            InputError: the inputs do not match the captured ones.
        """
        check_inputs(self.graph, inputs)
        async with self._lock:  # one inference at a time per session
            client = self.client
            if self.plan is not None and not self.plan.uses_server():
                return await self._infer_local(inputs, fell_back=False)  # chosen, not a fallback
            if self.plan is None or not client.connected:
                if await client.ensure_connected():
                    try:
                        await self.upload()
                    except (TransportError, ConnectError, RemoteError) as exc:
                        log.info("redeploy failed: %s", exc)
            if self.remote and client.connected and self.program is not None:
                return await self._infer_remote(inputs)
            return await self._infer_local(inputs, fell_back=True, reason="server unavailable")

    async def _infer_local(self, inputs: tuple[torch.Tensor, ...], *, fell_back: bool,
                           reason: str = "", t0: float | None = None) -> Any:
        t0 = time.perf_counter() if t0 is None else t0
        ex = self._local_executor(fell_back)
        fut = self.client.worker.submit(lambda: ex(*inputs))
        out = await asyncio.wrap_future(fut)
        busy = time.perf_counter() - t0
        self.last_report = Report(latency_s=time.perf_counter() - t0, plan=ex.plan.name,
                                  fell_back=fell_back, reason=reason if fell_back else "",
                                  client_busy_s=busy)
        return out

    async def _infer_remote(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        client = self.client
        loop = asyncio.get_running_loop()
        program = self.program
        assert program is not None
        iid = next(client._ids)
        pending = _Pending(loop)
        outbox: asyncio.Queue = asyncio.Queue()

        def on_send(task: Task, piece: torch.Tensor) -> None:  # any thread
            loop.call_soon_threadsafe(outbox.put_nowait, (task, piece))

        def on_done(run: PeerRun) -> None:
            loop.call_soon_threadsafe(_set, pending.client_done, run.error is None)

        t0 = time.perf_counter()
        client._runs[iid] = pending
        sender = None
        try:
            # the run exists before the server hears of the inference; its input pieces
            # wait in the outbox until Infer is sent
            pending.run = PeerRun(program, "client", on_send=on_send, on_done=on_done,
                                  inputs=inputs)
            assert client.conn is not None  # infer() checked `connected`, no await since
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
            return await self._infer_local(inputs, fell_back=True, reason=reason, t0=t0)
        latency = time.perf_counter() - t0
        outs = pack_outputs(self.graph, pending.run.outputs())
        self.last_report = self._report(program, pending, t0, latency)
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

    def _report(self, program: Program, pending: _Pending, t0: float, latency: float) -> Report:
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
