"""Client and server over real transports: every plan kind exact, the three-line API,
a server killed mid-inference, a wrong token, many clients at once."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import subprocess
import sys
import warnings

import pytest
import torch

import lopinfer
from helpers import assert_exact, reference
from lopinfer.errors import AuthError
from lopinfer.runtime import LOPInfer, Server, connect, loopback
from lopinfer.scheduler import cut_plan, local_plan, local_segments, offload_plan, split_plan
from nets import REFERENCE_NETS

HAVE_AIOHTTP = importlib.util.find_spec("aiohttp") is not None
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
MODELS = ["vgg", "resnet", "unet", "densenet"]


def _pair(scheme, loop):
    marks = []
    if scheme == "ws" and not HAVE_AIOHTTP:
        marks.append(pytest.mark.skip(reason="ws:// needs aiohttp (extra 'ws')"))
    if loop == "uvloop" and not HAVE_UVLOOP:
        marks.append(pytest.mark.skip(reason="uvloop not installed (extra 'uvloop')"))
    return pytest.param(scheme, loop, marks=marks, id=f"{scheme}-{loop}")


# every transport on asyncio, and uvloop on tcp and mem (a socket stream, and none)
# (tcp, mem): the whole cross product costs CI ~2.5 min more for little more coverage
PAIRS = [_pair(s, "asyncio") for s in ("tcp", "ws", "shm", "mem")]
PAIRS += [_pair(s, "uvloop") for s in ("tcp", "mem")]
MORE_MODELS = ["mobilenet_v3", "convnext", "conv3d"]


def plans_for(graph):
    seg = max(local_segments(graph), key=lambda s: s[1] - s[0])
    return [offload_plan(graph, 1), offload_plan(graph, 4), cut_plan(graph, len(graph) // 2, 3),
            split_plan(graph, 0.5, seg[0], seg[1], 2, halo="send"),
            split_plan(graph, 0.5, seg[0], seg[1], 3, halo="recompute", after="client"),
            local_plan(graph, 2)]


async def every_plan_kind(url, name):
    model, x = REFERENCE_NETS[name]()
    ref = reference(model, x)
    async with Server() as server:
        (bound,) = await server.start(url)
        async with connect(bound, timeout=30) as client:
            session = await client.deploy(model, (x,))
            for plan in plans_for(session.graph):
                await session.use_plan(plan)
                out = await session.infer(x)
                assert_exact(out, ref)
                report = await session.report_complete()  # the server's spans follow
                assert not report.fell_back, report.reason
                assert report.plan == plan.name
                if plan.uses_server():
                    assert report.bytes_up > 0 and report.frames_up > 0
                    assert any(e["peer"] == "server" for e in report.timeline)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("scheme", "loop_kind"), PAIRS)
def test_every_plan_kind_over_each_transport(listen_url, arun, name):
    """Over the shared transport and event-loop fixtures (see PAIRS)."""
    arun(every_plan_kind, listen_url, name, timeout=240)


@pytest.mark.parametrize("loop_kind", ["asyncio"])
@pytest.mark.parametrize("scheme", ["mem", "tcp"])
@pytest.mark.parametrize("name", MORE_MODELS)
def test_more_models_over_two_transports(listen_url, arun, name):
    arun(every_plan_kind, listen_url, name, timeout=240)


def test_predeployed_models_folder(tmp_path):
    from lopinfer.runtime.serve import load_models, save_model

    model, x = REFERENCE_NETS["resnet"]()
    graph = lopinfer.capture(model, (x,))
    save_model(graph, tmp_path, "resnet")
    models = load_models(tmp_path)

    async def main():
        async with Server(models=models) as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            async with connect(url) as client:
                session = await client.deploy(model, (x,))
                assert_exact(await session.infer(x), reference(model, x))
            assert server.stats.deploys_cached == 1  # nothing uploaded

    asyncio.run(main())


@pytest.mark.parametrize("scheme", ["tcp"])
def test_second_client_uploads_nothing(listen_url, arun):
    model, x = REFERENCE_NETS["resnet"]()

    async def main():
        async with Server() as server:
            (url,) = await server.start(listen_url)
            for _ in range(2):
                async with connect(url) as client:
                    session = await client.deploy(model, (x,))
                    assert_exact(await session.infer(x), reference(model, x))
            assert server.stats.deploys == 2 and server.stats.deploys_cached == 1
            assert len(server.deployments) == 1

    arun(main, timeout=120)


def test_three_line_facade():
    model, x = REFERENCE_NETS["mobilenet_v3"]()
    ref = reference(model, x)

    proc = subprocess.Popen([sys.executable, "-m", "lopinfer.runtime.serve", "--listen",
                             "tcp://127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("LOPINFER_LISTENING "), line
    url = line.split(" ", 1)[1]
    try:
        lop = LOPInfer(url=url)
        lop.start_client(model=model, example=x)
        with torch.no_grad():
            y = model(x)
        assert_exact(y, ref)
        report = lop.last_report
        assert report is not None and not report.fell_back
        # the planner chose it, from costs measured on both peers and a probed link
        assert report.plan_reason.startswith("lopinfer plan for") and report.predicted_s > 0
        assert report.bandwidth_up > 0 and report.bandwidth_down > 0
        lop.close()
        # the model is plain again
        assert "forward" not in model.__dict__
        # without example=: the first call captures and deploys (a given plan here)
        lop = LOPInfer(url=url)
        lop.start_client(model=model, plan=lambda graph: offload_plan(graph, 2))
        assert_exact(model(x), ref)
        assert lop.session is not None and lop.session.remote
        assert lop.last_report.plan == "offload/t2"
        lop.close()
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful shutdown
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()


def test_server_killed_mid_inference_finishes_locally():
    model, x = REFERENCE_NETS["unet"]()
    ref = reference(model, x)

    async def main():
        graph = lopinfer.capture(model, (x,))
        async with loopback("tcp", peer_timeout=20) as client:
            # a plan that needs the server (the planner may rightly keep it local here)
            session = await client.deploy(graph, None, plan=offload_plan(graph, 4))
            assert_exact(await session.infer(x), ref)
            # stop the server process right after the inference starts
            proc = client.server_process
            task = asyncio.create_task(session.infer(x))
            await asyncio.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            out = await asyncio.wait_for(task, 60)
            assert_exact(out, ref)
            # killed before or during: either way exact, and a later inference too
            out = await asyncio.wait_for(session.infer(x), 60)
            assert_exact(out, ref)
            assert session.last_report.fell_back
            assert session.last_report.reason

    asyncio.run(main())


def test_a_late_server_report_does_not_hold_up_a_complete_result(monkeypatch):
    """The outputs are all in; the server's Done is held up on its way (a TCP tail loss
    in the lab once held one 164 s): the exact result comes at once, its report says
    after the grace that the server's spans are missing, and the next inference is
    unharmed."""
    from lopinfer.runtime.protocol import Done
    from lopinfer.transports import Connection

    model, x = REFERENCE_NETS["vgg"]()
    ref = reference(model, x)
    send = Connection.send_message
    held: list[asyncio.Event] = []

    async def slow_first_done(self, msg, **kw):
        if isinstance(msg, Done) and not held:  # only the server sends Done
            held.append(asyncio.Event())
            await asyncio.sleep(8.0)
            await send(self, msg, **kw)
            held[0].set()
            return
        await send(self, msg, **kw)

    async def main():
        async with Server() as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            graph = lopinfer.capture(model, (x,))
            async with connect(url, peer_timeout=60) as client:
                session = await client.deploy(graph, None, plan=offload_plan(graph, 2))
                monkeypatch.setattr(Connection, "send_message", slow_first_done)
                assert_exact(await session.infer(x), ref)
                # returned before the Done went out (under load, before it was even sent)
                assert not held or not held[0].is_set()
                assert not session._reporting.done()  # ... and before the grace ran out
                report = await session.report_complete()
                assert held and not held[0].is_set()  # the report gave up after the grace
                assert not report.fell_back and "came late" in report.reason
                assert not any(e["peer"] == "server" for e in report.timeline)
                assert_exact(await session.infer(x), ref)  # the late Done is ignored
                report = await session.report_complete()
                assert not report.fell_back and not report.reason
                assert any(e["peer"] == "server" for e in report.timeline)
                assert report.server_busy_s > 0

    asyncio.run(asyncio.wait_for(main(), 120))


def test_a_garbled_server_report_costs_the_report_not_the_result(monkeypatch, caplog):
    """A Done whose packed spans do not decode (not whole spans) is refused with one
    warning: the exact result stands, the report lacks the server's spans."""
    from lopinfer.runtime.protocol import Done
    from lopinfer.transports import Connection

    model, x = REFERENCE_NETS["vgg"]()
    ref = reference(model, x)
    send = Connection.send_message

    async def garbled_done(self, msg, **kw):
        if isinstance(msg, Done):
            msg = Done(inference_id=msg.inference_id, spans=msg.spans + b"\x00",
                       up_samples=msg.up_samples)
        await send(self, msg, **kw)

    async def main():
        async with Server() as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            graph = lopinfer.capture(model, (x,))
            async with connect(url, strict=True) as client:
                session = await client.deploy(graph, None, plan=offload_plan(graph, 2))
                assert_exact(await session.infer(x), ref)
                report = await session.report_complete()
                assert any(e["peer"] == "server" for e in report.timeline)
                monkeypatch.setattr(Connection, "send_message", garbled_done)
                assert_exact(await session.infer(x), ref)
                report = await session.report_complete()
                assert not report.fell_back and report.server_busy_s == 0
                assert not any(e["peer"] == "server" for e in report.timeline)

    with caplog.at_level("WARNING", logger="lopinfer"):
        asyncio.run(asyncio.wait_for(main(), 120))
    assert any("spans was refused" in r.getMessage() and "not whole" in r.getMessage()
               for r in caplog.records)


def test_wrong_token_is_refused_clearly(listen_url, arun):
    async def main():
        async with Server(token="s3cret") as server:
            (url,) = await server.start(listen_url)
            with pytest.raises(AuthError, match="refused the token"):
                await connect(url, token="wrong").open()
            ok = connect(url, token="s3cret")
            await ok.open()
            assert ok.connected
            await ok.aclose()

    arun(main, timeout=60)


def test_unreachable_server_runs_locally_and_warns_once():
    model, x = REFERENCE_NETS["vgg"]()

    async def main():
        client = connect("tcp://127.0.0.1:9", timeout=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session = await client.deploy(model, (x,))
            out = await session.infer(x)
            out2 = await session.infer(x)
        assert_exact(out, reference(model, x))
        assert_exact(out2, reference(model, x))
        assert session.last_report.fell_back and not session.remote
        assert sum("connection refused by" in str(w.message) for w in caught) == 1
        await client.aclose()

    asyncio.run(main())


def test_eight_concurrent_clients_with_different_models():
    names = ["vgg", "resnet", "densenet", "mobilenet_v3", "convnext", "unet", "vgg", "resnet"]
    nets = [REFERENCE_NETS[n]() for n in names]

    async def one(url, model, x, k):
        graph = lopinfer.capture(model, (x,))
        plan = cut_plan(graph, len(graph) // 2, 2) if k % 2 else offload_plan(graph, 2)
        async with connect(url, timeout=60) as client:
            session = await client.deploy(graph, None, plan=plan)
            for _ in range(2):
                assert_exact(await session.infer(x), reference(model, x))
                assert not session.last_report.fell_back

    async def main():
        async with Server() as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            await asyncio.wait_for(asyncio.gather(*(one(url, m, x, k) for k, (m, x) in enumerate(nets))), 240)
            assert server.stats.inferences == 16

    asyncio.run(main())


def test_lazy_public_names():
    assert lopinfer.connect is connect and lopinfer.LOPInfer is LOPInfer


@pytest.mark.skipif(not HAVE_AIOHTTP, reason="ws needs aiohttp (extra 'ws')")
def test_healthz_and_metrics_on_the_ws_listener():
    import aiohttp

    pytest.importorskip("prometheus_client", reason="/metrics needs prometheus-client (extra 'ws')")
    model, x = REFERENCE_NETS["vgg"]()

    async def main():
        async with Server() as server:
            (url,) = await server.start("ws://127.0.0.1:0/lopinfer")
            graph = lopinfer.capture(model, (x,))
            async with connect(url) as client:
                session = await client.deploy(graph, None, plan=offload_plan(graph, 2))
                assert_exact(await session.infer(x), reference(model, x))
            http = url.replace("ws://", "http://").rsplit("/", 1)[0]
            async with aiohttp.ClientSession() as web:
                async with web.get(f"{http}/healthz") as r:
                    assert r.status == 200
                    doc = await r.json()
                    assert doc["status"] == "ok" and doc["deployments"] == 1
                async with web.get(f"{http}/metrics") as r:
                    assert r.status == 200
                    text = await r.text()
            assert "lopinfer_inferences_total 1.0" in text
            assert 'lopinfer_inference_seconds_bucket{le="+Inf"} 1.0' in text
            assert "lopinfer_received_bytes_total" in text

    asyncio.run(main())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_server_is_exact():
    model, x = REFERENCE_NETS["unet"]()
    ref = reference(model, x)

    async def main():
        async with Server(device="cuda") as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            async with connect(url) as client:
                session = await client.deploy(model, (x,))
                for plan in plans_for(session.graph):
                    await session.use_plan(plan)
                    assert_exact(await session.infer(x), ref)
                    assert not session.last_report.fell_back

    asyncio.run(main())


def test_large_parameters_travel_in_parts(monkeypatch):
    """A parameter over WEIGHTS_PART goes in several frames, joined on the server; a
    server's max_model_size bounds the weights."""
    import lopinfer.runtime.deploy as deploy_mod

    monkeypatch.setattr(deploy_mod, "WEIGHTS_PART", 4 << 10)  # the larger convs split
    model, x = REFERENCE_NETS["resnet"]()
    graph = lopinfer.capture(model, (x,))

    async def main():
        async with Server() as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            async with connect(url) as client:
                session = await client.deploy(graph, None, plan=offload_plan(graph, 2))
                assert_exact(await session.infer(x), reference(model, x))
            assert server.stats.deploys == 1
        async with Server(max_model_size=20_000) as small:
            (url,) = await small.start("tcp://127.0.0.1:0")
            async with connect(url) as client:
                session = await client.deploy(graph, None, plan=offload_plan(graph, 2))
                # refused: the session runs locally, exactly, and says so
                assert_exact(await session.infer(x), reference(model, x))
                assert session.last_report.fell_back

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        asyncio.run(main())
