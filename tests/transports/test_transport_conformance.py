"""One suite for every transport (tcp, ws, shm, mem) on every event loop (asyncio, uvloop)."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from transport_helpers import make, same

from lopinfer.errors import (
    ConnectError,
    ConnectionClosedError,
    ProtocolError,
    TransportTimeoutError,
)
from lopinfer.runtime.protocol import Hello, Welcome  # the application's messages
from lopinfer.transports import (
    HAVE_LZ4,
    SUPPORTED_DTYPES,
    Bye,
    Connection,
    Error,
    Frame,
    TransferRecord,
    connect,
    listen,
)
from lopinfer.transports._frame import FLAG_LZ4


async def until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def echo(conn: Connection) -> None:
    async for item in conn:
        if isinstance(item, Frame):
            await conn.send_tensor(item)
        elif isinstance(item, Bye):
            await conn.send_message(item)
            return
        else:
            await conn.send_message(item)


async def roundtrip(c: Connection, t: torch.Tensor, **ids: int) -> Frame:
    await c.send_tensor(Frame(tensor=t, **ids))
    got = await c.recv()
    assert isinstance(got, Frame)
    return got


def test_every_dtype_and_shape(listen_url: str, arun) -> None:
    async def main() -> None:
        async with await listen(listen_url, echo) as lst, await connect(lst.url) as c:
            for dtype in SUPPORTED_DTYPES:
                for shape in [(), (0,), (2, 0, 3), (5,), (2, 3, 4, 5)]:
                    t = make(dtype, shape, seed=len(shape))
                    got = await roundtrip(c, t, tensor_id=7, session_id=3)
                    assert same(got.tensor, t), (dtype, shape)
                    assert (got.tensor_id, got.session_id) == (7, 3)

    arun(main)


def test_layouts(listen_url: str, arun) -> None:
    async def main() -> None:
        async with await listen(listen_url, echo) as lst, await connect(lst.url) as c:
            base = torch.randn(2, 8, 6, 5)
            cl = base.to(memory_format=torch.channels_last)
            got = await roundtrip(c, cl)
            assert torch.equal(got.tensor, cl) and got.tensor.is_contiguous(memory_format=torch.channels_last)
            for view in (base[:, ::2], base.transpose(1, 3), base[..., 1:4], base.permute(3, 1, 0, 2)):
                assert torch.equal((await roundtrip(c, view)).tensor, view)
            tile = base[:, :, 2:5]
            got = await roundtrip(c, tile, dim=2, row_start=2, row_stop=5)
            assert torch.equal(got.tensor, tile) and (got.dim, got.row_start, got.row_stop) == (2, 2, 5)

    arun(main)


def test_64mb_tensor(listen_url: str, arun) -> None:
    async def main() -> None:
        async with await listen(listen_url, echo) as lst, await connect(lst.url) as c:
            t = torch.randint(-(2**31), 2**31 - 1, (16 << 20,), dtype=torch.int32)  # 64 MiB
            got = await roundtrip(c, t.view(1024, -1))
            assert torch.equal(got.tensor.view(-1), t)

    arun(main, timeout=60)


@pytest.mark.skipif(not HAVE_LZ4, reason="lz4 not installed (extra 'lz4')")
def test_compressed_frames(listen_url: str, arun) -> None:
    async def main() -> None:
        async with await listen(listen_url, echo, compression="always") as lst:
            async with await connect(lst.url, compression="always", offload_threshold=1 << 16) as c:
                x = torch.relu(torch.randn(4, 64, 64)).repeat(1, 4, 1)  # compressible
                for t in (x, x[:, :, :7], torch.rand(1 << 16)):
                    assert torch.equal((await roundtrip(c, t)).tensor, t)
                st = c.statistics()
                assert st.compressed_sent == 2 and st.compressed_received == 2  # random data went raw
                assert st.wire_bytes_sent < st.raw_bytes_sent

    arun(main)


def test_control_messages(listen_url: str, arun) -> None:
    async def main() -> None:
        async with await listen(listen_url, echo) as lst, await connect(lst.url) as c:
            for msg in (Hello(token="t" * 1000, client_name="robot"), Welcome(session_id=3), Error(code="x")):
                await c.send_message(msg)
                assert await c.recv() == msg

    arun(main)


def test_ordering_under_concurrency(listen_url: str, arun) -> None:
    async def main() -> None:
        async with await listen(listen_url, echo) as lst, await connect(lst.url, offload_threshold=1 << 15) as c:
            sizes = [1, 5000, 70000, 300]  # tiny, inline, offloaded, ...

            async def sender(task: int) -> None:
                for seq in range(40):
                    t = torch.full((sizes[(task + seq) % 4],), float(seq))
                    await c.send_tensor(Frame(tensor=t, session_id=task, tensor_id=seq))

            got: dict[int, list[int]] = {}

            async def receiver() -> None:
                for _ in range(8 * 40):
                    f = await c.recv()
                    assert isinstance(f, Frame) and f.tensor.numel() == sizes[(f.session_id + f.tensor_id) % 4]
                    assert bool((f.tensor == f.tensor_id).all())
                    got.setdefault(f.session_id, []).append(f.tensor_id)

            await asyncio.gather(receiver(), *(sender(i) for i in range(8)))
            assert got == {i: list(range(40)) for i in range(8)}

    arun(main)


def test_clean_close_delivers_everything(listen_url: str, arun) -> None:
    async def main() -> None:
        received: list[int] = []
        done = asyncio.Event()

        async def collect(conn: Connection) -> None:
            async for f in conn:  # ends without error when the client closes cleanly
                received.append(f.tensor_id)
            done.set()

        async with await listen(listen_url, collect) as lst:
            c = await connect(lst.url)
            for i in range(50):
                await c.send_tensor(Frame(tensor=torch.randn(3000), tensor_id=i))
            await c.aclose()
            assert c.closed and "closed" in repr(c)
            await asyncio.wait_for(done.wait(), 10)
            with pytest.raises(ConnectionClosedError):
                await c.send_tensor(Frame(tensor=torch.zeros(1)))
        assert received == list(range(50))

    arun(main)


def test_server_close_ends_client_iteration(listen_url: str, arun) -> None:
    async def main() -> None:
        async def one_then_close(conn: Connection) -> None:
            await conn.send_message(Bye(reason="done"))

        async with await listen(listen_url, one_then_close) as lst, await connect(lst.url) as c:
            items = [item async for item in c]
            assert items == [Bye(reason="done")]
            with pytest.raises(ConnectionClosedError):
                await c.recv()

    arun(main)


def test_abrupt_close_is_an_error_not_a_hang(listen_url: str, arun) -> None:
    async def main() -> None:
        seen: list[BaseException] = []
        done = asyncio.Event()

        async def reader(conn: Connection) -> None:
            try:
                while True:
                    await conn.recv()
            except Exception as exc:
                seen.append(exc)
                done.set()

        async with await listen(listen_url, reader) as lst:
            c = await connect(lst.url)
            await c.send_tensor(Frame(tensor=torch.randn(100)))
            c.abort()
            await asyncio.wait_for(done.wait(), 10)
        assert isinstance(seen[0], ConnectionClosedError)

    arun(main)


# -- bad input: every case gets a ProtocolError, the connection closes, the listener serves on --
BAD = {
    "garbage": lambda: (b"GARBAGE!" * 4, b""),
    "wrong version": lambda: _mutate(lambda h: h.__setitem__(4, 9)),
    "oversized": lambda: _mutate(lambda h: h.__setitem__(slice(12, 20), (1 << 40).to_bytes(8, "little"))),
    "shape vs length": lambda: _mutate(lambda h: h.__setitem__(slice(88, 96), (3).to_bytes(8, "little"))),
    "corrupt lz4": lambda: _mutate(lambda h: h.__setitem__(6, FLAG_LZ4)),
}


def _mutate(edit) -> tuple[bytes, bytes]:
    from lopinfer.transports import encode_frame

    data = bytearray(encode_frame(Frame(tensor=torch.arange(8, dtype=torch.float32).reshape(2, 4))))
    header, payload = data[:-32], bytes(data[-32:])
    edit(header)
    return bytes(header), payload


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_protocol_error(listen_url: str, arun, case: str) -> None:
    async def main() -> None:
        errors: list[BaseException] = []

        async def handler(conn: Connection) -> None:
            try:
                while True:
                    item = await conn.recv()
                    if isinstance(item, Frame):
                        await conn.send_tensor(item)
            except ProtocolError as exc:
                errors.append(exc)
                raise  # the listener logs it and goes on

        async with await listen(listen_url, handler, stall_timeout=2) as lst:
            bad = await connect(lst.url)
            header, payload = BAD[case]()
            await bad._stream.send(header, memoryview(payload))  # bytes the codec would never write
            reply = await bad.recv()
            assert isinstance(reply, Error) and reply.code == "protocol_error", reply
            with pytest.raises(ConnectionClosedError):
                await bad.recv()
            await bad.aclose()
            await until(lambda: errors)
            assert len(errors) == 1 and "\n" not in str(errors[0])
            async with await connect(lst.url) as good:  # still serving
                assert torch.equal((await roundtrip(good, torch.ones(3))).tensor, torch.ones(3))
            assert lst.statistics().protocol_errors == 1

    arun(main)


def _send_partial(conn: Connection, scheme: str) -> None:
    """Write a header announcing 1 MiB and only part of its payload."""
    from lopinfer.transports import encode_frame

    data = encode_frame(Frame(tensor=torch.zeros(1 << 18)))
    header, part = data[: len(data) - (1 << 20)], memoryview(data)[-(1 << 20) : -(1 << 19)]
    s = conn._stream
    if scheme == "tcp":
        s._transport.write(header + part)
    else:
        from lopinfer.transports import _shm

        s._send_record(_shm.R_HEADER, header)
        s._transport.write(s._copy_in(part, 0, s._alloc(len(part), whole=True)))


def _partial_frames(scheme: str) -> None:
    if scheme in ("ws", "mem"):
        pytest.skip(f"{scheme}:// delivers whole messages: a frame cannot arrive in part")


@pytest.mark.parametrize("then", ["vanish", "stall"])
def test_peer_vanishing_mid_frame(scheme: str, listen_url: str, arun, then: str) -> None:
    _partial_frames(scheme)

    async def main() -> None:
        seen: list[BaseException] = []
        done = asyncio.Event()

        async def reader(conn: Connection) -> None:
            try:
                await conn.recv()
            except Exception as exc:
                seen.append(exc)
            done.set()

        async with await listen(listen_url, reader, stall_timeout=0.5) as lst:
            c = await connect(lst.url)
            _send_partial(c, scheme)
            t0 = time.monotonic()
            if then == "vanish":
                await asyncio.sleep(0.05)
                c.abort()
            await asyncio.wait_for(done.wait(), 10)
            c.abort()
        expected = ConnectionClosedError if then == "vanish" else TransportTimeoutError
        assert isinstance(seen[0], expected), seen
        assert "mid-frame" in str(seen[0])
        if then == "stall":
            assert 0.4 < time.monotonic() - t0 < 5

    arun(main)


def test_recv_timeout_keeps_the_connection(listen_url: str, arun) -> None:
    async def main() -> None:
        async with await listen(listen_url, echo) as lst, await connect(lst.url) as c:
            with pytest.raises(TransportTimeoutError):
                await c.recv(timeout=0.1)
            assert torch.equal((await roundtrip(c, torch.ones(2))).tensor, torch.ones(2))

    arun(main)


def test_connect_to_nothing_is_a_connect_error(scheme: str, arun) -> None:
    url = {"tcp": "tcp://127.0.0.1:9", "ws": "ws://127.0.0.1:9/x", "shm": "shm://nobody-here",
           "mem": "mem://nobody-here"}[scheme]  # fmt: skip

    async def main() -> None:
        with pytest.raises(ConnectError):
            await connect(url, timeout=5)

    arun(main)


def test_statistics_observers_and_repr(listen_url: str, arun) -> None:
    async def main() -> None:
        async with await listen(listen_url, echo) as lst, await connect(lst.url) as c:
            records: list[TransferRecord] = []
            c.add_observer(records.append)
            assert "open" in repr(c) and c.url in repr(c)
            for _ in range(3):
                await roundtrip(c, torch.randn(1000))
            st = c.statistics()
            assert st.frames_sent == st.frames_received == 3
            assert st.raw_bytes_sent == st.raw_bytes_received == 12000
            assert st.wire_bytes_sent > 12000 and st.send_queue_frames == 0
            assert [r.direction for r in records] == ["send", "recv"] * 3
            assert all(r.end_ns >= r.start_ns and r.raw_bytes == 4000 for r in records)
            assert records[1].peer_time_ns > 0
            c.bandwidth_estimate = 1e6
            assert c.statistics().bandwidth_estimate == 1e6
            c.bandwidth_estimate = lambda: 5e6
            assert c.bandwidth_estimate == 5e6
            assert "listening" in repr(lst) and lst.statistics().active == 1

    arun(main)


def test_received_tensors_are_never_overwritten(listen_url: str, arun) -> None:
    """Receive buffers are pooled: a frame the application keeps must stay intact."""

    async def main() -> None:
        async with await listen(listen_url, echo) as lst, await connect(lst.url) as c:
            kept = []
            for i in range(12):
                got = await roundtrip(c, torch.full((1 << 16,), float(i)))  # 256 KiB
                if i % 2:
                    kept.append((i, got.tensor[::1024]))  # a view keeps the buffer alive
                else:
                    kept.append((i, got.tensor))
                del got
            for i, t in kept:
                assert bool((t == i).all()), f"frame {i} was overwritten"
            kept.clear()
            for i in range(12, 20):  # buffers come back into use
                assert bool(((await roundtrip(c, torch.full((1 << 16,), float(i)))).tensor == i).all())

    arun(main)


def test_tensors_may_change_after_drain(listen_url: str, arun) -> None:
    async def main() -> None:
        async with await listen(listen_url, echo) as lst, await connect(lst.url) as c:
            x = torch.arange(1 << 21, dtype=torch.float32)  # 8 MiB
            want = x.clone()
            for i in range(3):
                await c.send_tensor(Frame(tensor=x, tensor_id=i))
            await c.drain()
            x.fill_(-1)  # after drain() the sender's memory is its own again
            for _ in range(3):
                assert torch.equal((await c.recv()).tensor, want)

    arun(main)
