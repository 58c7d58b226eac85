"""Row-streaming executor: every local node computed in tiles of rows.

Each node's output lives in a row buffer made of chunks: one tensor per tile, in the
order tiles complete. A tile task "rows [a, b) of node n" reads exactly the rows its
locality rule needs from the chunks of its inputs (a view when they lie in one chunk, a
concatenation of the pieces when they span several), computes its rows once and adds
its chunk. Global nodes are one task over whole inputs.

Everything that does not depend on the input values is done once, when the executor is
built (``compile``): partitions, which chunks each task reads, kernels with their tile
arguments bound, a valid task order and when each chunk can be freed. A run is then a
flat loop of kernel calls.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from ..errors import InputError
from ..graph import Graph, Node
from ..graph._kernel import bind_call

__all__ = ["TiledExecutor", "Task", "partition", "run_tiled", "TileSpec"]

log = logging.getLogger("lopinfer.runtime")

# how to split each local node's tiled dim: a tile count, relative tile sizes,
# explicit edges per node name, or a function of the node returning edges
TileSpec = Union[int, Sequence[float], Mapping[str, Sequence[int]], Callable[[Node], Sequence[int]]]

Reader = Callable[[list], torch.Tensor]


def partition(size: int, tiles: int | Sequence[float], min_rows: int = 1) -> list[int]:
    """Tile edges [0, e1, ..., size] for ``tiles`` equal tiles or relative sizes.

    ``min_rows`` caps an equal split so no tile is thinner than that (tiny tiles of
    small late feature maps cost more per row than they pipeline)."""
    if isinstance(tiles, int):
        if tiles < 1:
            raise ValueError(f"tile count must be >= 1, got {tiles}")
        tiles = max(1, min(tiles, size // max(1, min_rows)))
        weights: Sequence[float] = [1.0] * tiles
    else:
        weights = list(tiles)
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"tile sizes must be non-negative with a positive sum: {tiles}")
    total = float(sum(weights))
    edges, acc = [0], 0.0
    for w in weights:
        acc += w
        edges.append(round(acc / total * size))
    edges[-1] = size
    return sorted(set(edges))


@dataclass(slots=True)
class Task:
    """One kernel call: rows [a, b) of ``value`` (whole value when ``dim`` is None)."""

    id: int
    value: str
    a: int
    b: int
    dim: int | None
    kind: str  # "input" | "tile" | "whole" | "gather"
    deps: list[int] = field(default_factory=list)
    readers: list[Reader] = field(default_factory=list)
    fn: Callable[..., torch.Tensor] | None = None
    rank: float = 0.0  # position of its value in the graph (for the order)

    def __repr__(self) -> str:
        rows = f"[{self.a}:{self.b})@{self.dim}" if self.dim is not None else "whole"
        return f"<Task {self.id} {self.kind} {self.value} {rows}>"


@dataclass(slots=True)
class _Chunks:
    """Where a value's rows will be: tasks and their row ranges along ``dim``."""

    dim: int | None  # None: one task holds the whole value
    tasks: list[tuple[int, int, int]]  # (task id, a, b), sorted by a
    gather: int | None = None  # task assembling the whole value, made on demand


class TiledExecutor:
    """Runs a captured :class:`Graph` with every local node computed in tiles.

    Args:
        graph: a captured graph (``lopinfer.capture``).
        tiles: tile count for every local node (default 4), relative tile sizes, a
            mapping node name -> edges, or a function node -> edges.
        min_rows: with a tile count, the thinnest tile allowed (default 1: exactly
            ``tiles`` tiles wherever a node has that many rows).

    Calling the executor with the inputs returns what the model returns.
    """

    def __init__(self, graph: Graph, tiles: TileSpec = 4, *, min_rows: int = 1) -> None:
        self.graph = graph
        self.tiles = tiles
        self.min_rows = min_rows
        self.tasks: list[Task] = []
        self._chunks: dict[str, _Chunks] = {}
        self._compile()

    # -- compile -------------------------------------------------------------------------
    def edges(self, node: Node) -> list[int]:
        loc = node.locality
        assert loc is not None
        size = loc.size
        spec = self.tiles
        if callable(spec):
            edges = list(spec(node))
        elif isinstance(spec, Mapping):
            edges = list(spec[node.name]) if node.name in spec else [0, size]
        else:
            edges = partition(size, spec, self.min_rows)  # type: ignore[arg-type]
        if edges[0] != 0 or edges[-1] != size or any(x >= y for x, y in zip(edges, edges[1:])):
            raise ValueError(f"bad tile edges for {node.name} (size {size}): {edges}")
        return edges

    def _new(self, value: str, a: int, b: int, dim: int | None, kind: str, rank: float) -> Task:
        task = Task(len(self.tasks), value, a, b, dim, kind, rank=rank)
        self.tasks.append(task)
        return task

    def _compile(self) -> None:
        g = self.graph
        self._inputs = []
        for name, meta in g.inputs.items():
            t = self._new(name, 0, 0, None, "input", -1)
            self._inputs.append(t.id)
            self._chunks[name] = _Chunks(None, [(t.id, 0, 0)])
        for pos, node in enumerate(g.nodes):
            loc = node.locality
            if loc is None:
                self._compile_whole(node, pos)
            else:
                self._compile_tiles(node, pos)
        self._outputs = [self._whole_of(name) for name in g.outputs]
        self._order()

    def _static(self, ref: str, dim: int | None, rows: tuple[int, int] | None) -> torch.Tensor:
        p = self.graph.params[ref]
        if dim is None or rows is None:
            return p
        return p.narrow(dim, rows[0], rows[1] - rows[0])

    def _compile_whole(self, node: Node, pos: int) -> None:
        task = self._new(node.name, 0, 0, None, "whole", pos)
        slots: dict[str, int] = {}
        static: dict[str, torch.Tensor] = {}
        for ref in dict.fromkeys(node.refs()):
            if self.graph.kind(ref) == "param":
                static[ref] = self.graph.params[ref]
            else:
                slots[ref] = len(task.readers)
                task.readers.append(self._reader(task, ref, None, None))
        # tiles may leave a value in another memory format than the plain run would
        # (channels_last from oneDNN): view on a whole value must then copy
        op = _RESHAPE if node.target.split(".")[1] in ("view", "_unsafe_view") else None
        task.fn = bind_call(node, slots, static, op=op)
        self._chunks[node.name] = _Chunks(None, [(task.id, 0, 0)])

    def _compile_tiles(self, node: Node, pos: int) -> None:
        loc = node.locality
        assert loc is not None
        edges = self.edges(node)
        chunks = _Chunks(loc.dim, [])
        for a, b in zip(edges, edges[1:]):
            task = self._new(node.name, a, b, loc.dim, "tile", pos)
            slots: dict[str, int] = {}
            static: dict[str, torch.Tensor] = {}
            for dep, rows in zip(loc.deps, loc.need(a, b)):
                if self.graph.kind(dep.ref) == "param":
                    static[dep.ref] = self._static(dep.ref, dep.dim, rows)
                else:
                    slots[dep.ref] = len(task.readers)
                    task.readers.append(self._reader(task, dep.ref, dep.dim, rows))
            task.fn = loc.make(a, b, slots, static)
            chunks.tasks.append((task.id, a, b))
        self._chunks[node.name] = chunks

    def _whole_of(self, ref: str) -> int:
        """Task id holding all of ``ref`` (a gather task when it is in several chunks)."""
        ch = self._chunks[ref]
        if ch.dim is None or len(ch.tasks) == 1:
            return ch.tasks[0][0]
        if ch.gather is None:
            parts = [tid for tid, _, _ in ch.tasks]
            t = self._new(ref, 0, 0, None, "gather", self.tasks[parts[-1]].rank + 0.5)
            t.deps = parts
            dim = ch.dim
            t.readers = [_take(tid) for tid in parts]
            t.fn = lambda *xs: torch.cat(xs, dim)
            ch.gather = t.id
        return ch.gather

    def _reader(self, task: Task, ref: str, dim: int | None, rows: tuple[int, int] | None) -> Reader:
        ch = self._chunks[ref]
        if ch.dim is not None and dim == ch.dim and rows is not None:
            c, e = rows
            parts = [(tid, a, b) for tid, a, b in ch.tasks if a < e and b > c]
            if not parts:  # an empty read: zero rows, shaped like the first chunk
                tid, a, _ = ch.tasks[0]
                task.deps.append(tid)
                return _narrow(tid, dim, 0, 0)
            task.deps.extend(tid for tid, _, _ in parts)
            if len(parts) == 1:
                tid, a, b = parts[0]
                if (a, b) == (c, e):
                    return _take(tid)
                return _narrow(tid, dim, c - a, e - c)
            pieces = [(tid, max(c, a) - a, min(e, b) - max(c, a)) for tid, a, b in parts]
            return _cat(pieces, dim)
        tid = self._whole_of(ref)
        task.deps.append(tid)
        if rows is None or dim is None:
            return _take(tid)
        return _narrow(tid, dim, rows[0], rows[1] - rows[0])

    def _order(self) -> None:
        """A valid order, depth first (deepest ready task next): tiles stream through
        layers and chunks are freed early. Also when each chunk can be freed."""
        n = len(self.tasks)
        users: list[list[int]] = [[] for _ in range(n)]
        missing = [0] * n
        for t in self.tasks:
            t.deps = sorted(set(t.deps))
            missing[t.id] = len(t.deps)
            for d in t.deps:
                users[d].append(t.id)
        heap = [(-t.rank, t.a, t.id) for t in self.tasks if missing[t.id] == 0]
        heapq.heapify(heap)
        order: list[int] = []
        while heap:
            _, _, tid = heapq.heappop(heap)
            order.append(tid)
            for u in users[tid]:
                missing[u] -= 1
                if missing[u] == 0:
                    heapq.heappush(heap, (-self.tasks[u].rank, self.tasks[u].a, u))
        if len(order) != n:
            raise RuntimeError("task graph has a cycle (a locality rule reads rows it makes)")
        keep = set(self._outputs) | set(self._inputs)
        last = {tid: i for i, tid in enumerate(order)}
        for t in self.tasks:
            for d in t.deps:
                last[d] = max(last[d], last[t.id])
        frees: list[list[int]] = [[] for _ in range(n)]
        for tid, i in last.items():
            if tid not in keep:
                frees[i].append(tid)
        self.order = order
        self._program = [
            (tid, self.tasks[tid].fn, tuple(self.tasks[tid].readers), tuple(frees[i]))
            for i, tid in enumerate(order)
            if self.tasks[tid].kind != "input"
        ]

    # -- run -----------------------------------------------------------------------------
    def check_inputs(self, inputs: Sequence[Any]) -> None:
        """Raise :class:`InputError` unless ``inputs`` match the captured ones."""
        metas = list(self.graph.inputs.values())
        if len(inputs) != len(metas):
            raise InputError(f"expected {len(metas)} input(s), got {len(inputs)}")
        for i, (x, m) in enumerate(zip(inputs, metas)):
            if not isinstance(x, torch.Tensor):
                raise InputError(f"input {i} is a {type(x).__name__}, not a torch.Tensor")
            if tuple(x.shape) != m.shape or x.dtype != m.dtype:
                raise InputError(
                    f"input {i} is {str(x.dtype).removeprefix('torch.')}{list(x.shape)}, "
                    f"captured as {m!r}"
                )

    def __call__(self, *inputs: torch.Tensor) -> Any:
        self.check_inputs(inputs)
        store: list[Any] = [None] * len(self.tasks)
        for tid, x in zip(self._inputs, inputs):
            store[tid] = x
        with torch.inference_mode():
            for tid, fn, readers, frees in self._program:
                store[tid] = fn(*[r(store) for r in readers])
                for f in frees:
                    store[f] = None
        return self._pack([store[tid] for tid in self._outputs])

    def _pack(self, outs: list[torch.Tensor]) -> Any:
        spec = self.graph.out_spec
        if spec is not None:
            from torch.utils._pytree import tree_unflatten, treespec_loads

            return tree_unflatten(outs, treespec_loads(spec))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def profile(self, *inputs: torch.Tensor, repeats: int = 1) -> dict[str, float]:
        """Seconds spent per task kind and in the loop itself (for benchmarks)."""
        self.check_inputs(inputs)
        op_time = 0.0
        t0 = time.perf_counter()
        for _ in range(repeats):
            store: list[Any] = [None] * len(self.tasks)
            for tid, x in zip(self._inputs, inputs):
                store[tid] = x
            with torch.inference_mode():
                for tid, fn, readers, frees in self._program:
                    xs = [r(store) for r in readers]
                    s = time.perf_counter()
                    store[tid] = fn(*xs)
                    op_time += time.perf_counter() - s
                    for f in frees:
                        store[f] = None
        total = time.perf_counter() - t0
        return {"total_s": total / repeats, "kernels_s": op_time / repeats,
                "tasks": len(self._program)}

    def __repr__(self) -> str:
        n_tiles = sum(1 for t in self.tasks if t.kind == "tile")
        return f"<TiledExecutor {self.graph.name!r} tasks={len(self._program)} tiles={n_tiles}>"


_RESHAPE = torch.ops.aten.reshape.default


def _take(tid: int) -> Reader:
    return lambda store: store[tid]


def _narrow(tid: int, dim: int, start: int, length: int) -> Reader:
    return lambda store: store[tid].narrow(dim, start, length)


def _cat(pieces: list[tuple[int, int, int]], dim: int) -> Reader:
    def read(store: list) -> torch.Tensor:
        return torch.cat([store[tid].narrow(dim, s, n) for tid, s, n in pieces], dim)

    return read


def run_tiled(model: Any, inputs: Any, tiles: TileSpec = 4) -> Any:
    """Capture ``model`` (or take a Graph) and run it tiled on ``inputs`` once."""
    from ..graph import capture

    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    graph = model if isinstance(model, Graph) else capture(model, args)
    return TiledExecutor(graph, tiles)(*args)
