#!/usr/bin/env python
"""Cost of tiling: the row-streaming executor against the plain ``model(x)``, one thread.

For each model (torchvision, random weights), on one CPU thread:

- time of ``TiledExecutor(graph, tiles=T)(x)`` relative to ``model(x)`` under
  ``torch.no_grad``, for each T, as the ratio of medians over ``--repeats`` rounds in
  which the variants run interleaved (so a noisy neighbour hits all of them alike);
- the executor's overhead per node-task, from ``TiledExecutor.profile()``:
  (total executor time - time inside kernels) / tasks. The "outside kernels" time is
  split further into the readers (narrow/cat of input rows: the cat copies halo rows,
  real work) and the loop itself (pure Python);
- the same on a tiny input (``--tiny-size``, default 32), where kernels cost next to
  nothing and the per-task overhead shows as such.

Targets (issue "Core engine"): <= 1.10x at 4 tiles, <= 1.25x at 16 tiles, < 15 us per
node-task.

Needs torchvision (``pip install 'lopinfer[vision]'``). Example::

    OMP_NUM_THREADS=1 python scripts/bench_tiling.py                  # table
    OMP_NUM_THREADS=1 python scripts/bench_tiling.py --json > b.json  # machine-readable
    OMP_NUM_THREADS=1 python scripts/bench_tiling.py --models resnet50 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads OpenMP

import torch  # noqa: E402

from lopinfer import TiledExecutor, capture  # noqa: E402
from lopinfer.checks import compare  # noqa: E402
from lopinfer.models import load_model  # noqa: E402

TARGETS = {"ratio@4": 1.10, "ratio@16": 1.25, "overhead_us": 15.0}


def _time(fn: Any, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def _breakdown(ex: TiledExecutor, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per run: kernels, readers, and the rest of the loop (for diagnosis),
    from the executor's own loop and its per-task hook."""
    kern = read = 0.0

    def seen(task: Any, out: Any, r0: float, s: float, e: float) -> None:
        nonlocal kern, read
        read += s - r0
        kern += e - s

    t0 = time.perf_counter()
    for _ in range(repeats):
        ex.run((x,), seen)
    total = time.perf_counter() - t0
    return {"kernels_s": kern / repeats, "readers_s": read / repeats,
            "loop_s": max(0.0, total - kern - read) / repeats}


FOLD_BN = False


def _executor(graph: Any, tiles: int, min_rows: int) -> TiledExecutor:
    if min_rows > 1:  # older executors have no min_rows
        return TiledExecutor(graph, tiles=tiles, min_rows=min_rows)
    return TiledExecutor(graph, tiles=tiles)


def bench_model(name: str, size: int, tiles: list[int], repeats: int, tiny: int,
                tiny_repeats: int, min_rows: int = 1) -> dict[str, Any]:
    torch.manual_seed(0)
    model = load_model(f"torchvision:{name}").module
    x = torch.randn(1, 3, size, size)
    t0 = time.perf_counter()
    graph = capture(model, (x,), name=name, fold_bn=FOLD_BN)
    capture_s = time.perf_counter() - t0
    executors = {t: _executor(graph, t, min_rows) for t in tiles}

    def plain(inp: torch.Tensor) -> Any:
        with torch.no_grad():
            return model(inp)

    ref = plain(x)
    variants: dict[str, Any] = {"plain": plain}
    exact = {}
    for t, ex in executors.items():
        exact[t] = compare(f"tiled:{t}", ex(x), ref).exact  # also the warm-up
        variants[f"tiled:{t}"] = ex
    plain(x)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):  # interleaved rounds
        for k, fn in variants.items():
            times[k].append(_time(fn, x))
    med = {k: statistics.median(v) for k, v in times.items()}

    rows = []
    for t, ex in executors.items():
        prof = ex.profile(x, repeats=max(1, repeats // 2))
        tasks = int(prof["tasks"])
        overhead = (prof["total_s"] - prof["kernels_s"]) / tasks
        br = _breakdown(ex, x, max(1, repeats // 2))
        rows.append({
            "tiles": t,
            "median_s": med[f"tiled:{t}"],
            "ratio": med[f"tiled:{t}"] / med["plain"],
            "tasks": tasks,
            "overhead_us_per_task": overhead * 1e6,
            "readers_us_per_task": br["readers_s"] / tasks * 1e6 if br else None,
            "loop_us_per_task": br["loop_s"] / tasks * 1e6 if br else None,
            "exact": exact[t],
        })

    # tiny input: kernels are nearly free, so the executor's own cost per task shows
    xt = torch.randn(1, 3, tiny, tiny)
    gt = capture(model, (xt,), name=name, fold_bn=FOLD_BN)
    tiny_rows = []
    for t in tiles:
        ex = _executor(gt, t, min_rows)
        ex(xt)
        plain(xt)
        tp, te = [], []
        for _ in range(tiny_repeats):
            tp.append(_time(plain, xt))
            te.append(_time(ex, xt))
        prof = ex.profile(xt, repeats=tiny_repeats)
        tasks = int(prof["tasks"])
        tiny_rows.append({
            "tiles": t,
            "tasks": tasks,
            "plain_s": statistics.median(tp),
            "median_s": statistics.median(te),
            "overhead_us_per_task": (prof["total_s"] - prof["kernels_s"]) / tasks * 1e6,
            "extra_us_per_task": (statistics.median(te) - statistics.median(tp)) / tasks * 1e6,
        })
    n_nodes = len(graph.nodes)
    return {
        "model": name,
        "input": [1, 3, size, size],
        "nodes": n_nodes,
        "capture_s": capture_s,
        "plain_s": med["plain"],
        "tiled": rows,
        "tiny": {"input": [1, 3, tiny, tiny], "tiled": tiny_rows},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vgg19_bn,resnet50,mobilenet_v3_large")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--tiles", default="1,4,8,16")
    p.add_argument("--repeats", type=int, default=11, help="interleaved rounds (median)")
    p.add_argument("--tiny-size", type=int, default=32)
    p.add_argument("--tiny-repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fold-bn", action="store_true",
                   help="fold batch norms into convolutions at capture (fewer tasks per tile)")
    p.add_argument("--min-rows", type=int, default=1,
                   help="thinnest tile (executor's min_rows; default 1: exactly T tiles)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    global FOLD_BN
    FOLD_BN = args.fold_bn
    torch.set_num_threads(args.threads)
    tiles = [int(t) for t in args.tiles.split(",")]
    results = []
    for name in args.models.split(","):
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        results.append(bench_model(name, args.size, tiles, args.repeats, args.tiny_size,
                                   args.tiny_repeats, args.min_rows))
        gc.collect()
    doc = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "repeats": args.repeats,
        "min_rows": args.min_rows,
        "fold_bn": args.fold_bn,
        "targets": TARGETS,
        "results": results,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"torch {doc['torch']}, {doc['threads']} thread(s), median of {args.repeats} "
          f"interleaved rounds, min_rows={args.min_rows}; "
          "overhead = (executor - kernels) / tasks")
    head = (f"{'model':<20} {'tiles':>5} {'tasks':>5} {'plain ms':>9} {'tiled ms':>9} "
            f"{'ratio':>6} {'ovh us':>7} {'read us':>8} {'loop us':>8} exact")
    for r in results:
        print()
        print(head)
        for row in r["tiled"]:
            print(f"{r['model']:<20} {row['tiles']:>5} {row['tasks']:>5} "
                  f"{r['plain_s'] * 1e3:>9.2f} {row['median_s'] * 1e3:>9.2f} "
                  f"{row['ratio']:>5.3f}x {row['overhead_us_per_task']:>7.1f} "
                  f"{_f(row['readers_us_per_task'])} {_f(row['loop_us_per_task'])} "
                  f"{'yes' if row['exact'] else 'NO'}")
        ti = r["tiny"]
        for row in ti["tiled"]:
            print(f"{'  tiny ' + 'x'.join(map(str, ti['input'][2:])):<20} {row['tiles']:>5} "
                  f"{row['tasks']:>5} {row['plain_s'] * 1e3:>9.2f} {row['median_s'] * 1e3:>9.2f} "
                  f"{row['median_s'] / row['plain_s']:>5.2f}x {row['overhead_us_per_task']:>7.1f}"
                  f"  (tiled - plain: {row['extra_us_per_task']:.1f} us/task)")
    return 0


def _f(v: float | None) -> str:
    return f"{v:>8.1f}" if v is not None else f"{'-':>8}"


if __name__ == "__main__":
    sys.exit(main())
