"""Discrete-event simulator with exactly the runtime's rules.

One compute worker per peer takes the next ready task by the rules of
:mod:`lopinfer.scheduler.order`, the ones :class:`~lopinfer.runtime.peer.PeerRun` runs by. When a
task ends, each piece the other peer receives from it goes, in the order the program
lists them, through that direction's three FIFO stages (:meth:`CostModel.stages`): the
sender's encoder (per-frame and per-byte codec cost, LZ4 where the transport would
use it), the link (per-frame cost, wire bytes over the bandwidth, then ``latency``)
and the receiver's decoder. The stages overlap across frames as the transport's do
(its codec threads compress a frame while the writer sends the one before); the
decoder's end makes the piece's ``recv`` task done on the receiver. The client's
inputs are there at time 0; the server hears of the inference ``up.latency`` after it
starts. The prediction's timeline has the same shape as ``session.last_report.timeline``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from .cost import CostModel
from .order import DependencyIndex, ReadyQueue
from .program import Program, Task, piece_bytes

__all__ = ["Prediction", "simulate", "lower_bound", "peer_queue", "critical_ranks"]


@dataclass
class Prediction:
    latency_s: float
    client_busy_s: float = 0.0
    server_busy_s: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    frames_up: int = 0
    frames_down: int = 0
    wire_up: int = 0  # bytes on the wire (after LZ4 where it pays)
    wire_down: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)


def task_cost(prog: Program, t: Task, cost: CostModel) -> float:
    peer = cost.peer(t.peer)
    if t.kind == "tile":
        return peer.task(t.value, t.b - t.a)
    if t.kind == "whole":
        return peer.task(t.value, 1)
    if t.kind == "gather":
        return peer.copy_per_byte * piece_bytes(prog.graph, t)
    return 0.0


def peer_queue(prog: Program, peer: str) -> ReadyQueue:
    """The ready queue of one simulated peer: the runtime's (one place to look)."""
    return ReadyQueue(prog, peer)


def simulate(prog: Program, cost: CostModel, *, timeline: bool = False) -> Prediction:
    """Predict the latency (and optionally the timeline) of ``prog`` under ``cost``."""
    tasks = prog.tasks
    # each peer's worker by the runtime's own rules (lopinfer.scheduler.order)
    queues = {p: peer_queue(prog, p) for p in ("client", "server")}
    free_at = {"client": 0.0, "server": cost.up.latency}
    # each direction's stages, keyed by the receiving peer: when each is next free
    encoder_free = {"server": 0.0, "client": 0.0}
    link_free = {"server": 0.0, "client": 0.0}
    decoder_free = {"server": 0.0, "client": 0.0}
    events: list[tuple[float, int, int, int]] = []  # (time, seq, kind 0=done 1=arrive, task)
    seq = 0
    pred = Prediction(0.0)
    spans = pred.timeline
    todo_client = sum(1 for t in tasks if t.peer == "client")

    def complete(tid: int, now: float) -> None:
        nonlocal seq, todo_client
        t = tasks[tid]
        if t.peer == "client":
            todo_client -= 1
            if todo_client == 0:
                pred.latency_s = now
        queue = queues[t.peer]
        queue.complete(tid)
        for r in queue.index.sends.get(tid, ()):
            n = piece_bytes(prog.graph, r)
            st = cost.stages(r.peer, n, r.value)
            wire = st.wire_bytes
            encoded = encoder_free[r.peer] = max(now, encoder_free[r.peer]) + st.encode
            start = max(encoded, link_free[r.peer])
            end = link_free[r.peer] = start + st.wire
            landed = end + cost.link_to(r.peer).latency
            arrive = decoder_free[r.peer] = max(landed, decoder_free[r.peer]) + st.decode
            if r.peer == "server":
                pred.bytes_up += n
                pred.wire_up += wire
                pred.frames_up += 1
            else:
                pred.bytes_down += n
                pred.wire_down += wire
                pred.frames_down += 1
            if timeline:
                spans.append({"peer": "link-up" if r.peer == "server" else "link-down",
                              "kind": "transfer", "task": r.id, "start": start, "end": landed})
            seq += 1
            heapq.heappush(events, (arrive, seq, 1, r.id))

    for tid in prog.inputs:
        complete(tid, 0.0)
    now = 0.0
    while True:
        for peer in ("client", "server"):
            if queues[peer] and free_at[peer] <= now:
                tid = queues[peer].pop()
                start = max(now, free_at[peer])
                dur = task_cost(prog, tasks[tid], cost)
                free_at[peer] = start + dur
                if peer == "client":
                    pred.client_busy_s += dur
                else:
                    pred.server_busy_s += dur
                if timeline and tasks[tid].kind in ("tile", "whole", "gather"):
                    spans.append({"peer": peer, "kind": tasks[tid].kind, "task": tid,
                                  "start": start, "end": start + dur})
                seq += 1
                heapq.heappush(events, (start + dur, seq, 0, tid))
        waiting = [free_at[p] for p in ("client", "server") if queues[p] and free_at[p] > now]
        if events and (not waiting or events[0][0] <= min(waiting)):
            now, _, _, tid = heapq.heappop(events)
            complete(tid, now)
        elif waiting:
            now = min(waiting)  # a worker frees up with work waiting
        else:
            break
    if todo_client > 0:
        raise RuntimeError("simulation stalled: the program waits on itself")
    return pred


def lower_bound(prog: Program, cost: CostModel) -> float:
    """The pipeline bound of this assignment: the busiest resource (client, server,
    either link direction) with no per-task or per-frame overhead, as if tiles were
    arbitrarily fine."""
    busy = {"client": 0.0, "server": 0.0, "up": 0.0, "down": 0.0}
    for t in prog.tasks:
        if t.kind in ("tile", "whole"):
            c = cost.peer(t.peer).nodes.get(t.value)
            if c is not None:
                busy[t.peer] += c.per_row * ((t.b - t.a) if t.kind == "tile" else 1)
        elif t.kind == "recv":  # the wire bytes alone: LZ4 where it pays, no per-byte CPU
            wire = cost.transfer(t.peer, piece_bytes(prog.graph, t), t.value)[1]
            busy["up" if t.peer == "server" else "down"] += wire / cost.link_to(t.peer).bandwidth
    return max(busy.values())


def critical_ranks(prog: Program, cost: CostModel) -> dict[str, tuple[float, ...]]:
    """Each tile's critical path to the end of the inference (HEFT's upward rank): its
    own cost plus the longest chain of work and transfers that waits on it, in seconds;
    per node, in :attr:`~lopinfer.scheduler.plan.Plan.ranks`' order. Ordering ready tasks
    by it, longest first, starts early what the outputs wait on longest (a server tile
    whose rows still travel back, before one whose result is local)."""
    tasks = prog.tasks
    users = DependencyIndex(prog).users  # both peers: a recv is read after its source
    up: dict[int, float] = {}
    for tid in reversed(prog.order):  # a valid order of all tasks: users come later
        t = tasks[tid]
        if t.kind == "recv":
            own = (cost.transfer(t.peer, piece_bytes(prog.graph, t), t.value)[0]
                   + cost.link_to(t.peer).latency)
        else:
            own = task_cost(prog, t, cost)
        up[tid] = own + max((up[u] for u in users[tid]), default=0.0)
    ranks: dict[str, list[float]] = {}
    for t in tasks:  # in id order: the order each node's tiles were made
        if t.kind in ("tile", "whole"):
            ranks.setdefault(t.value, []).append(up[t.id])
    return {k: tuple(v) for k, v in ranks.items()}
