#!/usr/bin/env python
"""Transport benchmark: throughput and per-frame latency on loopback, LZ4 on activations.

For 16 KB, 256 KB and 4 MB tiles, on every transport (receiver in a child process,
except mem://), beside a raw-socket baseline (blocking ``sendall`` / ``recv_into`` into
a reused buffer, no header) measured in the same run:

- throughput: the sender streams N frames, the receiver acknowledges the last one;
- latency: ping-pong of one frame, half the round trip.

Then LZ4 (the adaptive compressor's own calls) on a post-ReLU activation (conv + BN +
ReLU of a smooth image, about half zeros) and on random data, and whether the adaptive
policy would send each compressed.

    OMP_NUM_THREADS=1 python scripts/bench_transport.py [--loop auto] [--json out.json]

Numbers are ratios taken side by side in one run; absolute values on a shared 2-core
machine are noisy (use --repeat to take the best of several runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import time
from typing import Any

import torch

from lopinfer import transports as T
from lopinfer.runtime import protocol as P  # the application's messages

SIZES = {"16KB": 16 << 10, "256KB": 256 << 10, "4MB": 4 << 20}
ECHO = 1


def _warmup_frames(size: int) -> int:
    return max(10, WARMUP_BYTES // size)


def _frames_for(size: int, budget: float) -> int:
    return int(min(20000, max(30, budget / size)))


# -- raw socket baseline -------------------------------------------------------------------
RAW_HDR = struct.Struct("<QQQQ")  # frame size, warm-up frames, frames to stream, ping-pongs
WARMUP_BYTES = 64 << 20  # TCP autotunes its buffers over the first tens of MB: measure after


def _raw_server(q: Any) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    q.put(srv.getsockname()[1])
    while True:
        c, _ = srv.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hdr = c.recv(RAW_HDR.size, socket.MSG_WAITALL)
        if len(hdr) < RAW_HDR.size:
            c.close()
            return  # the benchmark is over
        size, warm, n, pings = RAW_HDR.unpack(hdr)
        buf = memoryview(bytearray(size))
        for _ in range(warm):
            _recv_exact(c, buf)
        c.sendall(b"w")
        for _ in range(n):
            _recv_exact(c, buf)
        c.sendall(b"k")
        for _ in range(pings):
            _recv_exact(c, buf)
            c.sendall(buf)
        c.close()


def _recv_exact(c: socket.socket, buf: memoryview) -> None:
    got = 0
    while got < len(buf):
        k = c.recv_into(buf[got:])
        if not k:
            raise EOFError
        got += k


def bench_raw(port: int, size: int, n: int, pings: int) -> tuple[float, float]:
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    warm = _warmup_frames(size)
    c.sendall(RAW_HDR.pack(size, warm, n, pings))
    data = memoryview(torch.randint(0, 255, (size,), dtype=torch.uint8).numpy())
    buf = memoryview(bytearray(size))
    for _ in range(warm):
        c.sendall(data)
    c.recv(1)
    t0 = time.perf_counter()
    for _ in range(n):
        c.sendall(data)
    c.recv(1)
    thr = n * size / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(pings):
        c.sendall(data)
        got = 0
        while got < size:
            got += c.recv_into(buf[got:])
    lat = (time.perf_counter() - t0) / pings / 2
    c.close()
    return thr, lat


# -- LOPInfer transports -------------------------------------------------------------------
OPTS = {"compression": "off"}  # the raw baseline does not compress either (LZ4: see below)
URLS = {"tcp": "tcp://127.0.0.1:0", "ws": "ws://127.0.0.1:0/bench", "shm": "shm://", "mem": "mem://"}


async def _serve(conn: T.Connection) -> None:
    async for item in conn:
        if isinstance(item, T.Frame):
            if item.flags == ECHO:
                await conn.send_tensor(item)
        elif isinstance(item, P.Hello):
            await conn.send_message(P.Welcome(session_id=0))


def _server_main(url: str, loop: str, q: Any) -> None:
    async def main() -> None:
        async with await T.listen(url, _serve, **OPTS) as lst:
            q.put(lst.url)
            await asyncio.Event().wait()  # until killed

    T.run(main(), loop=loop)


async def bench_ours(url: str, size: int, n: int, pings: int) -> tuple[float, float]:
    x = torch.randint(0, 255, (size,), dtype=torch.uint8)
    async with await T.connect(url, **OPTS) as conn:
        f = T.Frame(tensor=x)
        for _ in range(_warmup_frames(size)):  # warm up: allocator, socket buffers
            await conn.send_tensor(f)
        await conn.send_message(P.Hello())
        await conn.recv()
        t0 = time.perf_counter()
        for _ in range(n):
            await conn.send_tensor(f)
        await conn.send_message(P.Hello())
        await conn.recv()
        thr = n * size / (time.perf_counter() - t0)
        echo = T.Frame(tensor=x, flags=ECHO)
        t0 = time.perf_counter()
        for _ in range(pings):
            await conn.send_tensor(echo)
            await conn.recv()
        lat = (time.perf_counter() - t0) / pings / 2
    return thr, lat


async def run_all(args: argparse.Namespace, schemes: list[str]) -> dict:
    """Start every server once, then measure raw and each transport side by side, in turn."""
    ctx = mp.get_context("spawn")
    procs, where = [], {}
    q = ctx.Queue()
    procs.append(ctx.Process(target=_raw_server, args=(q,), daemon=True))
    procs[-1].start()
    where["raw"] = q.get(timeout=60)
    mem_listener = None
    for scheme in schemes:
        if scheme == "mem":
            mem_listener = await T.listen(URLS["mem"], _serve, **OPTS)
            where["mem"] = mem_listener.url
            continue
        q = ctx.Queue()
        procs.append(ctx.Process(target=_server_main, args=(URLS[scheme], args.loop, q), daemon=True))
        procs[-1].start()
        where[scheme] = q.get(timeout=60)
    thr: dict[str, dict[str, float]] = {}
    lat: dict[str, dict[str, float]] = {}
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        for rep in range(args.repeat):
            rounds.append({})
            for label in args.sizes.split(","):
                size = SIZES[label]
                n = _frames_for(size, args.budget_mb * 1e6)
                pings = max(20, min(args.pings, int(100e6 / size)))
                for scheme in ["raw", *schemes]:
                    if scheme == "raw":
                        t, lt = bench_raw(where["raw"], size, n, pings)
                    else:
                        t, lt = await bench_ours(where[scheme], size, n, pings)
                    rounds[-1].setdefault(scheme, {})[label] = t / 1e6
                    thr.setdefault(scheme, {})[label] = max(thr.get(scheme, {}).get(label, 0.0), t / 1e6)
                    lat.setdefault(scheme, {})[label] = min(lat.get(scheme, {}).get(label, 1e9), lt * 1e6)
                    print(f"[{rep + 1}/{args.repeat}] {scheme:>4} {label:>6}: {t / 1e6:9.1f} MB/s "
                          f"{lt * 1e6:9.1f} us/frame", flush=True)  # fmt: skip
    finally:
        if mem_listener is not None:
            await mem_listener.aclose()
        c = socket.create_connection(("127.0.0.1", where["raw"]))
        c.close()
        for p in procs:
            p.kill()
            p.join(10)
    return {"throughput_MBps": thr, "latency_us": lat, "rounds": rounds}


# -- LZ4 -----------------------------------------------------------------------------------
def activation(seed: int = 0) -> torch.Tensor:
    """A post-ReLU feature map: conv3x3 + batch-norm + ReLU of a smooth 224x224 image."""
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.interpolate(torch.randn(1, 3, 28, 28, generator=g), size=(224, 224), mode="bilinear")
    w = torch.randn(64, 3, 3, 3, generator=g) * 0.3
    with torch.no_grad():
        y = torch.nn.functional.conv2d(img, w, padding=1)
        y = torch.nn.functional.batch_norm(y, None, None, training=True)
        return torch.relu(y)


def bench_lz4(x: torch.Tensor, reps: int = 5) -> dict:
    if not T.HAVE_LZ4:
        return {"error": "lz4 not installed"}
    from lopinfer.transports._compress import decompress_block

    data = memoryview(x.contiguous().view(-1).view(torch.uint8).numpy())
    comp = T.AdaptiveCompressor("always", 0)
    best_c = best_d = float("inf")
    out = None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = comp.compress(data, "k")
        best_c = min(best_c, time.perf_counter() - t0)
    import lz4.block

    packed = lz4.block.compress(data, store_size=False)
    for _ in range(reps):
        t0 = time.perf_counter()
        decompress_block(packed, len(data))
        best_d = min(best_d, time.perf_counter() - t0)
    # would the adaptive policy send it compressed on an 11 MB/s WiFi link?
    auto = T.AdaptiveCompressor("auto")
    sent_compressed = auto.should_try(len(data), "k", 11e6) and auto.compress(data, "k") is not None
    return {
        "bytes": len(data),
        "zero_fraction": float((x == 0).float().mean()),
        "ratio": len(data) / len(packed),
        "compress_MBps": len(data) / best_c / 1e6,
        "decompress_MBps": len(data) / best_d / 1e6,
        "sent_compressed_at_11MBps": bool(sent_compressed and out is not None),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    ap.add_argument("--transports", default="tcp,shm,ws,mem")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--budget-mb", type=float, default=400, help="bytes streamed per throughput run")
    ap.add_argument("--pings", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3, help="take the best of this many rounds")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    schemes = [s for s in args.transports.split(",") if s]
    if "ws" in schemes:
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            print("skipping ws://: aiohttp not installed (pip install 'lopinfer[ws]')")
            schemes.remove("ws")
    res: dict[str, Any] = {"loop": args.loop, "python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        res["load_before"] = os.getloadavg()
    except OSError:
        pass
    res.update(T.run(run_all(args, schemes), loop=args.loop))
    res["lz4"] = {"post_relu": bench_lz4(activation()), "random": bench_lz4(torch.rand(1, 64, 224, 224))}
    thr, lat = res["throughput_MBps"], res["latency_us"]
    rounds = res["rounds"]

    def paired(a: str, b: str, label: str) -> float:
        """Median over rounds of a/b throughput, each pair measured back to back."""
        return statistics.median(r[a][label] / r[b][label] for r in rounds)

    checks = {}
    if "tcp" in thr:
        for label in ("256KB", "4MB"):
            if label in thr["tcp"]:
                checks[f"tcp/raw throughput {label} (>= 0.80)"] = paired("tcp", "raw", label)
        if "16KB" in lat["tcp"]:
            checks["tcp - raw latency 16KB, us (<= 50)"] = lat["tcp"]["16KB"] - lat["raw"]["16KB"]
            per_raw = 1e6 * (16 << 10) / (thr["raw"]["16KB"] * 1e6)
            per_tcp = 1e6 * (16 << 10) / (thr["tcp"]["16KB"] * 1e6)
            checks["tcp - raw streaming time per 16KB frame, us (<= 50)"] = per_tcp - per_raw
    if "shm" in thr and "tcp" in thr and "4MB" in thr["shm"]:
        checks["shm/tcp throughput 4MB (>= 2)"] = paired("shm", "tcp", "4MB")
    lz = res["lz4"]
    if "ratio" in lz["post_relu"]:
        checks["lz4 post-ReLU ratio (>= 2)"] = lz["post_relu"]["ratio"]
        checks["lz4 post-ReLU compress MB/s (>= 500)"] = lz["post_relu"]["compress_MBps"]
        checks["lz4 random sent compressed (never)"] = lz["random"]["sent_compressed_at_11MBps"]
    res["checks"] = checks
    print("\nbest of", args.repeat, "rounds (targets below: median of per-round ratios):")
    for scheme in thr:
        print(f"  {scheme:>4}: " + "  ".join(f"{k} {v:8.1f} MB/s {lat[scheme][k]:8.1f} us" for k, v in thr[scheme].items()))
    print("\nLZ4:", json.dumps(lz, indent=1))
    print("\nTargets:")
    for k, v in checks.items():
        print(f"  {k}: {v:.2f}" if isinstance(v, float) else f"  {k}: {v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
