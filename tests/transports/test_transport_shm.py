"""shm:// specifics: zero-copy receive, extents released in any order, no deadlock."""

from __future__ import annotations

import asyncio
import gc

import pytest
import torch

from lopinfer.transports import Connection, Frame, connect, listen

RING = 1 << 20  # small ring: frames wrap around it many times


async def echo(conn: Connection) -> None:
    async for item in conn:
        await conn.send_tensor(item)


@pytest.mark.parametrize("zero_copy", [True, False])
def test_kept_tensors_survive_ring_reuse(arun, zero_copy: bool) -> None:
    async def main() -> None:
        opts = dict(shm_ring_size=RING, shm_zero_copy=zero_copy)
        async with await listen("shm://", echo, **opts) as lst, await connect(lst.url, **opts) as c:
            kept = {}
            for i in range(200):  # 200 x 128 KiB through a 1 MiB ring
                await c.send_tensor(Frame(tensor=torch.full((1 << 15,), float(i)), tensor_id=i))
                got = await c.recv()
                assert bool((got.tensor == i).all())
                if i % 7 == 0:
                    kept[i] = got.tensor  # holds its extent (when zero copy) for good
                del got
                held = c._stream._held_bytes
                assert held <= RING // 2
            for i, t in kept.items():
                assert bool((t == i).all()), f"frame {i} changed under the application"
            if zero_copy:
                assert c._stream._held_bytes > 0  # some of them still view the ring
            kept.clear()
            gc.collect()
            await asyncio.sleep(0.05)  # the held extents are polled and given back
            assert c._stream._held_bytes == 0

    arun(main)


def test_tensors_outlive_their_connection(arun) -> None:
    async def main() -> list[torch.Tensor]:
        # compression off: on a loaded machine a slow send can make LZ4 look worth it,
        # and a decompressed frame is a copy, not a view of the ring
        async with await listen("shm://", echo, compression="off") as lst, \
                await connect(lst.url, compression="off") as c:
            out = []
            for i in range(3):
                await c.send_tensor(Frame(tensor=torch.full((1 << 16,), float(i))))
                out.append((await c.recv()).tensor)
            assert c._stream._held_bytes == 3 << 18
        return out

    tensors = arun(main)
    for i, t in enumerate(tensors):  # the mapping stays valid after close and unlink
        assert bool((t == i).all())
    del tensors
    gc.collect()


def test_big_frames_go_in_chunks(arun) -> None:
    async def main() -> None:
        opts = dict(shm_ring_size=RING)
        async with await listen("shm://", echo, **opts) as lst, await connect(lst.url, **opts) as c:
            x = torch.randn(3 << 20)  # 12 MiB through a 1 MiB ring
            await c.send_tensor(Frame(tensor=x))
            assert torch.equal((await c.recv()).tensor, x)

    arun(main)


def test_ring_allocator_never_overlaps() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from lopinfer.transports import Options
    from lopinfer.transports._shm import CHUNK, ShmStream

    size = 1 << 12

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), st.integers(1, size), st.booleans(), st.integers(0, 50)), max_size=60))
    def run(ops: list) -> None:
        s = ShmStream(Options())
        s._ring = memoryview(bytearray(size))
        live: list[tuple[int, int]] = []
        for is_alloc, want, whole, pick in ops:
            if is_alloc or not live:
                ext = s._alloc(want, whole)
                if ext is None:
                    assert whole or s._inflight == size
                    continue
                off, n = ext
                assert 0 <= off and off + n <= size and (n == want or not whole) and n <= want
                assert all(off + n <= o or o + m <= off for o, m in live), "overlap"
                live.append(ext)
            else:
                off, n = live.pop(pick % len(live))
                s._acked(memoryview(CHUNK.pack(off, n)))
            assert s._inflight == sum(n for _, n in live) <= size
            assert s._offs == sorted(o for o, _ in live)

    run()
