"""``lopinfer plan MODEL``: every planner's plan for a model at a bandwidth (or for a
measured server): predicted latency, energy, pipeline bound, and the physical limit."""

from __future__ import annotations

import argparse
from typing import Any

from .common import (
    Usage,
    add_model_args,
    add_token_args,
    load,
    parse_rate,
    print_json,
    table,
    token,
)

__all__ = ["HELP", "add_arguments", "run"]

HELP = "every planner's plan for a model at a bandwidth: latency, energy, bound"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--bandwidth", default=None,
                   help="link rate, e.g. 10MB/s (both directions); or measure it with --server")
    p.add_argument("--server", metavar="URL", default=None,
                   help="plan for this server: the link probed and the server's own profile "
                        "(this machine is the client)")
    add_token_args(p)
    p.add_argument("--rtt", type=float, default=2.0, help="round-trip time in ms (default 2)")
    p.add_argument("--client-speed", type=float, default=None, metavar="X",
                   help="the device is X times slower than this machine (default 18, the "
                        "seed's robot vs server, with this machine profiled as the server; "
                        "with --server: 1, this machine is the client)")
    p.add_argument("--device-profile", default="jetson-xavier-nx",
                   help="power model of the device for the energy column")
    p.add_argument("--objective", choices=("latency", "energy"), default="latency")


def run(args: argparse.Namespace) -> int:
    from ..graph import capture
    from ..runtime.profiler import profile
    from ..scheduler.cost import CostModel, Link
    from ..scheduler.energy import DEVICE_PROFILES, Objective
    from ..scheduler.limit import physical_limit
    from ..scheduler.planners import plan_all

    if (args.bandwidth is None) == (args.server is None):
        raise Usage("give --bandwidth RATE, or --server URL to measure the link")
    if args.device_profile not in DEVICE_PROFILES:
        raise Usage(f"unknown --device-profile {args.device_profile!r}; known: "
                    f"{', '.join(DEVICE_PROFILES)}")
    model, x, name = load(args)
    graph = capture(model, (x,), name=name)
    if args.server is not None:
        from ..runtime.survey import measured_cost_model
        from ..transports import run as run_async

        speed = args.client_speed or 1.0
        mine = profile(graph, (x,), name="client").scaled(speed, "client") if speed != 1 else None
        cm = run_async(measured_cost_model(args.server, graph, token=token(args),
                                           client_costs=mine))
        bw = cm.up.bandwidth
        args.client_speed = speed
        args.bandwidth = f"measured {bw / 1e6:.3g} MB/s"
    else:
        bw = parse_rate(args.bandwidth)
        args.client_speed = 18.0 if args.client_speed is None else args.client_speed
        server = profile(graph, (x,), name="server(here)")
        client = server.scaled(args.client_speed, "client")
        link = Link(bw, args.rtt / 2000)
        cm = CostModel(client, server, link, Link(bw, args.rtt / 2000))
    obj = Objective(args.objective, None, DEVICE_PROFILES[args.device_profile])
    res = plan_all(graph, cm, obj)
    # the best bound over every plan family (and the planners' own plans)
    limit = physical_limit(graph, cm, also=[v.plan for v in res.values()])
    rows: list[dict[str, Any]] = [
        {"planner": k, "plan": v.plan.name, "latency_ms": 1e3 * v.latency_s,
         "energy_mj": 1e3 * v.energy_j, "bound_ms": 1e3 * v.bound_s,
         "bytes_up": v.prediction.bytes_up, "bytes_down": v.prediction.bytes_down,
         "x_limit": v.latency_s / limit.seconds if limit.seconds else None}
        for k, v in res.items()
    ]
    if args.json:
        print_json({"model": name, "bandwidth": bw, "server": args.server,
                    "client_speed": args.client_speed, "objective": args.objective,
                    "limit_ms": 1e3 * limit.seconds, "limit_plan": limit.best.plan,
                    "plans": rows, "lopinfer_plan": res["lopinfer"].plan.to_dict()})
        return 0
    table(["planner", "plan", "latency ms", "energy mJ", "bound ms", "up KB", "down KB"],
          [(r["planner"], r["plan"], f"{r['latency_ms']:.2f}", f"{r['energy_mj']:.1f}",
            f"{r['bound_ms']:.2f}", f"{r['bytes_up'] / 1024:.0f}",
            f"{r['bytes_down'] / 1024:.0f}") for r in rows], right=(2, 3, 4, 5, 6),
          title=f"{name}: {args.bandwidth} link, device {args.client_speed:g}x slower")
    print(f"limit {1e3 * limit.seconds:.2f} ms ({limit.best.plan}): the best pipeline "
          f"bound over {limit.plans} plans")
    return 0
