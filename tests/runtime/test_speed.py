"""Costs that follow the device: a client that becomes slower mid-session gets another
plan within a few inferences, and every result stays exact."""

from __future__ import annotations

import asyncio
import time

from helpers import assert_exact, reference
from lopinfer.runtime import loopback
from lopinfer.scheduler.speed import SpeedTracker
from lopinfer.transports import LinkShape
from nets import REFERENCE_NETS


def test_tracker_moves_on_a_median_not_on_one_inference():
    t = SpeedTracker(window=5, margin=0.3, min_samples=3)
    for ratio in (1.0, 1.1, 9.0):  # one slow outlier among normal runs
        t.observe("client", 1.0, ratio)
    assert t.drifted() is None
    for _ in range(3):
        t.observe("client", 1.0, 2.0)
    assert t.drifted() == {"client": 2.0, "server": 1.0}
    t.replanned({"client": 2.0, "server": 1.0})
    for _ in range(3):
        t.observe("client", 1.0, 2.2)  # within the margin of the new factor
    assert t.drifted() is None


class _Slower:
    """Every kernel of this process (the device's) takes 3 ms more: a device that got
    slower, as deterministic as a sleep (the steady stretch of lopinfer.steady follows
    CPU time, which a loaded test machine makes noisy at this model's 0.1 ms tasks)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.003)


def test_a_device_that_slows_down_gets_another_plan(monkeypatch):
    model, x = REFERENCE_NETS["vgg"]()
    ref = reference(model, x)

    async def main():
        # the server is another process (loopback): only this one, the device, slows
        async with loopback("tcp", link_shape=LinkShape(30e6, 30e6, latency=0.0005)) as client:
            session = await client.deploy(model, (x,))
            for _ in range(3):
                assert_exact(await session.infer(x), ref)
            before = session.plan
            monkeypatch.setattr("lopinfer.runtime.executor.stretched", _Slower)
            monkeypatch.setattr("lopinfer.runtime.peer.stretched", _Slower)
            plans, stalls = [], []
            for _ in range(12):
                t0 = time.perf_counter()
                assert_exact(await session.infer(x), ref)
                stalls.append(time.perf_counter() - t0)
                plans.append(session.plan)
                if session.plan is not None and session.plan.name != before.name:
                    break
                # the re-plan runs in the background; a robot's loop would go on
                # inferring meanwhile, on the old plan (its latency stays its own)
                await session.policy.replanned()
            return before, plans, session.policy.speed

    before, plans, speed = asyncio.run(main())
    assert plans[-1].name != before.name, [p.name for p in plans]
    assert len(plans) <= 8  # within a few inferences (5 for the median, and a re-plan)
    assert plans[-1].uses_server()  # a slower device hands the server more of the work
    assert speed.planned["client"] > 4  # the book was made for the slower device


def test_reported_bounds_never_exceed_the_measured_latency():
    """Even when the profile is far too pessimistic (here: every node 50x slower than it
    is), the plan bound and the limit a report quotes stay at or below its latency."""
    from lopinfer.scheduler.cost import PeerCosts

    model, x = REFERENCE_NETS["vgg"]()
    ref = reference(model, x)

    async def main():
        async with loopback("tcp", link_shape=LinkShape(30e6, 30e6, latency=0.0005)) as client:
            import lopinfer
            from lopinfer.runtime.profiler import profile

            graph = lopinfer.capture(model, (x,))
            slow: PeerCosts = profile(graph).scaled(50.0)
            session = await client.deploy(graph, (x,), client_costs=slow, adapt=False)
            reports = []
            for _ in range(3):
                assert_exact(await session.infer(x), ref)
                reports.append(session.last_report)
            return reports

    for r in asyncio.run(main()):
        assert r.predicted_s is not None and r.plan_bound_s is not None
        assert 0 < r.plan_bound_s <= r.latency_s
        assert r.limit_s is None or r.limit_s <= r.plan_bound_s


def test_a_replan_runs_in_the_background_and_the_old_plan_keeps_serving(monkeypatch):
    """While the book for a peer's new speed is planned, inferences do not wait for it:
    they run the current plan, exact, and the new book is used once it is ready."""
    import threading

    from lopinfer.scheduler import adapt

    model, x = REFERENCE_NETS["vgg"]()
    ref = reference(model, x)
    gate = threading.Event()
    real = adapt.PlanBook.plans_at

    def slow_plans_at(self, index, *, quick=False):  # the re-plan's first point waits
        if quick:
            gate.wait(10)
        return real(self, index, quick=quick)

    async def main():
        async with loopback("tcp", link_shape=LinkShape(30e6, 30e6, latency=0.0005)) as client:
            session = await client.deploy(model, (x,))
            assert_exact(await session.infer(x), ref)
            book = session.policy.book
            monkeypatch.setattr(adapt.PlanBook, "plans_at", slow_plans_at)
            base = session.policy.base_cost
            session.policy._pending_costs = type(base)(
                base.client.scaled(3.0), base.server, base.up, base.down, dict(base.info),
                base.compression)  # as observe() leaves it when the device slowed 3x
            t0 = time.perf_counter()
            for _ in range(3):  # the re-plan is blocked: these run the old book's plan
                assert_exact(await session.infer(x), ref)
            took = time.perf_counter() - t0
            still = session.policy.book is book
            gate.set()
            await session.policy.replanned()
            assert_exact(await session.infer(x), ref)
            return took, still, session.policy.book is not book

    took, still, replaced = asyncio.run(main())
    assert still and replaced
    assert took < 5.0  # not held up by the blocked planner (it waits up to 10 s)
