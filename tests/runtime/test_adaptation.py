"""Deploy measures both peers and the link, plans per bandwidth, and switches plans
between inferences as the measured bandwidth changes (a user-space shaped link)."""

from __future__ import annotations

import asyncio
import time

import pytest

from helpers import assert_exact, reference
from lopinfer.errors import LopInferError, PlanError
from lopinfer.runtime import Server, connect
from lopinfer.runtime.profiler import profile
from lopinfer.scheduler.energy import Objective
from lopinfer.transports import LinkShape
from nets import REFERENCE_NETS


def _run(coro, timeout=240):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_deploy_measures_plans_and_reports():
    model, x = REFERENCE_NETS["vgg"]()
    ref = reference(model, x)

    async def main():
        async with Server() as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            shape = LinkShape(3e6, 6e6, latency=0.001)
            async with connect(url, link_shape=shape) as client:
                session = await client.deploy(model, (x,))
                # the probed bandwidth's point is planned before deploy returns ...
                assert session.book.nearest(session.link_estimate()) in session.book.ready()
                assert_exact(await session.infer(x), ref)
                # ... and the rest of the grid in the background
                deadline = time.monotonic() + 120
                while (len(session.book.ready()) < len(session.book.grid)
                       and time.monotonic() < deadline):
                    await asyncio.sleep(0.05)
                return session

    session = _run(main())
    # the probe measured the shaped link (never an OS setting)
    assert session.cost.up.bandwidth == pytest.approx(3e6, rel=0.15)
    assert session.cost.down.bandwidth == pytest.approx(6e6, rel=0.15)
    # the server's costs were measured there and sent back: one per node
    assert set(session.cost.server.nodes) == {n.name for n in session.graph}
    assert len(session.book.ready()) == len(session.book.grid)  # the grid was planned
    report = session.last_report
    assert report.predicted_s > 0 and 0 < report.bound_s <= report.predicted_s
    assert report.plan == session.choice.scored.plan.name
    assert "lopinfer plan for" in report.plan_reason and report.energy_j > 0


def test_plan_switches_between_inferences_when_the_link_changes():
    """Fast link: a slow client offloads. The link collapses: after the estimator sees
    it, the session switches to a plan that ships less (between two inferences, exactly)."""
    model, x = REFERENCE_NETS["vgg"]()
    ref = reference(model, x)
    rate = {"now": 40e6}

    async def main():
        async with Server() as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            shape = LinkShape(lambda t: rate["now"])
            async with connect(url, link_shape=shape) as client:
                session = await client.deploy(model, (x,))  # measured, then pretend
                slow = session.cost.client.scaled(50, "slow-client")  # a 50x slower client
                session = await client.deploy(model, (x,), client_costs=slow)
                plans, sent = [], []
                for _ in range(2):
                    assert_exact(await session.infer(x), ref)
                    plans.append(session.last_report.plan)
                    sent.append(session.last_report.bytes_up)
                rate["now"] = 20e3  # the link collapses
                for _ in range(12):
                    assert_exact(await session.infer(x), ref)
                    report = session.last_report
                    plans.append(report.plan)
                    sent.append(report.bytes_up)
                    assert not report.fell_back
                    if report.plan != plans[0]:
                        break
                return plans, sent, report, session

    plans, sent, report, session = _run(main())
    assert plans[0] != "local" and plans[1] == plans[0], plans
    assert plans[-1] != plans[0], plans  # switched, between two inferences
    assert sent[-1] < sent[0]  # to a plan that ships less over the slow link
    assert "bandwidth changed" in report.plan_reason
    assert session.link_estimate() < 1e6  # the estimate followed the measured transfers


def test_energy_objective_and_bad_arguments():
    model, x = REFERENCE_NETS["vgg"]()

    async def main():
        async with Server() as server:
            (url,) = await server.start("mem://adapt-energy")
            async with connect(url) as client:
                s = await client.deploy(model, (x,), objective="energy", deadline_s=1.0,
                                        device_profile="raspberry-pi-5", adapt=False)
                assert s.objective == Objective("energy", 1.0, s.objective.profile)
                assert s.objective.profile.name == "raspberry-pi-5"
                assert_exact(await s.infer(x), reference(model, x))
                with pytest.raises(PlanError, match="unknown planner"):
                    await client.deploy(model, (x,), planner="magic")
                with pytest.raises(LopInferError, match="unknown device profile"):
                    await client.deploy(model, (x,), device_profile="toaster")

    _run(main())


def test_server_profile_is_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("LOPINFER_CACHE", str(tmp_path))
    monkeypatch.setattr("lopinfer.runtime.profiler._MEMO", {})  # measured afresh here
    model, x = REFERENCE_NETS["resnet"]()
    import lopinfer

    graph = lopinfer.capture(model, (x,))
    a = profile(graph, repeats=1)
    b = profile(lopinfer.capture(model, (x,)), repeats=1)
    assert a is b  # the same content: measured once
    assert list(tmp_path.rglob("*.json"))


@pytest.mark.skipif(not __import__("lopinfer.transports", fromlist=["HAVE_LZ4"]).HAVE_LZ4,
                    reason="needs the lz4 package (extra 'lz4')")
def test_predicted_wire_bytes_match_what_the_transport_sends():
    """A post-ReLU value crosses a slow link: the transport compresses it, and the cost
    model (the profile's measured ratio, the transport's own rule) predicts the bytes
    that went on the wire."""
    import torch

    from lopinfer.scheduler.builders import cut_plan
    from lopinfer.scheduler.planners import evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 4, 3, padding=1)).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = reference(model, x)

    async def main():
        async with Server() as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            async with connect(url, link_shape=LinkShape(1e6, 1e6)) as client:
                session = await client.deploy(model, (x,))
                plan = cut_plan(session.graph, 2, 4)  # the ReLU output goes up in 4 tiles
                await session.use_plan(plan)
                assert_exact(await session.infer(x), ref)  # the compressor learns the stream
                before = client.conn.statistics()
                assert_exact(await session.infer(x), ref)
                after = client.conn.statistics()
                report = session.last_report
                # the report counts the same wire bytes the connection did, raw apart
                assert (report.wire_up, report.wire_down) == (
                    after.wire_bytes_sent - before.wire_bytes_sent,
                    after.wire_bytes_received - before.wire_bytes_received)
                assert 0 < report.wire_up < 0.8 * report.bytes_up
                assert report.wire_down > report.bytes_down > 0  # raw: headers on top
                assert "on the wire: up" in report.summary()
                pred = evaluate(session.graph, plan, session.cost, session.objective).prediction
                return pred, after.wire_bytes_sent - before.wire_bytes_sent, \
                    after.compressed_sent - before.compressed_sent

    pred, sent, compressed = _run(main())
    assert compressed >= 4  # every tile of the ReLU output went compressed
    assert pred.wire_up < 0.8 * pred.bytes_up  # and the model said it would
    assert sent == pytest.approx(pred.wire_up, rel=0.15)  # + headers and control messages


@pytest.mark.skipif(not __import__("lopinfer.transports", fromlist=["HAVE_LZ4"]).HAVE_LZ4,
                    reason="needs the lz4 package (extra 'lz4')")
def test_the_client_profiles_on_the_example_so_ratios_are_the_datas(tmp_path, monkeypatch):
    """A mostly empty grid compresses ~50x; random data not at all. The deploy's own
    profile runs on the example, so the plans count on the ratio of the real input."""
    import torch

    from lopinfer.workloads.inputs import lidar_grid

    monkeypatch.setenv("LOPINFER_CACHE", str(tmp_path))
    monkeypatch.setattr("lopinfer.runtime.profiler._MEMO", {})
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU()).eval()
    grid = lidar_grid(64, 8)
    ref = reference(model, grid)

    async def main():
        async with Server() as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            async with connect(url) as client:
                session = await client.deploy(model, (grid,))
                assert_exact(await session.infer(grid), ref)
                return session.cost

    cost = _run(main())
    (name,) = [n for n in cost.client.lz4_ratio if "conv" not in n and "relu" not in n]
    assert cost.client.lz4_ratio[name] < 0.2  # the grid's, not random data's (~1.0)
    assert cost.server.lz4_ratio[name] > 0.9  # the server saw random data


def test_plans_rescored_at_the_estimate_run_exactly():
    """Between two grid points the session runs the best plan at the estimate once the
    re-scorer has ranked them (after the choice that asked), every result exact."""
    model, x = REFERENCE_NETS["unet"]()
    ref = reference(model, x)

    async def main():
        async with Server() as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            async with connect(url, link_shape=LinkShape(3e6, 3e6)) as client:
                session = await client.deploy(model, (x,))
                slow = session.cost.client.scaled(30, "slow-client")  # the server pays
                session = await client.deploy(model, (x,), client_costs=slow)
                reasons = []
                for _ in range(4):
                    assert_exact(await session.infer(x), ref)
                    assert not session.last_report.fell_back
                    reasons.append(session.last_report.plan_reason)
                    await asyncio.to_thread(session.book.settle, 30)
                return reasons, session

    reasons, session = _run(main())
    # (the deploy's own choice asked for the first ranking)
    assert all("re-scored at the estimate" in r for r in reasons[1:]), reasons
    # the plan run is the best at the estimate among the book's plans around it
    book, choice = session.book, session.choice
    objective, ranked = book.rescore("lopinfer", session.link_estimate(),
                                     book.nearest(choice.grid_bandwidth))
    assert choice.scored.latency_s <= ranked[0].latency_s * 1.011
