"""A deploy whose server kept its costs for the model plans while the weights go up:
the server answers a ``ProfileRequest`` by content hash from its profile cache, before
the graph is uploaded, and refuses a malformed hash."""

from __future__ import annotations

import asyncio

import pytest

import lopinfer
from adversary import RawPeer
from helpers import assert_exact, reference
from lopinfer.runtime import Server, connect, profiler
from lopinfer.runtime.protocol import ProfileRequest, Welcome
from lopinfer.transports import Error
from nets import REFERENCE_NETS

TCP = "tcp://127.0.0.1:0"


def test_a_fresh_server_with_kept_costs_is_planned_for_during_the_upload(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("LOPINFER_CACHE", str(tmp_path))
    monkeypatch.setattr(profiler, "_MEMO", {})
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    measured = []
    real = profiler.profile
    monkeypatch.setattr(profiler, "profile",
                        lambda g, *a, **k: measured.append(k.get("name", "server")) or real(g, *a, **k))

    from lopinfer.runtime import measure

    kept = []
    real_kept = measure.kept_server_costs

    async def recording_kept(client, digest):
        kept.append(await real_kept(client, digest))
        return kept[-1]

    monkeypatch.setattr(measure, "kept_server_costs", recording_kept)

    async def deploy_once() -> int:
        async with Server() as server:  # a fresh server: it holds no deployment
            (url,) = await server.start(TCP)
            async with connect(url, strict=True) as client:
                session = await client.deploy(graph, None, progress=False)
                assert "first inference" in session.policy.choice.reason
                assert session.program is not None  # compiled before the first inference
                assert_exact(await session.infer(x), reference(model, x))
                assert session.plan is not None and session.policy.book is not None
                return server.stats.deploys

    async def main():
        assert await deploy_once() == 1
        assert kept == [None] and sorted(measured) == ["client", "server"]
        assert await deploy_once() == 1  # the weights uploaded again, planned meanwhile
        assert kept[1] is not None and measured.count("server") == 1

    asyncio.run(asyncio.wait_for(main(), 240))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABC", "0" * 63, "g" * 64])
def test_a_profile_asked_by_a_malformed_hash_is_refused(bad):
    async def main():
        async with Server() as server:
            (url,) = await server.start(TCP)
            async with RawPeer(url) as peer:
                assert isinstance(await peer.hello(), Welcome)
                await peer.send(ProfileRequest(content_hash=bad))
                reply = await peer.recv_until(Error)
                assert "content_hash" in reply.message
            async with RawPeer(url) as peer:  # and it goes on serving
                assert isinstance(await peer.hello(), Welcome)
                await peer.send(ProfileRequest(content_hash="0" * 64))
                assert "no profile kept" in (await peer.recv_until(Error)).message

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_switch_interval_is_short_only_while_some_upload_holds_it():
    import sys
    import threading

    from lopinfer.runtime.gil import IO_SWITCH_INTERVAL_S, responsive_io

    before = sys.getswitchinterval()
    inside = threading.Event()
    release = threading.Event()

    def other_holder():
        with responsive_io():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other_holder)
    try:
        with responsive_io():
            assert sys.getswitchinterval() == min(before, IO_SWITCH_INTERVAL_S)
            t.start()
            assert inside.wait(10)
        # the other holder still holds it: not restored under it
        assert sys.getswitchinterval() == min(before, IO_SWITCH_INTERVAL_S)
    finally:
        release.set()
        t.join(10)
    assert sys.getswitchinterval() == before  # the last one out restored it
    sys.setswitchinterval(0.0001)  # a caller's shorter interval is never raised
    try:
        with responsive_io():
            assert sys.getswitchinterval() == pytest.approx(0.0001, abs=2e-6)
        assert sys.getswitchinterval() == pytest.approx(0.0001, abs=2e-6)
    finally:
        sys.setswitchinterval(before)


def test_the_weights_go_up_with_a_short_switch_interval(monkeypatch):
    import sys

    from lopinfer.runtime import deploy
    from lopinfer.runtime.gil import IO_SWITCH_INTERVAL_S

    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))
    seen = []
    real = deploy.Frame

    def recording_frame(*a, **k):
        seen.append(sys.getswitchinterval())
        return real(*a, **k)

    monkeypatch.setattr(deploy, "Frame", recording_frame)

    async def main():
        async with Server() as server:
            (url,) = await server.start(TCP)
            async with connect(url, strict=True) as client:
                session = await client.deploy(graph, None, progress=False, planner="offload")
                assert_exact(await session.infer(x), reference(model, x))

    before = sys.getswitchinterval()
    asyncio.run(main())
    assert seen and all(s <= IO_SWITCH_INTERVAL_S for s in seen)
    assert sys.getswitchinterval() == before
