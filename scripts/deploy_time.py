#!/usr/bin/env python
"""How long a deploy takes: from ``deploy()`` of an already captured graph to the end of
its first remote-capable inference, in loopback (a server in a child process, TCP).

Four cases, each in a fresh server unless said (issue 12's targets in brackets):
  cold         empty cache on both peers: weights upload, both profiles, probe, plan [<= 10 s]
  profiles     profiles cached on both peers, plan books not; the weights uploaded   [<= 3 s]
  restart      as profiles, the server restarted with the deployment in its model
               store (``lopinfer serve --store``): nothing uploaded                  [<= 3 s]
  second       the same model again on the same server: hash-only deploy, stored book [<= 1 s]

    scripts/deploy_time.py                 # vgg19_bn (built here: no torchvision needed)
    scripts/deploy_time.py --model lopinfer:kapao
    scripts/deploy_time.py --repeats 3     # each case's median over 3 runs too
Prints one line per case and run with the split (upload, profiles, probe, first plan,
first inference), then each case's median total.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def vgg19_bn(num_classes: int = 1000) -> nn.Module:
    """torchvision's vgg19_bn layer for layer (configuration "E"), random weights."""
    layers: list[nn.Module] = []
    c = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(True)]
            c = int(v)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
                         nn.Linear(512 * 49, 4096), nn.ReLU(True), nn.Dropout(),
                         nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
                         nn.Linear(4096, num_classes)).eval()


async def one(graph, x, client=None, store: str | None = None) -> dict[str, float]:
    from lopinfer.runtime import loopback

    async def measure(c) -> dict[str, float]:
        t0 = time.perf_counter()
        session = await c.deploy(graph, (x,))
        t1 = time.perf_counter()
        await session.infer(x)
        t2 = time.perf_counter()
        tm = session.policy.timings
        return {"deploy_s": t1 - t0, "first_infer_s": t2 - t1, "total_s": t2 - t0,
                "upload_s": t1 - t0 - sum(tm.values()), **tm,
                "book_hit": float(session.policy.store_hits), "plan": session.plan.name}

    if client is not None:
        return await measure(client)
    async with loopback("tcp", store=store) as c:
        return await measure(c)


def run_cases(graph, x) -> list[tuple[str, dict]]:
    """cold, profiles, restart, second: from a fresh cache (the server child inherits
    it)."""
    from lopinfer.runtime import loopback

    cache = Path(tempfile.mkdtemp(prefix="lopinfer-deploy-"))
    os.environ["LOPINFER_CACHE"] = str(cache)
    try:
        from lopinfer.graph import serialize
        from lopinfer.runtime import profiler

        profiler._MEMO.clear()  # this process's profiles and hashes: cold means cold
        serialize._HASHES.clear()
        store = str(cache / "deployments")
        rows = [("cold", asyncio.run(one(graph, x, store=store)))]  # the server stores it
        os.sync()  # its write reaches the disk before the next case is timed (not counted)
        shutil.rmtree(cache / "plans", ignore_errors=True)
        rows.append(("restart", asyncio.run(one(graph, x, store=store))))
        shutil.rmtree(cache / "plans", ignore_errors=True)

        async def profiles_then_second():
            async with loopback("tcp") as c:
                first = await one(graph, x, c)
                return first, await one(graph, x, c)

        prof, second = asyncio.run(profiles_then_second())
        return rows + [("profiles", prof), ("second", second)]
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg19_bn", help="vgg19_bn, or a MODEL string")
    ap.add_argument("--repeats", type=int, default=1, help="runs of the three cases")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import lopinfer

    if args.model == "vgg19_bn":
        model, x = vgg19_bn(), torch.randn(1, 3, 224, 224)
    else:
        from lopinfer.models import load_model

        loaded = load_model(args.model)
        model, x = loaded.module, loaded.example_input()
    t = time.perf_counter()
    graph = lopinfer.capture(model, (x,))
    print(f"{args.model}: captured in {time.perf_counter() - t:.1f} s (not counted)")
    totals: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, r in run_cases(graph, x):
            totals.setdefault(name, []).append(r["total_s"])
            print(f"{name:<9} total {r['total_s']:6.2f} s = deploy {r['deploy_s']:.2f} s "
                  f"(upload {r['upload_s']:.2f}, profiles {r['profiles_s']:.2f}, probe "
                  f"{r['probe_s']:.2f}, first plan {r['plan_s']:.2f}"
                  f"{', stored book' if r['book_hit'] else ''}) + first inference "
                  f"{r['first_infer_s']:.2f} s [{r['plan']}]", flush=True)
    if args.repeats > 1:
        print("median total: " + ", ".join(f"{k} {statistics.median(v):.2f} s"
                                           for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
