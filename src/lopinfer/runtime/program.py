"""Compile a Plan into tasks for both peers: tiles, transfers, gathers.

Each peer keeps, per value, a row buffer made of chunks: tiles it computes and pieces
it receives. A task "rows [a, b) of node n on peer P" reads exactly the rows its
locality rule needs from P's chunks (a view when they lie in one chunk, a
concatenation when they span several). Rows a peer needs and does not compute become
``recv`` tasks: pieces of the other peer's tiles (halos included), one per producing
tile, so each crosses the link as soon as it exists. Compiling checks that every
needed row is computed somewhere (:class:`PlanError` names the node otherwise).

Everything that does not depend on input values is decided here, once: which chunks
each task reads, kernels with their tile arguments bound, a valid order, when each
chunk can be freed. A run is then a flat loop (single process) or two loops joined by
the transport (client/server runtime).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import PlanError
from ..graph import Graph, Node
from ..graph._kernel import bind_call
from ..graph.locality import default_dim
from ..scheduler.plan import PEERS, WHOLE, Plan

__all__ = ["Task", "Program", "compile_plan"]

Store = list[Any] | dict[int, Any]  # task outputs by task id: a list (executor), a dict (peer)
Reader = Callable[[Store], torch.Tensor]
Piece = tuple[int, int, int, int, int]  # task id, chunk rows [a, b), rows used [s, e)
_RESHAPE = torch.ops.aten.reshape.default


@dataclass(slots=True)
class Task:
    """One step on one peer: compute rows [a, b) of ``value`` (``dim`` None: whole),
    receive them from the other peer (``recv``), or assemble the whole value (``gather``)."""

    id: int
    peer: str
    value: str
    a: int
    b: int
    dim: int | None
    kind: str  # "input" | "tile" | "whole" | "gather" | "recv"
    deps: list[int] = field(default_factory=list)
    readers: list[Reader] = field(default_factory=list)
    fn: Callable[..., torch.Tensor] | None = None
    rank: float = 0.0  # position of its value in the graph (for orders)

    def __repr__(self) -> str:
        rows = f"[{self.a}:{self.b})@{self.dim}" if self.dim is not None else "whole"
        return f"<Task {self.id} {self.peer} {self.kind} {self.value} {rows}>"


@dataclass(slots=True)
class _Chunks:
    dim: int | None  # None: one chunk holds the whole value
    tasks: list[tuple[int, int, int]]  # (task id, a, b)
    gather: int | None = None


@dataclass
class Program:
    """Tasks of both peers for one plan, and a valid single-process order."""

    graph: Graph
    plan: Plan
    tasks: list[Task]
    inputs: list[int]  # client task per graph input
    outputs: list[int]  # client task holding each graph output whole
    order: list[int] = field(default_factory=list)
    frees: dict[int, list[int]] = field(default_factory=dict)  # after task -> free these

    @property
    def transfers(self) -> list[Task]:
        """Pieces that cross the link: ``recv`` tasks on their receiving peer."""
        return [t for t in self.tasks if t.kind == "recv"]

    def bytes_moved(self) -> dict[str, int]:
        """Bytes each direction carries (up: client -> server)."""
        out = {"up": 0, "down": 0}
        for t in self.transfers:
            out["up" if t.peer == "server" else "down"] += piece_bytes(self.graph, t)
        return out

    def peer_tasks(self, peer: str) -> list[Task]:
        return [t for t in self.tasks if t.peer == peer]


def piece_bytes(graph: Graph, t: Task) -> int:
    """Bytes of the rows a task holds (the whole value when it is not in rows)."""
    meta = graph.meta(t.value)
    if t.dim is None:
        return meta.nbytes
    return meta.nbytes // meta.shape[t.dim] * (t.b - t.a)


class _Compiler:
    def __init__(self, graph: Graph, plan: Plan, bind: bool = True,
                 deadline: Callable[[], bool] | None = None) -> None:
        self.g, self.plan, self.bind, self.deadline = graph, plan, bind, deadline
        self.tasks: list[Task] = []
        self.chunks: dict[tuple[str, str], _Chunks] = {}
        self.pos = {n.name: i for i, n in enumerate(graph.nodes)}
        self.tracked = dict(getattr(graph, "input_dims", {}) or {})
        for name, meta in graph.inputs.items():
            self.tracked.setdefault(name, default_dim(meta.shape))

    def new(self, peer: str, value: str, a: int, b: int, dim: int | None, kind: str,
            rank: float) -> Task:
        t = Task(len(self.tasks), peer, value, a, b, dim, kind, rank=rank)
        self.tasks.append(t)
        if self.deadline is not None and not t.id & 255 and self.deadline():
            raise PlanError(f"plan {self.plan.name!r}: compiling it ran past its time limit "
                            f"({len(self.tasks)} tasks made)")
        return t

    # -- values ---------------------------------------------------------------------------
    def dim_of(self, value: str) -> int | None:
        """The dim a value's rows run along (None: a whole value)."""
        if value in self.g.inputs:
            return self.tracked.get(value)
        node = self.g[value]
        return node.locality.dim if node.locality else None

    def size_of(self, value: str) -> int:
        d = self.dim_of(value)
        return 1 if d is None else self.g.meta(value).shape[d]

    def ch(self, peer: str, value: str) -> _Chunks:
        key = (peer, value)
        if key not in self.chunks:
            d = self.dim_of(value)
            if value in self.g.inputs:
                d = None if peer == "client" else d  # the client holds inputs whole
            elif self.g[value].locality is None:
                d = None
            self.chunks[key] = _Chunks(d, [])
        return self.chunks[key]

    # -- compile --------------------------------------------------------------------------
    def collect_needs(self) -> None:
        """Rows of each value each peer will read (merged), before any task exists, so
        each transfer is one piece per producing tile, not a fragment per reader."""
        needs: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for node in self.g.nodes:
            rows = self.plan.nodes[node.name]
            loc = node.locality
            for peer in PEERS:
                for a, b in rows.on(peer):
                    deps = ([(d.ref, d.dim, r) for d, r in zip(loc.deps, loc.need(a, b))]
                            if loc else [(r, None, None) for r in node.refs()])
                    for ref, dim, r in deps:
                        if self.g.kind(ref) == "param":
                            continue
                        vdim = self.dim_of(ref)
                        if vdim is None or dim != vdim or r is None:
                            r = (0, self.size_of(ref))
                        if r[1] > r[0]:
                            needs.setdefault((peer, ref), []).append(r)
        for name in self.g.outputs:
            needs.setdefault(("client", name), []).append((0, self.size_of(name)))
        self.needs = {k: _merge(v) for k, v in needs.items()}

    def run(self) -> Program:
        self.plan.check_shape(self.g)
        self.collect_needs()
        self.received: set[tuple[str, str]] = set()
        inputs = []
        for name in self.g.inputs:
            t = self.new("client", name, 0, 0, None, "input", -1)
            inputs.append(t.id)
            self.ch("client", name).tasks.append((t.id, 0, 0))
        for pos, node in enumerate(self.g.nodes):
            rows = self.plan.nodes[node.name]
            for peer in PEERS:
                for a, b in sorted(rows.on(peer)):
                    self.compile_task(node, pos, peer, a, b)
        outputs = [self.whole_on("client", name, "the model output") for name in self.g.outputs]
        prog = Program(self.g, self.plan, self.tasks, inputs, outputs)
        _order(prog)
        return prog

    def compile_task(self, node: Node, pos: int, peer: str, a: int, b: int) -> None:
        loc = node.locality
        needs: list[tuple[str, int | None, tuple[int, int] | None]]
        if loc is None:
            task = self.new(peer, node.name, 0, 0, None, "whole", pos)
            needs = [(r, None, None) for r in dict.fromkeys(node.refs())]
        else:
            task = self.new(peer, node.name, a, b, loc.dim, "tile", pos)
            needs = [(d.ref, d.dim, rows) for d, rows in zip(loc.deps, loc.need(a, b))]
        slots: dict[str, int] = {}
        static: dict[str, torch.Tensor] = {}
        for ref, dim, rows in needs:
            if self.g.kind(ref) == "param":
                p = self.g.params[ref]
                static[ref] = p if dim is None or rows is None else p.narrow(dim, rows[0], rows[1] - rows[0])
            else:
                slots[ref] = len(task.readers)
                task.readers.append(self.reader(task, ref, dim, rows, node.name))
        if not self.bind:
            pass  # for planning: the task graph without kernels
        elif loc is None:
            # tiles may leave a value in another memory format than a plain run would
            # (channels_last from oneDNN): view on a whole value must then copy
            op = _RESHAPE if node.target.split(".")[1] in ("view", "_unsafe_view") else None
            task.fn = bind_call(node, slots, static, op=op)
        else:
            task.fn = loc.make(a, b, slots, static)
        self.ch(peer, node.name).tasks.append((task.id, a, b) if loc else (task.id, 0, 1))

    # -- reading rows ---------------------------------------------------------------------
    def reader(self, task: Task, ref: str, dim: int | None, rows: tuple[int, int] | None,
               reader_name: str) -> Reader:
        peer = task.peer
        ch = self.ch(peer, ref)
        vdim = self.dim_of(ref)
        if rows is not None and rows[0] >= rows[1] and dim is not None:
            shape = list(self.g.meta(ref).shape)
            shape[dim] = 0
            device = next((p.device for p in self.g.params.values()), torch.device("cpu"))
            empty = torch.empty(shape, dtype=self.g.meta(ref).dtype, device=device)
            return lambda store: empty
        if ch.dim is None and (ch.tasks or ref in self.g.inputs and peer == "client"):
            tid = ch.tasks[0][0]
            task.deps.append(tid)
            return _take(tid) if rows is None or dim is None else _narrow(tid, dim, rows[0], rows[1] - rows[0])
        if vdim is not None and dim == vdim and rows is not None:
            pieces = self.cover(peer, ref, rows[0], rows[1], reader_name)
            task.deps.extend(p[0] for p in pieces)
            return _join(pieces, dim)
        tid = self.whole_on(peer, ref, reader_name)
        task.deps.append(tid)
        if rows is None or dim is None:
            return _take(tid)
        return _narrow(tid, dim, rows[0], rows[1] - rows[0])

    def whole_on(self, peer: str, ref: str, reader_name: str) -> int:
        """Task id holding all of ``ref`` on ``peer`` (receiving and gathering as needed)."""
        ch = self.ch(peer, ref)
        if ch.dim is None:
            if not ch.tasks:
                self.receive_whole(peer, ref, reader_name)
            return ch.tasks[0][0]
        if ch.gather is not None:
            return ch.gather
        pieces = self.cover(peer, ref, 0, self.size_of(ref), reader_name)
        if len(pieces) == 1 and pieces[0][1:] == (0, self.size_of(ref), 0, self.size_of(ref)):
            return pieces[0][0]
        rank = max(self.tasks[p[0]].rank for p in pieces) + 0.5
        t = self.new(peer, ref, 0, 0, None, "gather", rank)
        t.deps = [p[0] for p in pieces]
        t.readers = [_join(pieces, ch.dim)]
        t.fn = _identity
        ch.gather = t.id
        return t.id

    def cover(self, peer: str, ref: str, c: int, e: int, reader_name: str) -> list[Piece]:
        """Chunks of ``ref`` on ``peer`` covering rows [c, e), receiving the gaps:
        (task id, chunk start, chunk end, first row used, end row used) each."""
        ch = self.ch(peer, ref)
        if _gaps(ch.tasks, c, e) and (peer, ref) not in self.received:
            self.received.add((peer, ref))
            for gc, ge in _subtract(self.needs.get((peer, ref), [(c, e)]), ch.tasks):
                self.receive(peer, ref, gc, ge, reader_name)
        pieces = _greedy_cover(ch.tasks, c, e)
        if pieces is None:
            raise PlanError(f"rows [{c}, {e}) of {ref} needed by {reader_name} on the {peer} "
                            f"are not computed")
        return pieces

    def other(self, peer: str) -> str:
        return "server" if peer == "client" else "client"

    def receive(self, peer: str, ref: str, c: int, e: int, reader_name: str) -> None:
        """recv tasks on ``peer`` for rows [c, e) of ``ref``, one per source chunk."""
        src = self.other(peer)
        dim = self.dim_of(ref)
        assert dim is not None  # reached only through cover(), for values tiled along a dim
        ch = self.ch(peer, ref)
        if ref in self.g.inputs:
            if src != "client":
                raise PlanError(f"input {ref} lives on the client; the {peer} cannot send it")
            edges = self.plan.input_edges.get(ref) or (c, e)
            cuts = sorted({c, e, *[x for x in edges if c < x < e]})
            in_tid = self.chunks[("client", ref)].tasks[0][0]
            for a, b in zip(cuts, cuts[1:]):
                t = self.new(peer, ref, a, b, dim, "recv", -0.5)
                t.deps = [in_tid]
                t.readers = [_narrow(in_tid, dim, a, b - a)]
                t.fn = _identity
                ch.tasks.append((t.id, a, b))
            ch.tasks.sort(key=lambda x: (x[1], x[2]))
            return
        src_tiles = [(tid, a, b) for tid, a, b in self.ch(src, ref).tasks
                     if self.tasks[tid].kind in ("tile", "whole")]
        missing = _gaps(src_tiles, c, e)
        if missing:
            raise PlanError(
                f"node {ref}: rows {missing} needed by {reader_name} on the {peer} are computed "
                f"by neither peer"
            )
        for tid, a, b in src_tiles:
            lo, hi = max(a, c), min(b, e)
            if lo >= hi:
                continue
            t = self.new(peer, ref, lo, hi, dim, "recv", self.tasks[tid].rank + 0.25)
            t.deps = [tid]
            t.readers = [_take(tid) if (lo, hi) == (a, b) else _narrow(tid, dim, lo - a, hi - lo)]
            t.fn = _identity
            ch.tasks.append((t.id, lo, hi))
        ch.tasks.sort(key=lambda x: (x[1], x[2]))

    def receive_whole(self, peer: str, ref: str, reader_name: str) -> None:
        src = self.other(peer)
        src_ch = self.ch(src, ref)
        if not src_ch.tasks:
            raise PlanError(f"node {ref}, needed whole by {reader_name} on the {peer}, is computed "
                            f"by neither peer")
        tid = src_ch.tasks[0][0]
        t = self.new(peer, ref, 0, 0, None, "recv", self.tasks[tid].rank + 0.25)
        t.deps = [tid]
        t.readers = [_take(tid)]
        t.fn = _identity
        self.ch(peer, ref).tasks.append((t.id, 0, 1))


def compile_plan(graph: Graph, plan: Plan, *, bind: bool = True,
                 deadline: Callable[[], bool] | None = None) -> Program:
    """Tasks of both peers for ``plan`` on ``graph``; raises :class:`PlanError` when the
    plan leaves a needed row uncomputed or computes a global node partially.
    ``bind=False`` skips making kernels (enough to simulate the plan). ``deadline``,
    polled as tasks are made, stops the compilation (:class:`PlanError`) once it
    returns True: a server compiles plans from clients under a time limit."""
    return _Compiler(graph, plan, bind, deadline).run()


# -- orders and lifetimes -----------------------------------------------------------------
def _order(prog: Program) -> None:
    """A valid single-process order, depth first (the deepest ready task next): tiles
    stream through layers and chunks are freed early."""
    tasks = prog.tasks
    n = len(tasks)
    users: list[list[int]] = [[] for _ in range(n)]
    missing = [0] * n
    for t in tasks:
        t.deps = sorted(set(t.deps))
        missing[t.id] = len(t.deps)
        for d in t.deps:
            users[d].append(t.id)
    heap = [(-t.rank, t.a, t.id) for t in tasks if missing[t.id] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, _, tid = heapq.heappop(heap)
        order.append(tid)
        for u in users[tid]:
            missing[u] -= 1
            if missing[u] == 0:
                heapq.heappush(heap, (-tasks[u].rank, tasks[u].a, u))
    if len(order) != n:
        raise PlanError("the plan's tasks wait on each other in a cycle")
    prog.order = order
    prog.frees = lifetimes(prog, order)


def lifetimes(prog: Program, order: list[int]) -> dict[int, list[int]]:
    """After which task (in ``order``) each task's chunk is read for the last time."""
    keep = set(prog.outputs) | set(prog.inputs)
    where = {tid: i for i, tid in enumerate(order)}
    last = dict(where)
    for t in prog.tasks:
        if t.id not in where:
            continue
        for d in t.deps:
            if d in last:
                last[d] = max(last[d], where[t.id])
    frees: dict[int, list[int]] = {}
    for tid, i in last.items():
        if tid not in keep:
            frees.setdefault(order[i], []).append(tid)
    return frees


# -- chunk helpers ------------------------------------------------------------------------
def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _subtract(intervals: list[tuple[int, int]], chunks: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """Parts of ``intervals`` no chunk covers."""
    out = []
    for a, b in intervals:
        out.extend(_gaps(chunks, a, b))
    return out


def _gaps(chunks: list[tuple[int, int, int]], c: int, e: int) -> list[tuple[int, int]]:
    gaps, pos = [], c
    for _, a, b in sorted(chunks, key=lambda x: x[1]):
        if a > pos and pos < e:
            gaps.append((pos, min(a, e)))
        pos = max(pos, b)
        if pos >= e:
            break
    if pos < e:
        gaps.append((pos, e))
    return gaps


def _greedy_cover(chunks: list[tuple[int, int, int]], c: int, e: int) -> list[Piece] | None:
    """Fewest chunks covering [c, e) (earlier chunks, i.e. local tiles, win ties);
    each used from where the previous one ends, so no row is taken twice."""
    pieces: list[Piece] = []
    pos = c
    while pos < e:
        best = None
        for tid, a, b in chunks:
            if a <= pos < b and (best is None or b > best[2]):
                best = (tid, a, b)
        if best is None:
            return None
        end = min(best[2], e)
        pieces.append((best[0], best[1], best[2], pos, end))
        pos = end
    return pieces


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _take(tid: int) -> Reader:
    return lambda store: store[tid]


def _narrow(tid: int, dim: int, start: int, length: int) -> Reader:
    return lambda store: store[tid].narrow(dim, start, length)


def _join(pieces: list[Piece], dim: int) -> Reader:
    """Reader of the rows the pieces cover: a view for one piece, else a concatenation."""
    if len(pieces) == 1:
        tid, a, b, s, e = pieces[0]
        return _take(tid) if (s, e) == (a, b) else _narrow(tid, dim, s - a, e - s)
    parts = [(tid, s - a, e - s) for tid, a, _, s, e in pieces]

    def read(store: Store) -> Any:
        return torch.cat([store[tid].narrow(dim, off, n) for tid, off, n in parts], dim)

    return read


__all__ += ["lifetimes", "piece_bytes", "WHOLE"]
