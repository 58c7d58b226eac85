"""A server session's inferences: each one a :class:`~.peer.PeerRun` on the device
worker, its tiles in, its pieces out through the session's bounded outbox, and its
``Done`` (spans, busy time, link samples) or ``InferFailed`` when it ends."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ProtocolError
from ..scheduler.link import ReceiptLog
from ..transports import Connection, Frame
from .outbox import Outbox
from .peer import PeerRun
from .program import Bound, Task
from .protocol import FRAME_TILE, Done, Infer, InferFailed
from .remote import tile_frame
from .report import pack_spans

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Inferences"]


class Inferences:
    """The inferences in flight on one session, and the loop that sends their pieces."""

    def __init__(self, server: Server, conn: Connection, sid: int, loop: asyncio.AbstractEventLoop,
                 received: ReceiptLog) -> None:
        self.server, self.conn, self.id, self.loop = server, conn, sid, loop
        self.received = received
        self.runs: dict[int, PeerRun] = {}
        self.started: dict[int, float] = {}
        self.started_ns: dict[int, int] = {}
        # pieces for the client, bounded in bytes: the compute thread waits for room
        self.outbox = Outbox(loop)

    def samples_since(self, start_ns: int) -> list[list[float]]:
        return [[float(n), s] for n, s in self.received.samples_since(start_ns)]

    def start(self, msg: Infer, program: Bound | None) -> None:
        """Start ``msg``'s inference with ``program`` (its plan) on the device worker."""
        srv = self.server
        if program is None or msg.inference_id in self.runs:
            raise ProtocolError(f"infer {msg.inference_id}: unknown plan {msg.plan_id}")
        if len(self.runs) >= srv.limits.max_inflight:
            raise ProtocolError(f"infer {msg.inference_id}: {len(self.runs)} inferences in "
                                f"flight already (max_inflight={srv.limits.max_inflight})")
        iid = msg.inference_id
        self.started[iid] = time.perf_counter()
        self.started_ns[iid] = time.perf_counter_ns()
        run = PeerRun(program, "server", on_send=self.sender(iid), owner=self.id,
                      # mypy cannot type a lambda with a default (capture) parameter
                      on_done=lambda r, iid=iid: self.loop.call_soon_threadsafe(  # type: ignore[misc]
                          self.finished, iid, r),
                      copier=srv.copier)
        self.runs[iid] = run
        if not run.finished:
            srv.worker.add(run)

    def deliver(self, frame: Frame) -> None:
        """A tile frame for one of the inferences in flight."""
        run = self.runs.get(frame.inference_id)
        if run is None or frame.kind != FRAME_TILE:
            raise ProtocolError(f"frame for unknown inference {frame.inference_id}")
        self.server.stats.bytes_in += frame.tensor.numel() * frame.tensor.element_size()
        self.server.acct.moved(self.id, bytes_in=frame.tensor.numel() * frame.tensor.element_size())
        run.deliver(frame.tensor_id, frame.row_start, frame.row_stop, frame.tensor)

    def sender(self, iid: int) -> Any:
        def send(task: Task, piece: torch.Tensor) -> None:  # worker thread
            self.outbox.put((iid, task, piece), piece.numel() * piece.element_size())

        return send

    def finished(self, iid: int, run: PeerRun) -> None:
        self.outbox.put((iid, None, run))  # on the loop: never waits

    async def send_loop(self) -> None:
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
            samples = self.samples_since(start_ns)
            await self.conn.send_message(Done(inference_id=iid, spans=pack_spans(run.spans, t0),
                                              up_samples=samples))

    def cancel(self) -> None:
        self.outbox.close()  # wakes the compute thread if it waits for room
        for run in self.runs.values():
            run.cancel()
        self.runs.clear()
