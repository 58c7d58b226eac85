#!/usr/bin/env python3
"""The shared server under attack, measured (not run in CI; loopback only).

    scripts/trust_bench.py rss            # server peak RSS per attack class
    scripts/trust_bench.py load           # 8 honest clients' p95, alone and beside a hog

``rss`` starts a fresh ``lopinfer serve`` per attack class and reads its VmRSS/VmHWM
from /proc before, at the peak and after the attackers leave. Run it with another
checkout's ``src`` first on ``PYTHONPATH`` to measure that version ("before").

``load`` starts one server; 8 honest clients run a small CNN offloaded (8 x 20
inferences, all checked exact), first alone, then while a hostile client runs the
heaviest graph the server's limits admit in a loop. It prints the honest p95s and
their ratio (target: within 2x).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the adversary and the reference nets

import torch  # noqa: E402

from adversary import RawPeer, lz4_bomb_frame  # noqa: E402

MiB = 1 << 20


def _serve(*flags: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "lopinfer.runtime.serve", "--listen",
                             "tcp://127.0.0.1:0", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("LOPINFER_LISTENING"):
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


def _mem(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) // 1024  # MiB
    return out


async def _lz4_bomb(url: str) -> None:
    peers = [RawPeer(url) for _ in range(4)]
    for p in peers:
        await p.__aenter__()
        try:
            await p.send_bytes(lz4_bomb_frame(1 << 30, payload_len=(1 << 30) // 255 + 64))
        except OSError:
            pass
    await asyncio.sleep(3)
    for p in peers:
        p.close()


async def _held_frames(url: str) -> None:
    import struct

    from lopinfer.transports import Frame, encode_frame

    head = bytearray(encode_frame(Frame(tensor=torch.zeros(1, dtype=torch.uint8))))
    # a 512 MiB uint8 frame: patch the shape, raw and payload lengths, send 64 MiB of it
    n = 512 * MiB
    struct.pack_into("<Q", head, 12, n)
    struct.pack_into("<Q", head, 20 + 52, n)
    struct.pack_into("<Q", head, 20 + 68, n)
    peers = [RawPeer(url) for _ in range(3)]
    for p in peers:
        await p.__aenter__()
        try:
            await p.send_bytes(bytes(head[:-1]) + bytes(64 * MiB))
        except OSError:
            pass
    await asyncio.sleep(12)  # past the hello timeout
    for p in peers:
        p.close()


async def _idle_flood(url: str) -> None:
    peers = [RawPeer(url) for _ in range(300)]
    for p in peers:
        try:
            await p.__aenter__()
        except OSError:
            pass
    await asyncio.sleep(3)
    for p in peers:
        p.close()


ATTACKS = {"lz4_bomb_before_hello": _lz4_bomb, "held_512MiB_frames": _held_frames,
           "idle_flood_300": _idle_flood}


def rss() -> None:
    rows = {}
    for name, attack in ATTACKS.items():
        proc, url = _serve()
        time.sleep(1)
        base = _mem(proc.pid)
        peak = dict(base)
        done = False

        async def watch() -> None:
            while not done:
                m = _mem(proc.pid)
                peak["VmRSS"] = max(peak["VmRSS"], m["VmRSS"])
                await asyncio.sleep(0.05)

        async def main() -> None:
            nonlocal done
            w = asyncio.create_task(watch())
            try:
                await attack(url)
            finally:
                done = True
                await w

        asyncio.run(main())
        time.sleep(1)
        after = _mem(proc.pid)
        t0 = time.monotonic()
        proc.terminate()
        try:
            proc.wait(timeout=120)
            stop_s = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            proc.kill()
            stop_s = float("inf")
        proc.stdout.close()
        rows[name] = {"rss_before_mib": base["VmRSS"], "rss_peak_mib": peak["VmRSS"],
                      "rss_after_mib": after["VmRSS"], "sigterm_s": round(stop_s, 2)}
        print(name, rows[name], flush=True)
    print(json.dumps(rows))


async def _honest(url: str, n: int, results: list[float], model, x, ref) -> None:
    import lopinfer
    from lopinfer.scheduler import offload_plan

    async with lopinfer.connect(url, timeout=30) as client:
        graph = lopinfer.capture(model, (x,))
        session = await client.deploy(graph, None, plan=offload_plan(graph, 2))
        for _ in range(n):
            t0 = time.perf_counter()
            out = await session.infer(x)
            results.append(time.perf_counter() - t0)
            if session.last_report.fell_back or not torch.allclose(out, ref, rtol=1e-4,
                                                                     atol=1e-5 * ref.abs().max()):
                raise SystemExit("an honest client got an inexact or local result")


def _hog(url: str, seconds: float, log: str) -> subprocess.Popen:
    code = f"""
import asyncio, time, torch, lopinfer
from torch import nn
from lopinfer.scheduler import offload_plan
# the heaviest graph the limits below admit: 3x3 convs of {os.environ.get('HOG_C', '64')}
# channels at 96x96, each node under max_node_flops
c = {os.environ.get('HOG_C', '64')}
model = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), *[nn.Conv2d(c, c, 3, padding=1)
                      for _ in range(24)]).eval()
x = torch.randn(1, 3, 96, 96)
async def main():
    async with lopinfer.connect({url!r}, timeout=60) as client:
        graph = lopinfer.capture(model, (x,))
        s = await client.deploy(graph, None, plan=offload_plan(graph, 1))
        end, n = time.monotonic() + {seconds}, 0
        while time.monotonic() < end:
            await s.infer(x)
            n += 1
            if not s.last_report.fell_back:
                open({log!r}, "w").write(f"{{n}} {{s.last_report.latency_s}}")
asyncio.run(main())
"""
    return subprocess.Popen([sys.executable, "-c", code])


def load() -> None:
    from helpers import reference
    from nets import REFERENCE_NETS

    proc, url = _serve("--max-node-flops", "2e9", "--max-flops", "1e11")
    try:
        model, x = REFERENCE_NETS["vgg"]()
        ref = reference(model, x)

        async def phase() -> list[float]:
            per: list[list[float]] = [[] for _ in range(8)]
            await asyncio.gather(*(_honest(url, 20, per[i], model, x, ref) for i in range(8)))
            return [v for r in per for v in r[2:]]  # the first two warm up

        solo = asyncio.run(phase())
        log = "/tmp/lopinfer-hog.txt"
        Path(log).unlink(missing_ok=True)
        hog = _hog(url, 300, log)
        while not Path(log).exists():  # until it runs remotely
            time.sleep(0.5)
        before = int(Path(log).read_text().split()[0])
        with_hog = asyncio.run(phase())
        hog_runs, hog_latency = Path(log).read_text().split()
        hog.terminate()
        hog.wait(timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stdout.close()

    def p95(v: list[float]) -> float:
        return statistics.quantiles(v, n=20)[-1]

    out = {"solo_p50_ms": statistics.median(solo) * 1e3, "solo_p95_ms": p95(solo) * 1e3,
           "hog_p50_ms": statistics.median(with_hog) * 1e3, "hog_p95_ms": p95(with_hog) * 1e3,
           "p95_ratio": p95(with_hog) / p95(solo), "inferences": len(solo) + len(with_hog),
           "hog_inferences_meanwhile": int(hog_runs) - before,
           "hog_latency_ms": float(hog_latency) * 1e3}
    print(json.dumps({k: round(v, 3) for k, v in out.items()}))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("rss", "load"))
    rss() if p.parse_args().what == "rss" else load()
