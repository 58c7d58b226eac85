"""A remote run: one inference split with the server, from the client's side.

The client's share runs on its compute thread; the pieces it produces go through a
bounded :class:`~.outbox.Outbox` to a send loop; the server's pieces arrive through the
client's read loop (:meth:`InFlight.deliver`). The result is returned as soon as the
client holds every output; the server's end-of-run report (``Done``: its spans and link
samples) is followed in the background (:attr:`InFlight.settled`), because over a slow
link it is no small frame (2675 spans were 79 kB, 0.28 s at 0.28 MB/s, 16% of an offload
inference in the edge lab; packed since, 32 kB). The run fails when the link is lost, or the server fails or
stops making progress for ``peer_timeout`` before the outputs are in: then the session
finishes it locally (see ``session.py``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConnectError, LopInferError, ProtocolError, TransportError
from ..log import logger
from ..transports import Connection, Frame
from .outbox import Outbox
from .peer import PeerRun
from .program import Bound, Task
from .protocol import FRAME_TILE, Done, Infer, InferFailed
from .report import Report, Span, busy_s, timeline, unpack_spans

if TYPE_CHECKING:
    from .client import Client

__all__ = ["InFlight", "run_remote", "tile_frame", "LATE_REPORT"]

log = logger("client")

# Once the client holds every output, the server's Done brings only its spans and link
# samples; the result does not wait for it. The report follows it for at most this long
# (seconds, or this share of the time the inference has taken, whichever is longer): in
# the edge lab a Done once came 164 s after the outputs.
DONE_GRACE_S = 2.0
DONE_GRACE_SHARE = 0.25
LATE_REPORT = "the server's end-of-run report came late: its spans are missing"


def tile_frame(task: Task, piece: torch.Tensor, inference_id: int, session_id: int = 0) -> Frame:
    """The frame that carries ``piece``, the output of ``task``, to the other peer."""
    return Frame(tensor=piece, kind=FRAME_TILE, session_id=session_id,
                 inference_id=inference_id, tensor_id=task.id,
                 dim=-1 if task.dim is None else task.dim,
                 row_start=task.a if task.dim is not None else 0,
                 row_stop=task.b if task.dim is not None else 0)


class InFlight:
    """Event-loop side of one inference in flight: both peers' completion, progress,
    what the server reported, and why it failed (``failure``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.client_done = loop.create_future()
        self.server_done = loop.create_future()
        self.failure: str | None = None
        self.started = self.last_progress = time.monotonic()
        self.run: PeerRun | None = None
        self.server_late = False  # the outputs came, the server's Done did not in time
        self.frames_up = self.frames_down = 0
        # done when the server's Done came or its grace ran out (the report is complete)
        self.settled: asyncio.Future = loop.create_future()
        self.server_spans: list[Span] = []
        self.server_busy = 0.0
        self.up_samples: list[list[float]] = []

    def deliver(self, frame: Frame) -> None:
        """A tile from the server (read loop)."""
        self.last_progress = time.monotonic()
        self.frames_down += 1
        if self.run is not None:
            self.run.deliver(frame.tensor_id, frame.row_start, frame.row_stop, frame.tensor)

    def server_message(self, msg: Done | InferFailed) -> None:
        """The server's end of its share (read loop)."""
        self.last_progress = time.monotonic()
        self.frames_down += 1
        if isinstance(msg, Done):
            try:  # a report the server garbled costs the report, not the result
                self.server_spans = unpack_spans(msg.spans)
                self.server_busy = busy_s(self.server_spans)
            except ProtocolError as exc:
                log.warning("the server's report of its spans was refused: %s", exc)
            self.up_samples = msg.up_samples
            _set(self.server_done, True)
        else:
            self.link_lost(f"the server failed: {msg.message}")

    def link_lost(self, why: str) -> None:
        """The run cannot finish with the server (any task on the loop)."""
        if self.failure is None:
            self.failure = why
        for fut in (self.client_done, self.server_done):
            _set(fut, False)

    @property
    def why(self) -> str:
        """Why it failed: the link's reason, else the client's own error."""
        if self.failure:
            return self.failure
        return str(self.run.error) if self.run is not None and self.run.error else "failed"

    @property
    def ok(self) -> bool:
        return self.failure is None and self.run is not None and self.run.error is None

    def report(self, program: Bound, plan_name: str, t0: float, latency: float) -> Report:
        """The report of a run that succeeded (times from ``t0``, both peers' spans)."""
        assert self.run is not None
        moved = program.bytes_moved()
        spans = self.run.spans
        return Report(latency_s=latency, plan=plan_name, bytes_up=moved["up"],
                      reason=LATE_REPORT if self.server_late else "",
                      bytes_down=moved["down"], frames_up=self.frames_up,
                      frames_down=self.frames_down, client_busy_s=busy_s(spans),
                      server_busy_s=self.server_busy,
                      timeline=timeline("client", spans, t0)
                      + timeline("server", self.server_spans))

    def __repr__(self) -> str:
        state = "ok" if self.ok else self.failure or "running"
        return f"<InFlight {state} up={self.frames_up} down={self.frames_down}>"


def _set(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


async def run_remote(client: Client, program: Bound, plan_id: int,
                     inputs: tuple[torch.Tensor, ...]) -> tuple[int, InFlight]:
    """Run one inference with plan ``plan_id`` (compiled on the server) split with the
    server; returns (its id, its state). A failure is in the state, never raised."""
    loop = asyncio.get_running_loop()
    flight = InFlight(loop)
    outbox = Outbox(loop, timeout=client.peer_timeout)

    def on_send(task: Task, piece: torch.Tensor) -> None:  # any thread
        outbox.put((task, piece), piece.numel() * piece.element_size())

    def on_done(run: PeerRun) -> None:
        loop.call_soon_threadsafe(_set, flight.client_done, run.error is None)

    sender: asyncio.Task | None = None
    conn = client.conn  # the inference lives and dies with this connection
    iid = client.track(flight)

    def end() -> None:  # what the server sends for it is no longer routed to it
        outbox.close()  # wakes a compute thread waiting for room
        if sender is not None:
            sender.cancel()
        client.untrack(iid)
        _set(flight.settled, True)

    try:
        if conn is None:
            raise ConnectError(f"not connected to {client.url}")
        # the run exists before the server hears of the inference; its input pieces
        # wait in the outbox until Infer is sent
        flight.run = PeerRun(program, "client", on_send=on_send, on_done=on_done,
                             inputs=inputs)
        await client.report_fallbacks(conn)
        await conn.send_message(Infer(inference_id=iid, plan_id=plan_id))
        sender = asyncio.create_task(_send_loop(conn, iid, outbox, flight))
        if not flight.run.finished:
            client.worker.add(flight.run)
        await _wait(client, flight)
    except (TransportError, ConnectError) as exc:
        flight.link_lost(str(exc))
    except BaseException:
        end()
        raise
    if not flight.ok:
        if flight.run is not None:
            flight.run.cancel()
        end()
    elif flight.server_done.done():
        end()
    else:  # every output is in: the result goes now, the server's report follows
        follow = asyncio.create_task(_follow_done(flight, end))
        _FOLLOWERS.add(follow)
        follow.add_done_callback(_FOLLOWERS.discard)
    return iid, flight


_FOLLOWERS: set[asyncio.Task] = set()  # referenced until done (the loop keeps weak refs)


async def _follow_done(flight: InFlight, end: Any) -> None:
    """Wait for the server's Done after the outputs are in, for at most the grace
    (``DONE_GRACE_S``, ``DONE_GRACE_SHARE``); the sender keeps sending meanwhile."""
    grace = max(DONE_GRACE_S, DONE_GRACE_SHARE * (time.monotonic() - flight.started))
    try:
        if not await asyncio.wait_for(asyncio.shield(flight.server_done), grace):
            flight.server_late = True  # the link went, or the server failed, after the outputs
    except asyncio.TimeoutError:
        flight.server_late = True
        log.warning("no end-of-run report from the server %.1f s after the outputs were "
                    "in: the report has no server spans", grace)
    finally:
        end()


async def _wait(client: Client, flight: InFlight) -> None:
    """Wait until the client's share is done (it holds every output) or the run fails;
    the run fails when the server stops making progress for ``peer_timeout``."""
    timeout = client.peer_timeout
    fut = flight.client_done
    while not fut.done():
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=min(timeout, 1.0))
        except asyncio.TimeoutError:
            if time.monotonic() - flight.last_progress > timeout:
                flight.link_lost(f"no data from the server for {timeout:g} s")
                client.give_up()  # hung: later calls must not wait for it


async def _send_loop(conn: Connection, iid: int, outbox: Outbox, flight: InFlight) -> None:
    try:
        while True:
            task, piece = await outbox.get()
            await conn.send_tensor(tile_frame(task, piece, iid))
            flight.frames_up += 1
    except (TransportError, LopInferError) as exc:
        flight.link_lost(f"sending to the server failed: {exc}")
