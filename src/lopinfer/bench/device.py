"""The device side of ``lopinfer bench``: one process that stands for the robot.

It runs where the lab puts it (in the device namespace and cgroup, or plainly with a
user-space shaped link), connects to the bench's server, and for each model deploys
once (its own profile measured here, the server's there, the link probed) and runs
every method interleaved: per repetition each method infers once, in an order that
rotates, so drift on a shared machine hits every method alike. One JSON record per
inference is appended to the output file.

The link is set through a controller: ``pipe`` asks the orchestrator (which owns the
kernel shaping) by a line on stdout and waits for its answer on stdin; ``userspace``
sets the rate of this process's own :class:`~lopinfer.transports.LinkShape`.

Run as ``python -m lopinfer.bench.device SPEC.json`` (the orchestrator writes SPEC).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..checks import compare
from ..models import load_model
from ..runtime import TiledExecutor
from ..scheduler.builders import local_plan
from ..scheduler.limit import physical_limit
from ..steady import FREEZE, set_stretch
from ..transports import LinkShape
from . import tcpstats
from .transfers import TransferLog, link_spans

__all__ = ["main"]


class PipeControl:
    """Link rates set by the orchestrator (kernel shaping in the edge lab); the device
    slowed by the orchestrator's cgroup (``cfs``) or by stretching its own work
    (``stretch``: :mod:`lopinfer.steady`, nothing to ask)."""

    def __init__(self, device_model: str = "cfs", cpu_stretch: float = 1.0) -> None:
        self.up = self.down = 0.0
        self.device_model, self.cpu_stretch = device_model, max(1.0, cpu_stretch)
        self.k = 1.0

    def set_rate(self, up: float, down: float) -> None:
        self._ask({"op": "rate", "up": up, "down": down})
        self.up, self.down = up, down

    def shape(self) -> LinkShape | None:
        return None

    def throttle(self, on: bool) -> None:
        if self.device_model == "stretch":
            set_stretch(compute=self.k if on else 1.0, cpu=self.cpu_stretch if on else 1.0)
        else:
            self._ask({"op": "throttle", "on": on, "pid": os.getpid()})

    def calibrated(self, m: dict) -> None:
        """Slow the device as calibrated for the model about to run."""
        if self.device_model == "stretch":
            self.k = float(m.get("stretch") or 1.0)
        elif m.get("device_share") is not None:
            self._ask({"op": "share", "share": m["device_share"]})

    @staticmethod
    def _ask(msg: dict) -> None:
        print("@@" + json.dumps(msg), flush=True)
        answer = sys.stdin.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"the orchestrator refused {msg['op']}: {answer!r}")


class ShapeControl:
    """Link rates of this process's own user-space shaped link."""

    def __init__(self) -> None:
        self.up = self.down = 1e9

    def set_rate(self, up: float, down: float) -> None:
        self.up, self.down = up, down

    def shape(self) -> LinkShape:
        return LinkShape(lambda t: self.up, lambda t: self.down, latency=0.0005)

    def throttle(self, on: bool) -> None:
        pass  # no cgroup without the edge lab

    def calibrated(self, m: dict) -> None:
        pass


def control_k_target(control: Any, m: dict) -> bool:
    """Whether the device is stretched and knows the local time it must take."""
    return getattr(control, "device_model", "") == "stretch" and bool(m.get("target_s"))


def _tcp(spec: dict) -> tuple[dict[str, int], dict[str, int]]:
    """TCP counters of the device's namespace and the server's (the edge lab's peers
    each own one; {} for a server sharing this namespace, which would count twice)."""
    pid = spec.get("server_pid")
    return tcpstats.read(), tcpstats.read(pid) if pid else {}


def _say(text: str) -> None:
    print(text, flush=True)


def _record(spec: dict, model: str, method: str, scen: dict, rate: float, rep: int,
            report: Any, exact: bool) -> dict:
    up_bw, down_bw = report.bandwidth_up, report.bandwidth_down
    link_s = ((report.wire_up / up_bw if up_bw else 0.0)
              + (report.wire_down / down_bw if down_bw else 0.0))
    return {
        "model": model, "method": method, "scenario": scen["name"], "rate_Bps": rate, "rep": rep,
        "latency_s": report.latency_s, "bytes_up": report.bytes_up, "bytes_down": report.bytes_down,
        "wire_up": report.wire_up, "wire_down": report.wire_down,
        "energy_j": report.energy_j, "predicted_s": report.predicted_s, "bound_s": report.plan_bound_s,
        "sequential_s": report.client_busy_s + report.server_busy_s + link_s,
        "plan": report.plan, "fell_back": report.fell_back, "exact": exact,
        "plan_reason": report.plan_reason, "bandwidth_up": up_bw, "bandwidth_down": down_bw,
        "client_busy_s": report.client_busy_s, "server_busy_s": report.server_busy_s,
        "timeline": report.timeline if spec.get("timelines", True) else [],
        "dilation": spec["dilation"],
    }


async def run(spec: dict) -> None:
    import lopinfer

    from ..runtime.profiler import profile

    control: PipeControl | ShapeControl = (
        PipeControl(spec.get("device_model", "cfs"), spec.get("cpu_stretch", 1.0))
        if spec["control"] == "pipe" else ShapeControl())
    dil = float(spec["dilation"])
    out = Path(spec["out"])
    methods: list[str] = spec["methods"]
    torch.manual_seed(0)
    for m in spec["models"]:
        loaded = load_model(m["spec"])
        model = loaded.module
        x = loaded.example_input(m.get("input_shape"))  # a real frame or grid if it has one
        with torch.inference_mode():
            ref = model(x)
        _say(f"{loaded.name}: profiling here and on the server, probing, planning")
        t0 = time.perf_counter()
        graph = await asyncio.to_thread(lopinfer.capture, model, (x,))
        control.calibrated(m)
        control.throttle(True)  # the device's costs are measured as the device is
        stretch = isinstance(control, PipeControl) and control_k_target(control, m)
        if isinstance(control, PipeControl) and stretch:
            # a sleeping device's caches go cold (the host runs others meanwhile), so
            # its tasks cost more CPU stretched than when calibrated: measure the local
            # plan as it runs and correct k once (references are then frozen). Before
            # the profile: profiled on k and on references still falling, the device's
            # costs came out 2.07x its measured local time (agrnav, 2026-12-03)
            ex = TiledExecutor(graph, 1)
            for _ in range(FREEZE):
                ex(x)
            t = time.perf_counter()
            ex(x)
            control.k *= m["target_s"] / (time.perf_counter() - t)
            control.throttle(True)
            _say(f"{loaded.name}: stretch corrected to {control.k:.2f}")
            m["stretch"] = control.k
            del ex
        # on the real input: the LZ4 ratios of a camera frame's or a grid's activations;
        # stretched, as many runs as freeze each tile's reference CPU time
        mine = await asyncio.to_thread(profile, graph, (x,), tiles=(1, 4),
                                       repeats=FREEZE if stretch else 1, name="device")
        control.throttle(False)  # planning is deploy-time work, not in any latency
        # weights are installed on a server once, not per inference: upload them over a
        # fast link so that the deploy below sends only the content hash
        control.set_rate(1e9, 1e9)
        async with lopinfer.connect(spec["server"], link_shape=control.shape(), timeout=60) as c:
            await c.deploy(graph, None, plan=local_plan(graph))
        first = spec["scenarios"][0]
        control.set_rate(first["rates"][0] / dil, first["rates"][0] / dil)
        async with lopinfer.connect(spec["server"], link_shape=control.shape(), timeout=60,
                                    peer_timeout=600) as client:
            session = await client.deploy(graph, None, client_costs=mine,
                                          device_profile=spec.get("device_profile"),
                                          extra_methods=tuple(x for x in methods
                                                              if x == "lopinfer-energy"))
            if session.book is None:
                raise RuntimeError(f"deploy of {loaded.name} found no server at {spec['server']}")
            transfers = TransferLog()  # the link rows of the timelines
            assert client.conn is not None
            client.conn.add_observer(transfers)
            _say(f"{loaded.name}: ready in {time.perf_counter() - t0:.0f} s, "
                 f"{session.cost.info['probe']}")
            # the plans measured are the full search's at every rate the scenarios meet,
            # not the quick one a deploy waits for (in a session the background search
            # replaces it within seconds; kapao's took longer than a short cell)
            book = session.book
            # a searching method's plan is re-scored at each estimate inside the choice,
            # before the timed span starts, rather than by a thread beside a timed run
            book.rescoring = session.policy.rescoring = "now"  # (a re-made book too)
            for i in sorted({book.nearest(r / dil) for scen in spec["scenarios"]
                             for r in scen["rates"]}):
                await asyncio.to_thread(book.plans_at, i)
            # the physical limit at each shaped (dilated) rate, from the costs the planners
            # used: deploy-time work, before the device slows down. The planners' plans
            # are among the plans it bounds (DADS's partition is no family of its own)
            assert session.cost is not None  # deployed with a server
            limits = {r: physical_limit(
                graph, session.cost.with_bandwidth(r / dil, r / dil),
                also=[s.plan for s in book.plans_at(book.nearest(r / dil)).values()]).seconds
                for scen in spec["scenarios"] for r in scen["rates"]}
            control.throttle(True)
            _say(f"{loaded.name}: warm-up, one untimed inference per method")
            for method in methods:  # first calls pack weights and build executors
                await session.use_planner(method)
                await session.infer(x)
            for scen in spec["scenarios"]:
                for rep in range(spec["repeats"]):
                    rate = scen["rates"][rep % len(scen["rates"])]
                    if rep == 0 or len(scen["rates"]) > 1:
                        control.set_rate(rate / dil, rate / dil)
                        # every method starts from the same fresh estimate: interleaved
                        # methods would otherwise inherit each other's stale samples
                        await session.remeasure_link()
                    if rep == 0 and scen["kind"] == "fixed":
                        await session.use_planner(methods[0])
                        await session.infer(x)  # untimed: the link's first inference
                    order = methods[rep % len(methods):] + methods[:rep % len(methods)]
                    for method in order:
                        await session.use_planner(method)
                        tcp0 = _tcp(spec)
                        t0_ns = time.perf_counter_ns()
                        y = await session.infer(x)
                        tcp1 = _tcp(spec)
                        # untimed: the server's spans follow the result (remote.py)
                        report = await session.report_complete()
                        report.timeline += link_spans(transfers.since(t0_ns), t0_ns, rate / dil)
                        exact = compare(method, y, ref).exact  # every output, invariant 1
                        rec = _record(spec, loaded.name, method, scen, rate, rep, report, exact)
                        # the limit is at most any plan's bound, and a plan's bound is
                        # capped by what its run measured (Report.plan_bound_s)
                        bound = rec.get("bound_s")
                        rec["limit_s"] = limits[rate] if bound is None else min(limits[rate], bound)
                        rec["device_share"] = m.get("device_share")
                        rec["device_model"] = spec.get("device_model", "userspace")
                        rec["stretch"] = m.get("stretch")
                        # TCP's loss recovery meanwhile: the device's sends, the server's
                        rec["tcp_up"] = tcpstats.delta(tcp0[0], tcp1[0])
                        rec["tcp_down"] = tcpstats.delta(tcp0[1], tcp1[1])
                        with out.open("a") as f:
                            f.write(json.dumps(rec) + "\n")
                        _say(f"{loaded.name} {scen['name']} rep {rep} {method}: "
                             f"{rec['latency_s'] * 1e3:.0f} ms ({rec['plan']})")
        control.throttle(False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    torch.set_num_threads(1)
    asyncio.run(run(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
