"""Flow control: a slow reader slows the writer, a stopped one times it out; memory stays bounded."""

from __future__ import annotations

import asyncio

import pytest
import torch

from lopinfer.errors import ConnectionClosedError, TransportTimeoutError
from lopinfer.transports import Connection, Frame, connect, listen

MB = 1 << 20
SMALL = dict(send_high_water=2 * MB, send_low_water=MB, recv_high_water=2 * MB, recv_low_water=MB)


def test_slow_reader_slows_the_writer(listen_url: str, arun) -> None:
    n_frames = 80
    async def main() -> None:
        consumed = 0
        peak_inbox = 0
        done = asyncio.Event()

        async def slow(conn: Connection) -> None:
            nonlocal consumed, peak_inbox
            for _ in range(n_frames):
                await asyncio.sleep(0.005)
                peak_inbox = max(peak_inbox, conn.statistics().recv_queue_bytes)
                await conn.recv()
                consumed += 1
            done.set()

        async with await listen(listen_url, slow, **SMALL) as lst, await connect(lst.url, **SMALL) as c:
            x = torch.randn(MB // 4)  # 1 MiB frames
            peak_queue = 0
            for _ in range(n_frames):
                await c.send_tensor(Frame(tensor=x))
                peak_queue = max(peak_queue, c.statistics().send_queue_bytes)
            at_end = consumed
            await asyncio.wait_for(done.wait(), 20)
        # the writer had to wait for the reader: what was not consumed yet fits in the
        # queues and the kernel's socket buffers (loopback buffers reach tens of MB)
        assert n_frames - at_end <= 50, (at_end, n_frames)
        assert peak_queue <= SMALL["send_high_water"] + MB
        assert peak_inbox <= SMALL["recv_high_water"] + 2 * MB

    arun(main, timeout=40)


def test_stopped_reader_times_the_writer_out(listen_url: str, arun) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        inbox_peak = 0

        async def stuck(conn: Connection) -> None:
            nonlocal inbox_peak
            while not stop.is_set():
                inbox_peak = max(inbox_peak, conn.statistics().recv_queue_bytes)
                await asyncio.sleep(0.01)

        async with await listen(listen_url, stuck, **SMALL) as lst:
            c = await connect(lst.url, send_timeout=0.5, **SMALL)
            x = torch.randn(MB // 4)
            with pytest.raises(TransportTimeoutError):
                for _ in range(500):  # far more than every buffer on the way holds
                    await c.send_tensor(Frame(tensor=x))
            stop.set()
            c.abort()
        assert inbox_peak <= SMALL["recv_high_water"] + 2 * MB

    arun(main, timeout=40)


def test_queue_timeout_does_not_break_the_connection(arun) -> None:
    """Senders waiting for queue space time out alone; the connection carries on."""

    async def main() -> None:
        release = asyncio.Event()
        got: list[int] = []

        async def gated(conn: Connection) -> None:
            await release.wait()
            async for f in conn:
                got.append(f.tensor_id)

        async with await listen("mem://", gated, recv_high_water=MB, recv_low_water=0) as lst:
            c = await connect(lst.url, send_high_water=MB, send_low_water=0)
            x = torch.randn(MB // 8)  # 512 KiB
            sent = 0
            with pytest.raises(TransportTimeoutError):
                for i in range(20):
                    await c.send_tensor(Frame(tensor=x, tensor_id=i), timeout=0.2)
                    sent += 1
            st = c.statistics()
            assert st.send_queue_bytes <= MB + MB // 2 and "open" in repr(c)
            release.set()
            await c.send_tensor(Frame(tensor=x, tensor_id=99))
            await c.drain()
            await c.aclose()
            for _ in range(100):
                if got and got[-1] == 99:
                    break
                await asyncio.sleep(0.02)
        assert got == [*range(sent), 99]

    T_run = arun
    T_run(main)


def test_send_after_peer_closed(listen_url: str, arun) -> None:
    async def main() -> None:
        async def bye(conn: Connection) -> None:
            return

        async with await listen(listen_url, bye) as lst, await connect(lst.url) as c:
            with pytest.raises(ConnectionClosedError):
                for _ in range(200):
                    await c.send_tensor(Frame(tensor=torch.randn(10000)))
                    await asyncio.sleep(0.01)

    arun(main)
