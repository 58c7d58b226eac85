"""One peer's share of an inference, run by one compute thread per device.

:class:`PeerRun` holds the tasks a compiled :class:`Program` gives one peer for one
inference: which are ready, their outputs, and which pieces go to the other peer after
each task. :class:`DeviceWorker` is the one thread that computes on a device; it takes
ready tasks from the runs it serves by a fair queue over their owners (sessions): the
owner that has used the least compute time goes next, so a session running a heavy
graph waits behind the others instead of starving them. Within a run it prefers tasks
whose rows must be sent, so the link starts early.

Thread contract: the worker thread executes kernels; the event loop delivers received
pieces (:meth:`PeerRun.deliver`) and is told about pieces to send and the end of the
run through callbacks it provides (which must be thread-safe, e.g. via
``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from ..errors import ProtocolError
from ..log import logger
from ..scheduler.order import ReadyQueue
from ..steady import COMPUTE, stretched, token
from .accounting import WAIT_BUCKETS, Histogram
from .program import Bound, Task

__all__ = ["PeerRun", "DeviceWorker", "Span"]

log = logger("runtime")

Span = tuple[str, int, float, float]  # (kind, task id, start, end) in time.perf_counter()
SendFn = Callable[[Task, torch.Tensor], None]


class PeerRun:
    """The tasks of ``peer`` for one inference and their state."""

    def __init__(self, program: Bound, peer: str, *, on_send: SendFn,
                 on_done: Callable[[PeerRun], object], inputs: tuple[torch.Tensor, ...] = (),
                 copier: Any = None, owner: Any = None, trace: bool = False) -> None:
        self.program, self.peer = program, peer
        self.owner = owner  # whose compute time this run is (the worker's fair queue)
        self.on_send, self.on_done = on_send, on_done
        self.copier = copier  # a cuda.DeviceCopier on a GPU server, else None
        self.events: dict[int, Any] = {}  # received tiles still being copied to the GPU
        mine = program.peer_tasks(peer)
        self.todo = {t.id for t in mine}
        self.store: dict[int, Any] = {}
        # who waits on whom and which task runs next: the rules the simulator follows
        self.queue = ReadyQueue(program.program, peer)
        self.users = self.queue.index.users
        self.sends = self.queue.index.sends  # pieces the other peer receives from my tasks
        self.refs = {tid: len(u) for tid, u in self.users.items()}
        self.keep = set(program.outputs) | set(program.inputs) if peer == "client" else set()
        self.expect = {t.id: t for t in mine if t.kind == "recv"}
        self.lock = threading.Lock()
        self.spans: list[Span] = []
        self.error: BaseException | None = None
        self.cancelled = False
        self.finished = False
        self.started = time.perf_counter()
        # with trace=True, ("done", task) and ("run", task) in the order they happened
        # under the lock: enough to replay this peer's choices (tests/runtime/test_order.py)
        self.trace: list[tuple[str, int]] | None = [] if trace else None
        self.worker: DeviceWorker | None = None
        for tid, x in zip(program.inputs, inputs):
            if tid in self.todo:
                self._complete(tid, x)
        if not self.todo and not self.finished:  # nothing to do on this peer
            self.finished = True
            on_done(self)

    # -- readiness --------------------------------------------------------------------
    def pop_ready(self) -> Task | None:
        with self.lock:
            if self.cancelled or not self.queue:
                return None
            tid = self.queue.pop()
            if self.trace is not None:
                self.trace.append(("run", tid))
            return self.program.tasks[tid]

    @property
    def has_ready(self) -> bool:
        return bool(self.queue) and not self.cancelled

    def run_task(self, t: Task) -> None:
        """Execute ``t`` (worker thread) and complete it."""
        start = time.perf_counter()
        if self.events:
            for d in t.deps:
                ev = self.events.pop(d, None)
                if ev is not None:
                    self.copier.wait(ev, self.store[d])
        # the steady device (lopinfer.steady): free unless this process is one
        with torch.inference_mode(), stretched(COMPUTE, (token(self.program.graph), t.kind, t.value, t.a, t.b)):
            xs = [r(self.store) for r in self.program.readers[t.id]]
            fn = self.program.fns[t.id]
            assert fn is not None  # only input tasks have none, and they are never run
            out = fn(*xs)
        self.spans.append((t.kind, t.id, start, time.perf_counter()))
        self._complete(t.id, out)

    def deliver(self, tid: int, a: int, b: int, tensor: torch.Tensor) -> None:
        """A piece from the other peer arrived (event loop thread).

        Raises:
            ProtocolError: the piece is not one this run expects, or has the wrong shape.
        """
        t = self.expect.get(tid)
        if t is None or tid in self.store:
            raise ProtocolError(f"unexpected tensor {tid} for this inference")
        want = list(self.program.graph.meta(t.value).shape)
        if t.dim is not None:
            want[t.dim] = t.b - t.a
            if (a, b) != (t.a, t.b):
                raise ProtocolError(f"tensor {tid}: rows [{a}, {b}) where [{t.a}, {t.b}) was expected")
        if list(tensor.shape) != want or tensor.dtype != self.program.graph.meta(t.value).dtype:
            raise ProtocolError(f"tensor {tid}: {tensor.dtype}{list(tensor.shape)} where "
                                f"{want} was expected")
        if self.copier is not None:
            tensor, event = self.copier.to_device(tensor)
            self.events[tid] = event
        self._complete(tid, tensor)
        if self.worker is not None:
            self.worker.wake(self)

    def _complete(self, tid: int, out: Any) -> None:
        tasks = self.program.tasks
        with self.lock:
            self.store[tid] = out
            self.todo.discard(tid)
            if self.trace is not None:
                self.trace.append(("done", tid))
            readers = self.program.readers
            pieces = [(r, readers[r.id][0](self.store)) for r in self.sends.get(tid, ())]
            self.queue.complete(tid)
            for d in (tasks[tid].deps if tasks[tid].kind != "recv" else ()):
                if d in self.refs:  # free chunks no task here reads any more
                    self.refs[d] -= 1
                    if self.refs[d] == 0 and d not in self.keep and d in self.store:
                        del self.store[d]
            if self.refs.get(tid, 1) == 0 and tid not in self.keep:
                del self.store[tid]  # only sent, never read here
            done = not self.todo and not self.finished
            if done:
                self.finished = True
        for r, piece in pieces:
            if self.copier is not None and piece.is_cuda:
                piece = self.copier.to_host(piece)
            self.on_send(r, piece)
        if done:
            self.on_done(self)

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.finished:
                return
            self.error, self.finished = exc, True
        self.on_done(self)

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True

    def outputs(self) -> list[torch.Tensor]:
        return [self.store[tid] for tid in self.program.outputs]

    def __repr__(self) -> str:
        return (f"<PeerRun {self.peer} todo={len(self.todo)} ready={len(self.queue)} "
                f"finished={self.finished}>")


class _Job:
    """A function queued on the worker (profiling, warm-up), charged to ``owner``."""

    __slots__ = ("fn", "owner")

    def __init__(self, fn: Callable[[], None], owner: Any) -> None:
        self.fn, self.owner = fn, owner


class DeviceWorker:
    """The one compute thread of a device, fair across the owners of the runs it serves.

    Start-time fair queuing by compute seconds: each owner has a virtual time, the
    seconds of compute it was given; the queued item whose owner's virtual time is
    least runs next, and an owner that comes back after being idle starts at the
    virtual time of the one served last (idle time is not saved up as credit).
    """

    def __init__(self, name: str = "lopinfer-worker") -> None:
        self._queue: deque[PeerRun | _Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.busy_s = 0.0
        self.used: dict[Any, float] = {}  # owner -> compute seconds given (virtual time)
        self._now = 0.0  # virtual time of the owner served last
        # seconds between an item being queued (ready) and being taken: contention
        self.queue_wait = Histogram(WAIT_BUCKETS)
        self._since: dict[int, float] = {}
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _enqueue(self, item: PeerRun | _Job) -> None:  # holding the lock
        if item.owner not in self.used or not any(q.owner == item.owner for q in self._queue):
            self.used[item.owner] = max(self.used.get(item.owner, 0.0), self._now)
        self._since.setdefault(id(item), time.perf_counter())
        self._queue.append(item)

    def _next(self) -> PeerRun | _Job:  # holding the lock, queue not empty
        used = self.used
        best = min(range(len(self._queue)), key=lambda i: used.get(self._queue[i].owner, 0.0))
        item = self._queue[best]
        del self._queue[best]
        since = self._since.pop(id(item), None)
        if since is not None:
            self.queue_wait.observe(time.perf_counter() - since)
        self._now = used.get(item.owner, 0.0)
        return item

    def _charge(self, owner: Any, seconds: float) -> None:
        with self._cv:
            self.used[owner] = self.used.get(owner, 0.0) + seconds
            if len(self.used) > 4096:  # forget owners long gone (keep the busiest)
                keep = sorted(self.used.items(), key=lambda kv: -kv[1])[:1024]
                self.used = dict(keep)

    def add(self, run: PeerRun) -> None:
        run.worker = self
        self.wake(run)

    def wake(self, run: PeerRun) -> None:
        with self._cv:
            if run not in self._queue:
                self._enqueue(run)
            self._cv.notify()

    def submit(self, fn: Callable[[], Any], *, owner: Any = None) -> Future:
        """Run ``fn`` on this thread, its time charged to ``owner`` (fair queue)."""
        fut: Future = Future()

        def job() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # handed to the waiter
                    fut.set_exception(exc)

        with self._cv:
            self._enqueue(_Job(job, owner))
            self._cv.notify()
        return fut

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed and not self._queue:
                    return
                item = self._next()
            start = time.perf_counter()
            if isinstance(item, _Job):
                item.fn()
                self._charge(item.owner, time.perf_counter() - start)
                continue
            task = item.pop_ready()
            if task is None:
                continue
            try:
                item.run_task(task)
            except BaseException as exc:  # a kernel failed: the run fails, not the worker
                log.warning("task %r failed: %s", task, exc)
                item.fail(exc)
            took = time.perf_counter() - start
            self.busy_s += took
            self._charge(item.owner, took)
            if item.has_ready:
                with self._cv:
                    if item not in self._queue:
                        self._enqueue(item)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=5)

    def __repr__(self) -> str:
        return f"<DeviceWorker queued={len(self._queue)} busy={self.busy_s:.3f}s>"
