"""The scheduling rules, once: who waits on whom, and which ready task runs next.

Both the runtime (:class:`lopinfer.runtime.peer.PeerRun`, one per peer and inference)
and the simulator (:func:`lopinfer.scheduler.simulator.simulate`) take their order from
here, so a prediction follows the rules a run follows by construction, not by copy:

- :class:`DependencyIndex`: for one peer's tasks, how many inputs each still waits for,
  who reads each task's output, and which of the other peer's ``recv`` tasks each task
  feeds. A ``recv`` task waits for its delivery (one event), not for the sender's task.
  With ``peer=None`` both peers' tasks run in one process and a ``recv`` is a plain
  handover that waits for its source task.
- :func:`ready_key`: among ready tasks, those whose rows the other peer waits for go
  first (the link starts early), then the highest rank: by default the deepest value
  (tiles stream through layers and chunks are freed early), or the tile's critical
  path where the plan carries ranks (:attr:`~lopinfer.scheduler.plan.Plan.ranks`);
  then the first rows, then the task id.
- :class:`ReadyQueue`: the index and a heap by that key.
"""

from __future__ import annotations

import heapq

from ..errors import PlanError
from .program import Program, Task

__all__ = ["DependencyIndex", "ReadyQueue", "ready_key", "single_process_order", "lifetimes"]

Key = tuple[int, float, int, int]


class DependencyIndex:
    """Waiting counts, readers and sends of ``peer``'s tasks (``None``: all tasks)."""

    __slots__ = ("missing", "users", "sends")

    def __init__(self, program: Program, peer: str | None = None) -> None:
        tasks = program.tasks
        mine = tasks if peer is None else [t for t in tasks if t.peer == peer]
        self.missing: dict[int, int] = {}
        self.users: dict[int, list[int]] = {t.id: [] for t in mine}
        self.sends: dict[int, list[Task]] = {}  # my task -> the other peer's recv tasks
        for t in mine:
            across = peer is not None and t.kind == "recv"
            self.missing[t.id] = 1 if across else len(t.deps)
            if not across:
                for d in t.deps:
                    self.users[d].append(t.id)
        if peer is not None:
            for t in tasks:
                if t.kind == "recv" and t.peer != peer:
                    self.sends.setdefault(t.deps[0], []).append(t)


def ready_key(task: Task, sends: dict[int, list[Task]]) -> Key:
    """The order of ready tasks on one worker: smallest first (see the module docstring)."""
    return (0 if task.id in sends else 1, -task.rank, task.a, task.id)


class ReadyQueue:
    """One worker's ready tasks of one program, by :func:`ready_key`.

    Not thread-safe: the runtime holds its run's lock around it."""

    __slots__ = ("tasks", "index", "heap")

    def __init__(self, program: Program, peer: str | None = None) -> None:
        self.tasks = program.tasks
        self.index = DependencyIndex(program, peer)
        self.heap: list[Key] = []
        for tid, n in self.index.missing.items():
            if n == 0 and self.tasks[tid].kind not in ("input", "recv"):
                self.push(tid)

    def push(self, tid: int) -> None:
        heapq.heappush(self.heap, ready_key(self.tasks[tid], self.index.sends))

    def pop(self) -> int:
        return heapq.heappop(self.heap)[3]

    def __len__(self) -> int:
        return len(self.heap)

    def complete(self, tid: int) -> None:
        """``tid``'s output exists (computed, or delivered): queue whoever it freed."""
        missing = self.index.missing
        for u in self.index.users.get(tid, ()):
            missing[u] -= 1
            if missing[u] == 0:
                self.push(u)


def single_process_order(prog: Program) -> list[int]:
    """A valid order of all tasks on one process (the tiled executor's), by the same key:
    inputs first, then whichever ready task the rule picks."""
    queue = ReadyQueue(prog, None)
    order = list(prog.inputs)
    for tid in prog.inputs:
        queue.complete(tid)
    while queue:
        tid = queue.pop()
        order.append(tid)
        queue.complete(tid)
    if len(order) != len(prog.tasks):
        raise PlanError("the plan's tasks wait on each other in a cycle")
    return order


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
