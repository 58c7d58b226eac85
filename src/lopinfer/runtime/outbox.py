"""A byte-bounded queue from a compute thread to the event loop (DESIGN.md invariant 3).

A peer's compute thread produces the pieces the other peer needs; the event loop sends
them. When the link is slower than the compute, the queue between them would grow
without bound; :class:`Outbox` bounds it in bytes instead, and a producer on another
thread waits (backpressure: the compute of that inference slows down to the link) until
the sender has taken enough. Nothing is dropped while the outbox is open.

Two cases never wait, so the event loop itself can never block on its own queue: an
item put from the loop's thread (an inference's inputs, put at its start; a run's end
marker), and an item that finds the outbox empty (one piece larger than the bound).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import TransportTimeoutError

__all__ = ["Outbox", "OutboxStatistics", "OUTBOX_BYTES"]

OUTBOX_BYTES = 32 << 20  # per outbox: twice the transports' default send high water


@dataclass(frozen=True)
class OutboxStatistics:
    """What an outbox holds now and has seen (bytes of tensor payload)."""

    items: int
    bytes: int
    max_bytes: int
    high_water: int  # the most bytes it ever held
    waits: int  # times a producer waited for room


class Outbox:
    """Items with a size in bytes, put from any thread, taken on the event loop.

    Args:
        max_bytes: the producers wait while this much is queued.
        timeout: the longest a producer waits for room (the sender is stuck: its own
            sends time out sooner, and closing the outbox wakes the producer at once).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_bytes: int = OUTBOX_BYTES,
                 timeout: float = 60.0) -> None:
        self.loop, self.max_bytes, self.timeout = loop, max_bytes, timeout
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._high = 0
        self._waits = 0
        self._closed = False
        self._room = threading.Condition()
        self._ready = asyncio.Event()
        self._loop_thread = threading.get_ident()  # made on the loop that takes the items

    def put(self, item: Any, nbytes: int = 0) -> None:
        """Queue ``item`` (any thread); waits for room when over the bound, except on
        the loop's thread. Dropped silently once closed (its inference is over).

        Raises:
            TransportTimeoutError: no room for ``timeout`` seconds.
        """
        on_loop = threading.get_ident() == self._loop_thread
        with self._room:
            if not on_loop:
                waited = False
                while self._items and self._bytes + nbytes > self.max_bytes and not self._closed:
                    if not waited:
                        self._waits, waited = self._waits + 1, True
                    if not self._room.wait(self.timeout):
                        raise TransportTimeoutError(
                            f"outbox full ({self._bytes} bytes) for {self.timeout:g} s: the "
                            "sender is not sending")
            if self._closed:
                return
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._high = max(self._high, self._bytes)
        if on_loop:
            self._ready.set()
        elif not self.loop.is_closed():  # else nobody will ever take it
            self.loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> Any:
        """The next item (event loop), waiting for one."""
        while True:
            self._ready.clear()
            with self._room:
                if self._items:
                    item, nbytes = self._items.popleft()
                    self._bytes -= nbytes
                    self._room.notify_all()
                    return item
            await self._ready.wait()

    def close(self) -> None:
        """Drop what is queued and wake every waiting producer; later puts are dropped."""
        with self._room:
            self._closed = True
            self._items.clear()
            self._bytes = 0
            self._room.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> OutboxStatistics:
        with self._room:
            return OutboxStatistics(len(self._items), self._bytes, self.max_bytes, self._high,
                                    self._waits)

    def __repr__(self) -> str:
        s = self.statistics()
        return (f"<Outbox {s.items} items {s.bytes}/{s.max_bytes} bytes high={s.high_water} "
                f"waits={s.waits}{' closed' if self._closed else ''}>")
