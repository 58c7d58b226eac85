"""Kernels bound to a compiled program: what makes the scheduler's data runnable.

:func:`lopinfer.scheduler.compile.compile_program` decides everything about a plan as
data (tasks, what each reads, the order); :func:`bind` turns each task into a kernel
``fn(*xs)`` with its tile's arguments and parameter slices fixed, and each
:class:`~lopinfer.scheduler.program.Read` into a reader of the task store. A run is
then a flat loop of ``fn(*[read(store) for read in readers])``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..graph import Graph, bind_call
from ..scheduler.compile import compile_program
from ..scheduler.plan import WHOLE, Plan
from ..scheduler.program import WHOLE_PIECE, Program, Read, Task, piece_bytes

__all__ = ["Bound", "bind", "compile_plan", "Program", "Task", "piece_bytes", "WHOLE"]

Store = list[Any] | dict[int, Any]  # task outputs by task id: a list (executor), a dict (peer)
Reader = Callable[[Store], torch.Tensor]
Kernel = Callable[..., torch.Tensor]
_RESHAPE = torch.ops.aten.reshape.default
_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last,
            "channels_last_3d": torch.channels_last_3d}


@dataclass
class Bound:
    """A program with a kernel and readers per task (``fns[i]``, ``readers[i]``; an
    input task has neither)."""

    program: Program
    fns: list[Kernel | None]
    readers: list[tuple[Reader, ...]]

    # the program's data, read through
    @property
    def graph(self) -> Graph:
        return self.program.graph

    @property
    def plan(self) -> Plan:
        return self.program.plan

    @property
    def tasks(self) -> list[Task]:
        return self.program.tasks

    @property
    def inputs(self) -> list[int]:
        return self.program.inputs

    @property
    def outputs(self) -> list[int]:
        return self.program.outputs

    @property
    def order(self) -> list[int]:
        return self.program.order

    @property
    def frees(self) -> dict[int, list[int]]:
        return self.program.frees

    @property
    def transfers(self) -> list[Task]:
        return self.program.transfers

    def bytes_moved(self) -> dict[str, int]:
        return self.program.bytes_moved()

    def peer_tasks(self, peer: str) -> list[Task]:
        return self.program.peer_tasks(peer)


def compile_plan(graph: Graph, plan: Plan, *, deadline: Callable[[], bool] | None = None) -> Bound:
    """Compile ``plan`` (:func:`~lopinfer.scheduler.compile.compile_program`) and bind
    its kernels: what a peer or the tiled executor runs."""
    return bind(compile_program(graph, plan, deadline=deadline))


def bind(program: Program) -> Bound:
    """Kernels and readers for every task of ``program``."""
    g = program.graph
    device = next((p.device for p in g.params.values()), torch.device("cpu"))
    fns: list[Kernel | None] = []
    readers: list[tuple[Reader, ...]] = []
    for t in program.tasks:
        reads = [_reader(g, r, device) for r in t.reads]
        if t.kind in ("tile", "whole"):
            fn, reads = _kernel(g, t, reads)
        elif t.kind in ("gather", "recv"):
            fn = _identity
        else:
            fn = None
        fns.append(fn)
        readers.append(tuple(reads))
    return Bound(program, fns, readers)


def _kernel(g: Graph, t: Task, reads: list[Reader]) -> tuple[Kernel, list[Reader]]:
    """The node's op on this task's rows: activations from ``reads`` in the order the
    compiler made them, parameters (sliced to the rows) fixed now."""
    node = g[t.value]
    loc = node.locality
    if t.kind == "whole" or loc is None:
        needs: list[tuple[str, int | None, tuple[int, int] | None]] = [
            (r, None, None) for r in dict.fromkeys(node.refs())]
    else:
        needs = [(d.ref, d.dim, rows) for d, rows in zip(loc.deps, loc.need(t.a, t.b))]
    slots: dict[str, int] = {}
    static: dict[str, torch.Tensor] = {}
    for ref, dim, rows in needs:
        if g.kind(ref) == "param":
            p = g.params[ref]
            static[ref] = p if dim is None or rows is None else p.narrow(dim, rows[0], rows[1] - rows[0])
        else:
            slots[ref] = len(slots)
    if t.kind == "tile":
        assert loc is not None  # compiled as a tile: the node is local
        return loc.make(t.a, t.b, slots, static), reads
    # tiles may leave a value in another memory format than a plain run would
    # (channels_last from oneDNN): view on a whole value must then copy
    op = _RESHAPE if node.target.split(".")[1] in ("view", "_unsafe_view") else None
    fn = bind_call(node, slots, static, op=op)
    # and global kernels (norms, reductions) round differently on other layouts:
    # hand them what a plain run would
    for ref, i in slots.items():
        fmt = _FORMATS.get(g[ref].layout) if ref in g else None
        if fmt is not None:
            reads[i] = _in_format(reads[i], fmt)
    return fn, reads


def _reader(g: Graph, r: Read, device: torch.device) -> Reader:
    if not r.pieces:  # an empty row range
        assert r.dim is not None
        meta = g.meta(r.ref)
        shape = list(meta.shape)
        shape[r.dim] = 0
        empty = torch.empty(shape, dtype=meta.dtype, device=device)
        return lambda store: empty
    if len(r.pieces) == 1:
        tid, start, n = r.pieces[0]
        if n == WHOLE_PIECE:
            return lambda store: store[tid]
        dim = r.dim
        assert dim is not None
        return lambda store: store[tid].narrow(dim, start, n)
    dim = r.dim
    assert dim is not None
    parts = r.pieces

    def join(store: Store) -> Any:
        return torch.cat([store[tid].narrow(dim, s, n) for tid, s, n in parts], dim)

    return join


def _in_format(read: Reader, fmt: torch.memory_format) -> Reader:
    def reader(store: Store) -> Any:
        x = read(store)
        if isinstance(x, torch.Tensor) and not x.is_contiguous(memory_format=fmt):
            return x.contiguous(memory_format=fmt)
        return x

    return reader


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
