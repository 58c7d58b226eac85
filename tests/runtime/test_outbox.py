"""The outbox between a compute thread and the event loop: bounded in bytes, a
producer waits for room (never dropped while open), the loop's own puts never wait."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lopinfer.errors import TransportTimeoutError
from lopinfer.runtime.outbox import Outbox


def test_a_producer_waits_for_room_and_nothing_is_lost():
    async def main():
        box = Outbox(asyncio.get_running_loop(), max_bytes=100)
        done = threading.Event()

        def produce():
            for i in range(10):
                box.put(i, 60)  # two never fit: each waits for the one before
            done.set()

        threading.Thread(target=produce, daemon=True).start()
        await asyncio.sleep(0.2)
        stats = box.statistics()
        assert stats.items == 1 and stats.bytes == 60 and stats.waits == 1 and not done.is_set()
        got = [await box.get() for _ in range(10)]
        assert got == list(range(10))
        assert box.statistics().high_water <= 100
        await asyncio.sleep(0.05)
        assert done.is_set() and "waits=" in repr(box)

    asyncio.run(asyncio.wait_for(main(), 10))


def test_the_loop_never_waits_and_close_wakes_producers():
    async def main():
        box = Outbox(asyncio.get_running_loop(), max_bytes=10)
        box.put("big", 1000)  # on the loop, over the bound: queued, no wait
        box.put("end", 0)
        assert box.statistics().bytes == 1000
        woke = threading.Event()

        def produce():
            box.put("late", 5)  # waits: the outbox is over its bound
            woke.set()

        threading.Thread(target=produce, daemon=True).start()
        await asyncio.sleep(0.1)
        assert not woke.is_set()
        box.close()
        await asyncio.sleep(0.1)
        assert woke.is_set() and box.closed and box.statistics().items == 0

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_stuck_sender_times_the_producer_out():
    async def main():
        box = Outbox(asyncio.get_running_loop(), max_bytes=10, timeout=0.1)
        box.put("first", 10)
        errors = []

        def produce():
            try:
                box.put("second", 10)
            except TransportTimeoutError as exc:
                errors.append(exc)

        t0 = time.monotonic()
        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.02)
        assert errors and "outbox full" in str(errors[0]) and time.monotonic() - t0 < 5

    asyncio.run(asyncio.wait_for(main(), 10))


@pytest.mark.parametrize("n", [1, 50])
def test_get_waits_for_a_producer_thread(n):
    async def main():
        box = Outbox(asyncio.get_running_loop(), max_bytes=1 << 20)
        threading.Thread(target=lambda: [box.put(i, 8) for i in range(n)], daemon=True).start()
        assert [await box.get() for _ in range(n)] == list(range(n))

    asyncio.run(asyncio.wait_for(main(), 10))
