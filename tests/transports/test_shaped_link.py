"""The user-space shaped link: rates and latency per direction, measured by the receiver."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from lopinfer.errors import InputError
from lopinfer.transports import Frame, LinkShape, connect, listen


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _echo_server(n_down: int, nbytes: int):
    async def handler(conn):
        got = 0
        async for _item in conn:
            got += 1
            if got == n_down:
                for i in range(n_down):
                    await conn.send_tensor(Frame(tensor=torch.randn(nbytes // 4), tensor_id=i))
                await conn.drain()
    return await listen("tcp://127.0.0.1:0", handler)


@pytest.mark.parametrize("latency", [0.0, 0.05])
def test_rates_and_latency_each_way(latency):
    n, size = 4, 200_000
    up, down = 2e6, 4e6

    async def main():
        lst = await _echo_server(n, size)
        try:
            records = []
            conn = await connect(lst.url, link_shape=LinkShape(up, down, latency=latency))
            conn.add_observer(records.append)
            t0 = time.perf_counter()
            for i in range(n):
                await conn.send_tensor(Frame(tensor=torch.randn(size // 4), tensor_id=i))
            for _ in range(n):
                await conn.recv(timeout=20)
            total = time.perf_counter() - t0
            await conn.aclose()
            return total, records
        finally:
            await lst.aclose()

    total, records = _run(main())
    ideal = n * size / up + n * size / down + 2 * latency
    assert ideal * 0.95 < total < ideal * 1.6 + 0.1
    recv = [r for r in records if r.direction == "recv" and r.kind == "tensor"]
    rates = [r.wire_bytes / ((r.end_ns - r.start_ns) / 1e9) for r in recv]
    for rate in rates:  # what a passive estimator sees is the shaped rate
        assert rate == pytest.approx(down, rel=0.02)
    sent = [r for r in records if r.direction == "send" and r.kind == "tensor"]
    assert sum(r.wire_bytes / ((r.end_ns - r.start_ns) / 1e9) for r in sent[1:]) / (n - 1) == \
        pytest.approx(up, rel=0.2)


def test_rate_follows_a_callable_trace():
    size = 100_000

    async def main():
        lst = await _echo_server(10**9, size)  # never answers
        try:
            conn = await connect(lst.url, link_shape=LinkShape(lambda t: 1e6 if t < 0.25 else 4e6))
            t0 = time.perf_counter()
            for i in range(2):  # 0.2 s at 1 MB/s
                await conn.send_tensor(Frame(tensor=torch.randn(size // 4), tensor_id=i))
            await conn.drain()
            t1 = time.perf_counter()
            await asyncio.sleep(max(0.0, 0.3 - (t1 - t0)))
            t2 = time.perf_counter()
            for i in range(4):  # 0.1 s at 4 MB/s
                await conn.send_tensor(Frame(tensor=torch.randn(size // 4), tensor_id=i))
            await conn.drain()
            t3 = time.perf_counter()
            await conn.aclose()
            return t1 - t0, t3 - t2
        finally:
            await lst.aclose()

    slow, fast = _run(main())
    assert slow == pytest.approx(0.2, rel=0.3)
    assert fast == pytest.approx(0.1, rel=0.5)


def test_bad_shapes_are_refused():
    with pytest.raises(InputError, match="rate"):
        LinkShape(0)
    with pytest.raises(InputError, match="latency"):
        LinkShape(1e6, latency=-1)

    async def main():
        await connect("tcp://127.0.0.1:1", link_shape=5e6)

    with pytest.raises(InputError, match="link_shape"):
        _run(main())
