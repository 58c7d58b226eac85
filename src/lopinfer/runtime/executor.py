"""Single-process execution of a plan: the row-streaming executor.

``TiledExecutor(graph, tiles)`` runs every node on this process in tiles of rows (the
local plan); ``TiledExecutor(graph, plan=p)`` runs any plan's tasks of *both* peers
here, transfers becoming plain handovers, which checks a plan end to end without a
network. Everything is compiled once (:func:`~lopinfer.runtime.program.compile_plan`);
a call is one flat loop of kernel calls (:meth:`TiledExecutor.run`), which spans,
profiling and the plain call all go through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from ..errors import InputError
from ..graph import Graph, Kernel
from ..log import logger
from ..scheduler.builders import TileSpec, local_plan, partition
from ..scheduler.plan import Plan
from ..steady import COMPUTE, stretched, token
from .program import Bound, Task, compile_plan

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


# a per-task hook: (task, its output, before its reads, before its kernel, after it)
TaskHook = Callable[[Task, Any, float, float, float], None]


class TiledExecutor:
    """Runs a captured :class:`Graph` with every local node computed in tiles.

    Args:
        graph: a captured graph (``lopinfer.capture``).
        tiles: tile count for every local node (default 4), relative tile sizes, a
            mapping node name -> edges, or a function node -> edges.
        min_rows: with a tile count, the thinnest tile allowed (default 1: exactly
            ``tiles`` tiles wherever a node has that many rows).
        plan: run this plan instead (both peers' tasks, in this process).
        program: ``plan`` already compiled and bound (:func:`~.program.bind`).

    Calling the executor with the inputs returns what the model returns.
    Raises :class:`~lopinfer.errors.PlanError` for an invalid plan.
    """

    def __init__(self, graph: Graph, tiles: TileSpec = 4, *, min_rows: int = 1,
                 plan: Plan | None = None, program: Bound | None = None) -> None:
        self.graph = graph
        self.plan = plan if plan is not None else local_plan(graph, tiles, min_rows)
        self.program: Bound = program if program is not None else compile_plan(graph, self.plan)
        self.tasks = self.program.tasks
        frees = self.program.frees
        skip = set(self.program.inputs)
        # every task but the inputs (skipped) has a kernel
        self.steps = [
            (self.tasks[tid], cast(Kernel, self.program.fns[tid]), self.program.readers[tid],
             tuple(frees.get(tid, ())))
            for tid in self.program.order
            if tid not in skip
        ]

    def run(self, inputs: Sequence[torch.Tensor], on_task: TaskHook | None = None, *,
            sync: Callable[[], None] | None = None) -> list[Any]:
        """The one loop: every task in order, ``on_task`` told of each (spans,
        profiling); ``sync`` waits for the device before a kernel counts as done.
        Returns the outputs, flat."""
        store: list[Any] = [None] * len(self.tasks)
        for tid, x in zip(self.program.inputs, inputs):
            store[tid] = x
        clock = time.perf_counter
        gid = token(self.graph)  # not id(): addresses are reused
        with torch.inference_mode():
            for t, fn, readers, frees in self.steps:
                r0 = clock()
                # the steady device (lopinfer.steady): free when off
                with stretched(COMPUTE, (gid, t.kind, t.value, t.a, t.b)):
                    xs = [r(store) for r in readers]
                    s = clock()
                    out = fn(*xs)
                    if sync is not None:
                        sync()
                store[t.id] = out
                if on_task is not None:
                    on_task(t, out, r0, s, clock())
                for f in frees:
                    store[f] = None
        return [store[tid] for tid in self.program.outputs]

    def __call__(self, *inputs: torch.Tensor, spans: list | None = None) -> Any:
        """Run once; with ``spans``, append ``(kind, task id, start, end)`` per task
        (``time.perf_counter`` seconds), the shape of a peer run's compute spans."""
        check_inputs(self.graph, inputs)
        hook: TaskHook | None = None
        if spans is not None:
            def hook(t: Task, out: Any, r0: float, s: float, e: float) -> None:
                spans.append((t.kind, t.id, r0, e))
        return pack_outputs(self.graph, self.run(inputs, hook))

    def profile(self, *inputs: torch.Tensor, repeats: int = 1) -> dict[str, float]:
        """Seconds per run in total and inside kernels, and the task count (benchmarks)."""
        check_inputs(self.graph, inputs)
        op_time = [0.0]

        def hook(t: Task, out: Any, r0: float, s: float, e: float) -> None:
            op_time[0] += e - s

        t0 = time.perf_counter()
        for _ in range(repeats):
            self.run(inputs, hook)
        total = time.perf_counter() - t0
        return {"total_s": total / repeats, "kernels_s": op_time[0] / repeats,
                "tasks": len(self.steps)}

    def __repr__(self) -> str:
        n_tiles = sum(1 for t in self.tasks if t.kind == "tile")
        return (f"<TiledExecutor {self.graph.name!r} plan={self.plan.name!r} "
                f"tasks={len(self.steps)} tiles={n_tiles}>")


def run_tiled(model: Any, inputs: Any, tiles: TileSpec = 4) -> Any:
    """Capture ``model`` (or take a Graph) and run it tiled on ``inputs`` once."""
    from ..graph import capture

    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    graph = model if isinstance(model, Graph) else capture(model, args)
    return TiledExecutor(graph, tiles)(*args)
