"""One server session after its hello: the message loop and the dispatch of each message
(deploy, plan, profile, probe, infer) and frame (weights, probe, tiles) it receives;
deploys are handled in :mod:`.server_deploy`, inferences in :mod:`.server_infer`."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import TYPE_CHECKING, Any

import torch

from ..errors import (
    ConnectionClosedError,
    DeployError,
    IdleError,
    LopInferError,
    PlanError,
    ProfileError,
    ProtocolError,
    TransportError,
    TransportTimeoutError,
    UnknownDeploymentError,
    error_code,
)
from ..graph import Graph
from ..log import logger
from ..scheduler.link import ReceiptLog
from ..scheduler.plan import Plan
from ..transports import Bye, Connection, Error, Frame
from .program import Bound, compile_plan
from .protocol import (
    FRAME_PROBE,
    FRAME_WEIGHTS,
    MAX_PROBE_BYTES,
    MAX_PROBE_FRAMES,
    WORKING_INTERVAL,
    Deploy,
    Deployed,
    FellBack,
    Infer,
    PlanReady,
    ProbeRequest,
    ProbeResult,
    Profiled,
    ProfileRequest,
    UsePlan,
    Working,
)
from .server_deploy import Uploads, deployment
from .server_infer import Inferences

if TYPE_CHECKING:
    from .server import Server

__all__ = ["ServerSession"]

log = logger("server")
_HEX_HASH = re.compile("[0-9a-f]{64}")


class ServerSession:
    """One connection's session: its deployed graph, compiled plans, uploads and runs."""

    def __init__(self, server: Server, conn: Connection, sid: int) -> None:
        self.server, self.conn, self.id = server, conn, sid
        self.graph: Graph | None = None
        self.programs: dict[int, Bound] = {}
        self.loop = asyncio.get_running_loop()
        self.received = ReceiptLog()  # for the link samples reported back to the client
        self.inferences = Inferences(server, conn, sid, self.loop, self.received)
        conn.add_observer(self.received)
        self.uploads = Uploads(server)

    @contextlib.asynccontextmanager
    async def working(self, what: str) -> Any:
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

    async def serve(self) -> None:
        """Receive and answer messages until bye, idleness or a broken connection."""
        srv = self.server
        sender = asyncio.create_task(self.inferences.send_loop())
        idle = srv.limits.idle_timeout
        try:
            while True:
                try:
                    item = await self.conn.recv(timeout=idle)
                except TransportTimeoutError:
                    if self.conn.closed:  # the stream broke (a stalled or dripping frame)
                        raise
                    if self.inferences.runs:
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
            await self.fail(exc)
            await self.conn.drain()
        except TransportError:
            pass

    async def fail(self, exc: LopInferError) -> None:
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
                async with self.working("compiling the plan"):
                    program = await self._compile(msg.plan_json)
            except PlanError as exc:
                await self.fail(exc)
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
            self.inferences.start(msg, program)
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
        parts, hashing, weights = self.uploads.take()
        try:
            async with self.working("deploying"):
                graph, key, cached = await deployment(srv, msg, parts, hashing, weights)
        except DeployError as exc:
            await self.fail(exc)
            return
        finally:
            del parts
            if hashing is not None and not hashing.done():  # refused before it was needed
                hashing.cancel()
            self.release_uploads()
        if graph is None:
            await self.fail(UnknownDeploymentError(key))
            return
        srv.stats.deploys += 1
        srv.stats.deploys_cached += cached
        self.graph = graph
        self.programs.clear()
        srv.acct.deployed(self.id, key, graph, cached)
        await self.conn.send_message(Deployed(content_hash=key, session_id=self.id, cached=cached))

    async def _profile(self, msg: ProfileRequest) -> None:
        """Measure the deployed graph on this server's device (cached by content hash,
        device and threads), on the device worker so it never races an inference."""
        from .profiler import cached_costs, costs_to_json, profile

        if msg.content_hash:  # kept costs only: nothing measured, nothing deployed needed
            if not _HEX_HASH.fullmatch(msg.content_hash):
                raise ProtocolError("a profile's content_hash must be 64 hex digits")
            kept = cached_costs(msg.content_hash, self.server.device)
            if kept is None:
                await self.fail(ProfileError(f"no profile kept for {msg.content_hash[:16]}..."))
                return
            await self.conn.send_message(Profiled(
                costs_json=costs_to_json(kept), device=str(self.server.device),
                threads=torch.get_num_threads(), seconds=0.0))
            return
        if self.graph is None:
            await self.fail(ProfileError("no graph deployed"))
            return
        tiles = tuple(sorted({max(1, min(int(t), 64)) for t in msg.tiles}))[:4] or (1, 4)
        repeats = max(1, min(int(msg.repeats), 5))
        graph, device = self.graph, self.server.device
        t0 = time.perf_counter()
        fut = self.server.worker.submit(
            lambda: profile(graph, tiles=tiles, repeats=repeats, device=device), owner=self.id)
        try:
            async with self.working("profiling"):
                costs = await asyncio.wrap_future(fut)
        except Exception as exc:  # a graph this device cannot run: the client plans without
            await self.fail(ProfileError(f"profiling failed: {exc}"))
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
            if self.conn.scheme == "shm":  # it may view the client's ring, which the client
                t = t.clone()  # writes: a deployment is shared and outlives the connection
            self.uploads.add_chunk(t)
            return
        self.inferences.deliver(frame)

    def release_uploads(self) -> None:
        """Give back the server's pending-upload bytes this session held."""
        self.uploads.release()

    def cancel_runs(self) -> None:
        self.inferences.cancel()
