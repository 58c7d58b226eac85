"""A compiled plan as plain data: the tasks of both peers, what each reads, what crosses.

A :class:`Task` is one step on one peer: compute rows ``[a, b)`` of a value
(``tile``), a whole value (``whole``), assemble a value from its chunks (``gather``),
receive rows from the other peer (``recv``), or hold a graph input (``input``). What a
task reads is data too: one :class:`Read` per activation argument, each a list of
pieces of earlier tasks' outputs (a task id, and which of its rows), joined along a
dim. Nothing here holds a kernel or a closure: the simulator scores a program as it
is, and the runtime binds kernels to it (:func:`lopinfer.runtime.program.bind`).

Every task and program has a compact text form, one line per task, in the spirit of
``torch.distributed.pipelining``'s actions, that :func:`parse_task` and
:func:`parse_program` read back exactly::

    12 server tile conv1 [0:16)@2 r=3.0 <- relu@2:4[14:+2],5
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import Graph
from .plan import Plan

__all__ = ["Task", "Read", "Program", "piece_bytes", "format_task", "parse_task",
           "format_program", "parse_program", "KINDS"]

KINDS = ("input", "tile", "whole", "gather", "recv")
WHOLE_PIECE = -1  # a piece's length when it takes its task's whole output, unnarrowed


@dataclass(frozen=True, slots=True)
class Read:
    """One argument of a task: rows of value ``ref`` along ``dim`` (None: the whole
    value), made of ``pieces`` ``(task id, first row, rows)`` in row order; a piece of
    length :data:`WHOLE_PIECE` is its task's output as it is. No piece: an empty range."""

    ref: str
    dim: int | None
    pieces: tuple[tuple[int, int, int], ...]

    def tasks(self) -> list[int]:
        return [p[0] for p in self.pieces]


@dataclass(slots=True)
class Task:
    """One step on one peer (see the module docstring); ``rank`` orders ready tasks
    (:mod:`lopinfer.scheduler.order`): its value's position in the graph, or the plan's
    rank for the tile (:attr:`~lopinfer.scheduler.plan.Plan.ranks`)."""

    id: int
    peer: str
    value: str
    a: int
    b: int
    dim: int | None
    kind: str  # "input" | "tile" | "whole" | "gather" | "recv"
    deps: list[int] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    rank: float = 0.0

    def __repr__(self) -> str:
        return f"<Task {format_task(self)}>"


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

    def __repr__(self) -> str:
        return (f"<Program {self.plan.name!r} tasks={len(self.tasks)} "
                f"transfers={len(self.transfers)}>")


def piece_bytes(graph: Graph, t: Task) -> int:
    """Bytes of the rows a task holds (the whole value when it is not in rows)."""
    meta = graph.meta(t.value)
    if t.dim is None:
        return meta.nbytes
    return meta.nbytes // meta.shape[t.dim] * (t.b - t.a)


# -- text form ----------------------------------------------------------------------------
def _format_read(r: Read) -> str:
    pieces = ",".join(str(tid) if n == WHOLE_PIECE else f"{tid}[{s}:+{n}]"
                      for tid, s, n in r.pieces)
    return f"{r.ref}@{'*' if r.dim is None else r.dim}:{pieces}"


def _parse_read(text: str) -> Read:
    ref, _, rest = text.rpartition("@")  # value names hold neither "@" nor ":"
    dim, _, pieces = rest.partition(":")
    out = []
    for p in filter(None, pieces.split(",")):
        if "[" in p:
            tid, rest = p.split("[")
            s, n = rest.rstrip("]").split(":+")
            out.append((int(tid), int(s), int(n)))
        else:
            out.append((int(p), 0, WHOLE_PIECE))
    return Read(ref, None if dim == "*" else int(dim), tuple(out))


def format_task(t: Task) -> str:
    """``id peer kind value rows r=rank <- reads`` (reads ``;``-separated); a recv's
    source task, which it does not read, is written ``from N``."""
    rows = f"[{t.a}:{t.b})@{t.dim}" if t.dim is not None else "*"
    text = f"{t.id} {t.peer} {t.kind} {t.value} {rows} r={t.rank!r}"
    extra = sorted(set(t.deps) - {tid for r in t.reads for tid in r.tasks()})
    if t.reads:
        text += " <- " + "; ".join(_format_read(r) for r in t.reads)
    if extra:
        text += " from " + ",".join(map(str, extra))
    return text


def parse_task(text: str) -> Task:
    """The task :func:`format_task` wrote."""
    text, _, extra = text.partition(" from ")
    head, _, reads = text.partition(" <- ")
    tid, peer, kind, value, rows, rank = head.split(" ")
    if kind not in KINDS:
        raise ValueError(f"task kind {kind!r} is not one of {KINDS}")
    if rows == "*":
        a = b = 0
        dim = None
    else:
        span, _, d = rows.partition(")@")
        a_s, b_s = span.lstrip("[").split(":")
        a, b, dim = int(a_s), int(b_s), int(d)
    parsed = [_parse_read(r) for r in reads.split("; ")] if reads else []
    deps = {p for r in parsed for p in r.tasks()} | {int(x) for x in extra.split(",") if x}
    return Task(int(tid), peer, value, a, b, dim, kind, sorted(deps), parsed,
                float(rank.removeprefix("r=")))


def format_program(prog: Program) -> str:
    """The program as text: a header naming its inputs and outputs, then a task a line."""
    head = (f"# program inputs={','.join(map(str, prog.inputs))} "
            f"outputs={','.join(map(str, prog.outputs))} {prog.plan.name}")
    return "\n".join([head, *(format_task(t) for t in prog.tasks)])


def parse_program(text: str, graph: Graph, plan: Plan) -> Program:
    """The program :func:`format_program` wrote, for ``graph`` and ``plan``, with its
    single-process order and lifetimes made again."""
    from .order import lifetimes, single_process_order

    head, *lines = text.splitlines()
    fields = dict(f.split("=", 1) for f in head.split(maxsplit=4)[2:4])
    tasks = [parse_task(line) for line in lines]
    prog = Program(graph, plan, tasks, [int(x) for x in fields["inputs"].split(",") if x],
                   [int(x) for x in fields["outputs"].split(",") if x])
    prog.order = single_process_order(prog)
    prog.frees = lifetimes(prog, prog.order)
    return prog
