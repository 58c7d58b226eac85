"""The steady device: work stretched to a fixed multiple of the CPU time it took.

The edge lab emulates a slow robot on a fast core. Throttling it with a CFS quota makes
its speed vary 2-6x from one inference to the next (caches go cold every period, and
the cost varies), so the lab's default device model instead runs the device process
unthrottled and, after each piece of device work, sleeps until ``k`` times the **CPU
time of the calling thread** that the work used has passed. CPU time is what the work
cost, whatever else this machine runs at the time: another process taking the core
makes the wall time grow, not the CPU time, so the stretched duration holds still (as
long as the contention stays below ``k``x). Lateness (sleep overshoot, a
burst of contention, a preemption between two tasks) is made up by the next stretches,
up to 50 ms, so it does not pile up over thousands of small tiles.

Two kinds of work, each with its own factor, set per process:

- ``compute``: kernels of the device's tiles (the runtime's peer runs, the tiled
  executor and the profiler that measures them);
- ``cpu``: the device's CPU-side work on the wire (frame encode/decode, LZ4), which a
  Jetson-class CPU does more slowly, and which is per-frame cost on both peers.

Factors come from ``LOPINFER_STRETCH_COMPUTE`` / ``LOPINFER_STRETCH_CPU`` (default 1:
off) or :func:`set_stretch`. Measure with one torch thread: other threads' CPU time is
not counted.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from collections.abc import Hashable

__all__ = ["COMPUTE", "CPU", "FREEZE", "stretched", "set_stretch", "factor", "token"]

COMPUTE, CPU = "compute", "cpu"


def _env(name: str) -> float:
    try:
        v = float(os.environ.get(name, "1") or 1)
    except ValueError:
        v = 1.0
    return max(v, 1.0)


_factors = {COMPUTE: _env("LOPINFER_STRETCH_COMPUTE"), CPU: _env("LOPINFER_STRETCH_CPU")}
_local = threading.local()
_MAX_CARRY = 0.05  # seconds of lateness a thread may make up later
_GAP_S = 0.01  # a gap this short between two stretches is the same burst of work
FREEZE = 3  # measurements of a key before its reference CPU time is fixed
_best: dict[Hashable, tuple[float, int]] = {}  # key -> (least CPU seconds, measurements)
_MAX_KEYS = 1 << 18


_tokens: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
_next_token = itertools.count()
_tokens_lock = threading.Lock()


def token(owner: object) -> int:
    """A number naming ``owner`` (a graph) in work keys, never given to another object.

    ``id()`` is not enough: a graph freed in one test and a new one allocated at the same
    address would inherit its frozen reference CPU times, and the new graph's work would
    be stretched from another model's costs."""
    with _tokens_lock:
        t = _tokens.get(owner)
        if t is None:
            t = _tokens[owner] = next(_next_token)
        return t


def set_stretch(compute: float | None = None, cpu: float | None = None) -> None:
    """Set this process's stretch factors (``None``: keep; 1: off).

    Raises:
        ValueError: a factor below 1 (work cannot be made faster than it ran).
    """
    for kind, v in ((COMPUTE, compute), (CPU, cpu)):
        if v is not None:
            if v < 1:
                raise ValueError(f"stretch factor {v} for {kind} is below 1")
            _factors[kind] = float(v)


def factor(kind: str = COMPUTE) -> float:
    """The current stretch factor of ``kind``."""
    return _factors[kind]


class stretched:  # noqa: N801 - used like a function: ``with stretched(COMPUTE):``
    """Context manager: the block takes ``factor(kind)`` times its thread CPU time.

    With a ``key`` (the same work each time: a node's rows of one graph), the CPU time
    used is the least of the first :data:`FREEZE` measurements of that key, then fixed:
    contention for memory bandwidth and caches on a shared host varies the CPU time of
    the same tile by several percent (tens on memory-bound maps), the device being
    emulated does not share them, and a minimum that kept falling would make the device
    drift faster over a run. After its warm-up the device holds still.
    Free when the factor is 1 (two attribute reads)."""

    __slots__ = ("k", "t0", "c0", "key")

    def __init__(self, kind: str = COMPUTE, key: Hashable = None) -> None:
        self.k = _factors[kind]
        self.key = key

    def __enter__(self) -> stretched:
        if self.k > 1.0:
            self.t0, self.c0 = time.perf_counter(), time.thread_time()
            last = getattr(_local, "last", None)
            if last is not None and self.t0 - last[0] < _GAP_S:
                # preempted between two tasks (the loop's own code): made up like lateness
                lost = (self.t0 - last[0]) - (self.c0 - last[1])
                if lost > 0:
                    _local.carry = min(getattr(_local, "carry", 0.0) + lost, _MAX_CARRY)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.k <= 1.0:
            return
        cpu = time.thread_time() - self.c0
        if self.key is not None:
            best, seen = _best.get(self.key, (cpu, 0))
            if seen < FREEZE:
                if len(_best) >= _MAX_KEYS:
                    _best.clear()  # bounded: a long-lived process re-learns its references
                best = min(best, cpu)
                _best[self.key] = (best, seen + 1)
            cpu = best
        carry = getattr(_local, "carry", 0.0)  # overslept before: owed back now
        target = self.t0 + self.k * cpu - carry
        now = time.perf_counter()
        if target > now:
            time.sleep(target - now)
            now = time.perf_counter()
        # late (overslept, or contention above k): the next stretches catch up, bounded
        _local.carry = min(max(0.0, now - target), _MAX_CARRY)
        _local.last = (now, time.thread_time())
