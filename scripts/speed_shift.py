#!/usr/bin/env python
"""A device that becomes k times slower mid-session (lopinfer.steady's stretch, this
process only; the loopback server is another process): inference by inference, the plan,
its latency and the speed factor the session measured, every result checked exact.

    PYTHONPATH=src:tests scripts/speed_shift.py --rate 150e6 --size 128 --factor 2
"""

from __future__ import annotations

import argparse
import asyncio

import torch

from lopinfer import steady
from lopinfer.runtime import loopback
from lopinfer.testing import assert_exact, reference
from lopinfer.transports import LinkShape
from nets import REFERENCE_NETS


async def main(rate: float, size: int, factor: float, after: int, runs: int) -> None:
    model, _ = REFERENCE_NETS["vgg"]()
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    ref = reference(model, x)
    async with loopback("tcp", link_shape=LinkShape(rate, rate, latency=0.0005)) as client:
        session = await client.deploy(model, (x,))
        for i in range(after + runs):
            if i == after:
                steady.set_stretch(compute=factor)
                print(f"-- the device is now {factor:g}x slower")
            assert_exact(await session.infer(x), ref)
            r = session.last_report
            print(f"{i:3d} {session.plan.name:45s} {r.latency_s * 1e3:8.2f} ms  "
                  f"speed factors the book was made for: {session.policy.speed.planned}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=150e6, help="link bytes/s, both ways")
    p.add_argument("--size", type=int, default=128, help="input height and width")
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--after", type=int, default=3, help="inferences before the slowdown")
    p.add_argument("--runs", type=int, default=10, help="inferences after it")
    a = p.parse_args()
    torch.set_num_threads(1)
    asyncio.run(main(a.rate, a.size, a.factor, a.after, a.runs))
