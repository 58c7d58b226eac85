"""The interpreter's thread switch interval, shortened while bulk I/O runs beside
Python work on other threads.

CPython lets a thread that waits for the GIL take it only after the switch interval
(5 ms by default) when another thread computes. A deploy's planner computes on a
worker thread while the event loop feeds the model's weights to the socket; the loop
needs the GIL once per socket step (a few MB), so it waited that long each time: on
vgg19_bn's 575 MB over loopback, 1-3 s more than the wire took. While
:func:`responsive_io` is held the interval is 0.5 ms (never raised; nested and
concurrent holders share it, the last one out restores it).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["responsive_io", "IO_SWITCH_INTERVAL_S"]

IO_SWITCH_INTERVAL_S = 0.0005

_lock = threading.Lock()
_holders = 0
_saved = 0.0


@contextmanager
def responsive_io() -> Iterator[None]:
    """Hold a short switch interval for the duration of the block."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved, IO_SWITCH_INTERVAL_S))
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                sys.setswitchinterval(_saved)
