"""Single-process execution of a plan: the row-streaming executor.

``TiledExecutor(graph, tiles)`` runs every node on this process in tiles of rows (the
local plan); ``TiledExecutor(graph, plan=p)`` runs any plan's tasks of *both* peers
here, transfers becoming plain handovers, which checks a plan end to end without a
network. Everything is compiled once (:func:`~lopinfer.runtime.program.compile_plan`);
a call is a flat loop of kernel calls.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import torch

from ..errors import InputError
from ..graph import Graph
from ..graph._kernel import Kernel
from ..log import logger
from ..scheduler.builders import TileSpec, local_plan, partition
from ..scheduler.plan import Plan
from ..steady import COMPUTE, stretched
from .program import Program, Task, compile_plan

__all__ = ["TiledExecutor", "Task", "partition", "run_tiled", "TileSpec", "check_inputs",
           "pack_outputs"]

log = logger("runtime")


def check_inputs(graph: Graph, inputs: Sequence[Any]) -> None:
    """Raise :class:`InputError` unless ``inputs`` match the captured ones."""
    metas = list(graph.inputs.values())
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


def pack_outputs(graph: Graph, outs: list[torch.Tensor]) -> Any:
    """The flat outputs in the model's own output structure."""
    if graph.out_spec is not None:
        from torch.utils._pytree import tree_unflatten, treespec_loads

        return tree_unflatten(outs, treespec_loads(graph.out_spec))
    return outs[0] if len(outs) == 1 else tuple(outs)


class TiledExecutor:
    """Runs a captured :class:`Graph` with every local node computed in tiles.

    Args:
        graph: a captured graph (``lopinfer.capture``).
        tiles: tile count for every local node (default 4), relative tile sizes, a
            mapping node name -> edges, or a function node -> edges.
        min_rows: with a tile count, the thinnest tile allowed (default 1: exactly
            ``tiles`` tiles wherever a node has that many rows).
        plan: run this plan instead (both peers' tasks, in this process).

    Calling the executor with the inputs returns what the model returns.
    Raises :class:`~lopinfer.errors.PlanError` for an invalid plan.
    """

    def __init__(self, graph: Graph, tiles: TileSpec = 4, *, min_rows: int = 1,
                 plan: Plan | None = None) -> None:
        self.graph = graph
        self.plan = plan if plan is not None else local_plan(graph, tiles, min_rows)
        self.program: Program = compile_plan(graph, self.plan)
        self.tasks = self.program.tasks
        frees = self.program.frees
        skip = set(self.program.inputs)
        # compile_plan (bind=True) gives every task but the inputs (skipped) a kernel
        self._steps = [
            (tid, cast(Kernel, self.tasks[tid].fn), tuple(self.tasks[tid].readers), tuple(frees.get(tid, ())))
            for tid in self.program.order
            if tid not in skip
        ]

    def __call__(self, *inputs: torch.Tensor, spans: list | None = None) -> Any:
        """Run once; with ``spans``, append ``(kind, task id, start, end)`` per task
        (``time.perf_counter`` seconds), the shape of a peer run's compute spans."""
        check_inputs(self.graph, inputs)
        store: list[Any] = [None] * len(self.tasks)
        for tid, x in zip(self.program.inputs, inputs):
            store[tid] = x
        clock = time.perf_counter
        with torch.inference_mode():
            for tid, fn, readers, frees in self._steps:
                s = clock()
                t = self.tasks[tid]  # the steady device (lopinfer.steady); free when off
                with stretched(COMPUTE, (id(self.graph), t.kind, t.value, t.a, t.b)):
                    store[tid] = fn(*[r(store) for r in readers])
                if spans is not None:
                    spans.append((self.tasks[tid].kind, tid, s, clock()))
                for f in frees:
                    store[f] = None
        return pack_outputs(self.graph, [store[tid] for tid in self.program.outputs])

    def profile(self, *inputs: torch.Tensor, repeats: int = 1) -> dict[str, float]:
        """Seconds per run in total and inside kernels, and the task count (benchmarks)."""
        check_inputs(self.graph, inputs)
        op_time = 0.0
        t0 = time.perf_counter()
        for _ in range(repeats):
            store: list[Any] = [None] * len(self.tasks)
            for tid, x in zip(self.program.inputs, inputs):
                store[tid] = x
            with torch.inference_mode():
                for tid, fn, readers, frees in self._steps:
                    xs = [r(store) for r in readers]
                    s = time.perf_counter()
                    store[tid] = fn(*xs)
                    op_time += time.perf_counter() - s
                    for f in frees:
                        store[f] = None
        total = time.perf_counter() - t0
        return {"total_s": total / repeats, "kernels_s": op_time / repeats,
                "tasks": len(self._steps)}

    def __repr__(self) -> str:
        n_tiles = sum(1 for t in self.tasks if t.kind == "tile")
        return (f"<TiledExecutor {self.graph.name!r} plan={self.plan.name!r} "
                f"tasks={len(self._steps)} tiles={n_tiles}>")


def run_tiled(model: Any, inputs: Any, tiles: TileSpec = 4) -> Any:
    """Capture ``model`` (or take a Graph) and run it tiled on ``inputs`` once."""
    from ..graph import capture

    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    graph = model if isinstance(model, Graph) else capture(model, args)
    return TiledExecutor(graph, tiles)(*args)
