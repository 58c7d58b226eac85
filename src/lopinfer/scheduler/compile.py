"""Compile a Plan into tasks for both peers: tiles, transfers, gathers (as data).

Each peer keeps, per value, a row buffer made of chunks: tiles it computes and pieces
it receives. A task "rows [a, b) of node n on peer P" reads exactly the rows its
locality rule needs from P's chunks (one piece when they lie in one chunk, several
joined when they span several). Rows a peer needs and does not compute become
``recv`` tasks: pieces of the other peer's tiles (halos included), one per producing
tile, so each crosses the link as soon as it exists. Compiling checks that every
needed row is computed somewhere (:class:`PlanError` names the node otherwise).

Everything that does not depend on input values is decided here, once: which chunks
each task reads, a valid order, when each chunk can be freed. Kernels are bound to the
result by the runtime (:func:`lopinfer.runtime.program.bind`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from ..errors import PlanError
from ..graph import Graph, Node
from ..graph.locality import default_dim
from .order import lifetimes, single_process_order
from .plan import PEERS, Plan
from .program import WHOLE_PIECE, Program, Read, Task

__all__ = ["compile_program", "assign_ranks", "with_ranks"]

Piece = tuple[int, int, int, int, int]  # task id, chunk rows [a, b), rows used [s, e)


@dataclass(slots=True)
class _Chunks:
    dim: int | None  # None: one chunk holds the whole value
    tasks: list[tuple[int, int, int]]  # (task id, a, b)
    gather: int | None = None


class _Compiler:
    def __init__(self, graph: Graph, plan: Plan,
                 deadline: Callable[[], bool] | None = None) -> None:
        self.g, self.plan, self.deadline = graph, plan, deadline
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
        for t in self.tasks:
            t.deps = sorted(set(t.deps))
        if self.plan.ranks:
            assign_ranks(self.tasks, self.plan.ranks)
        prog = Program(self.g, self.plan, self.tasks, inputs, outputs)
        prog.order = single_process_order(prog)
        prog.frees = lifetimes(prog, prog.order)
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
        for ref, dim, rows in needs:  # parameters are bound with the kernel, not read
            if self.g.kind(ref) != "param":
                task.reads.append(self.reader(task, ref, dim, rows, node.name))
        self.ch(peer, node.name).tasks.append((task.id, a, b) if loc else (task.id, 0, 1))

    # -- reading rows ---------------------------------------------------------------------
    def reader(self, task: Task, ref: str, dim: int | None, rows: tuple[int, int] | None,
               reader_name: str) -> Read:
        peer = task.peer
        ch = self.ch(peer, ref)
        vdim = self.dim_of(ref)
        if rows is not None and rows[0] >= rows[1] and dim is not None:
            return Read(ref, dim, ())  # no rows: an empty tensor
        if ch.dim is None and (ch.tasks or ref in self.g.inputs and peer == "client"):
            tid = ch.tasks[0][0]
            task.deps.append(tid)
            return _take(ref, tid) if rows is None or dim is None else _narrow(ref, tid, dim, rows[0], rows[1] - rows[0])
        if vdim is not None and dim == vdim and rows is not None:
            pieces = self.cover(peer, ref, rows[0], rows[1], reader_name)
            task.deps.extend(p[0] for p in pieces)
            return _join(ref, pieces, dim)
        tid = self.whole_on(peer, ref, reader_name)
        task.deps.append(tid)
        if rows is None or dim is None:
            return _take(ref, tid)
        return _narrow(ref, tid, dim, rows[0], rows[1] - rows[0])

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
        t.reads = [_join(ref, pieces, ch.dim)]
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
                t.reads = [_narrow(ref, in_tid, dim, a, b - a)]
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
            t.reads = [_take(ref, tid) if (lo, hi) == (a, b) else _narrow(ref, tid, dim, lo - a, hi - lo)]
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
        t.reads = [_take(ref, tid)]
        self.ch(peer, ref).tasks.append((t.id, 0, 1))


def compile_program(graph: Graph, plan: Plan, *,
                    deadline: Callable[[], bool] | None = None) -> Program:
    """Tasks of both peers for ``plan`` on ``graph``, as data; raises :class:`PlanError`
    when the plan leaves a needed row uncomputed or computes a global node partially.
    ``deadline``, polled as tasks are made, stops the compilation (:class:`PlanError`)
    once it returns True: a server compiles plans from clients under a time limit."""
    return _Compiler(graph, plan, deadline).run()


def assign_ranks(tasks: list[Task], ranks: Mapping[str, tuple[float, ...]]) -> None:
    """Give each node's tile and whole tasks the plan's ranks (:attr:`Plan.ranks`: in the
    order they were made, the client's tiles then the server's), and each gather and
    receive the rank derived from its sources' as the compiler does; in place, tasks in
    id order (sources first)."""
    made: dict[str, int] = {}
    for t in tasks:
        if t.kind in ("tile", "whole"):
            r = ranks.get(t.value)
            if r is not None:
                i = made.get(t.value, 0)
                made[t.value] = i + 1
                t.rank = r[i]
        elif t.kind == "gather":
            t.rank = max(tasks[d].rank for d in t.deps) + 0.5
        elif t.kind == "recv" and tasks[t.deps[0]].kind != "input":
            t.rank = tasks[t.deps[0]].rank + 0.25


def with_ranks(prog: Program, ranks: Mapping[str, tuple[float, ...]], *,
               orders: bool = True) -> Program:
    """``prog`` as :func:`compile_program` makes it for its plan with ``ranks`` (a copy;
    ``prog`` is unchanged): what the planner scores before it chooses the ranks.
    ``orders=False`` leaves out the one-process order and the chunk lifetimes, which
    only a run needs (the simulator does not read them)."""
    tasks = [copy.copy(t) for t in prog.tasks]
    assign_ranks(tasks, ranks)
    out = Program(prog.graph, replace(prog.plan, ranks=dict(ranks)), tasks, prog.inputs,
                  prog.outputs)
    if orders:
        out.order = single_process_order(out)
        out.frees = lifetimes(out, out.order)
    return out


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


def _take(ref: str, tid: int) -> Read:
    return Read(ref, None, ((tid, 0, WHOLE_PIECE),))


def _narrow(ref: str, tid: int, dim: int, start: int, length: int) -> Read:
    return Read(ref, dim, ((tid, start, length),))


def _join(ref: str, pieces: list[Piece], dim: int) -> Read:
    """The rows the pieces cover: one piece as it is, else each narrowed and joined."""
    if len(pieces) == 1:
        tid, a, b, s, e = pieces[0]
        return _take(ref, tid) if (s, e) == (a, b) else _narrow(ref, tid, dim, s - a, e - s)
    return Read(ref, dim, tuple((tid, s - a, e - s) for tid, a, _, s, e in pieces))
