"""Profiler: per-node cost on this peer as ``fixed + per_row * rows``.

Runs the graph tiled at two granularities (after warm-up), times every kernel call,
and fits, per node, a line through (rows, seconds) by least squares (both
coefficients kept non-negative). Global nodes get their whole-value time. The wire's
costs on this peer are measured too (:mod:`lopinfer.runtime.wire`): per frame and
per byte of the transport's codec, LZ4 speed, and each value's LZ4 ratio, taken on the
values the warm-up run computes. Profiles are
cached by (graph content hash, device, torch threads) in memory and on disk
(``$LOPINFER_CACHE`` or ``~/.cache/lopinfer/profiles``), so a second deploy does not
re-profile.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..graph import Graph
from ..progress import progress as _progress
from ..scheduler.cost import NodeCost, PeerCosts, costs_from_json, costs_to_json, fit_line
from .executor import TiledExecutor
from .wire import Lz4Meter, measure_codec

__all__ = ["profile", "cached_costs", "fit_line", "costs_to_json",
           "costs_from_json"]  # the last three: re-exported

_MEMO: dict[tuple[str, str, int], PeerCosts] = {}


def _cache_dir() -> Path:
    return Path(os.environ.get("LOPINFER_CACHE", Path.home() / ".cache" / "lopinfer")) / "profiles"


def _file_name(key: tuple[str, str, int]) -> str:
    # v2: profiles carry the wire's costs; v3: and each value's LZ4 speed; v4: the codec
    # per side (half the round trip); older files are not read (measured again)
    return f"{key[0][:32]}-{key[1]}-{key[2]}.v4.json"


def _key(graph: Graph, device: str) -> tuple[str, str, int] | None:
    try:
        from ..graph.serialize import content_hash

        return (content_hash(graph), device, torch.get_num_threads())
    except Exception:  # a graph the deploy format cannot express: no caching
        return None


def _cached(key: tuple[str, str, int]) -> PeerCosts | None:
    if key in _MEMO:
        return _MEMO[key]
    try:
        _MEMO[key] = costs_from_json((_cache_dir() / _file_name(key)).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, or unreadable: profiled again (and rewritten) when asked
    return _MEMO[key]


def cached_costs(digest: str, device: torch.device | str = "cpu") -> PeerCosts | None:
    """The costs :func:`profile` measured and kept for the graph of content hash
    ``digest`` on ``device`` at this process's thread count, or None (never measures:
    a server answers from it before the graph is uploaded)."""
    return _cached((digest, str(torch.device(device)), torch.get_num_threads()))


def profile(graph: Graph, inputs: tuple[torch.Tensor, ...] | None = None, *,
            tiles: tuple[int, ...] = (1, 4), repeats: int = 3, name: str = "",
            cache: bool = True, progress: bool = False,
            device: torch.device | str = "cpu") -> PeerCosts:
    """Measure this peer's per-node costs for ``graph`` (random inputs by default) on
    ``device`` (where the graph's weights already are)."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    device = str(dev)
    key = _key(graph, device) if cache else None
    if key is not None and (known := _cached(key)) is not None:
        return known
    if inputs is None:
        # a uint8 frame of zeros would make every activation compress ~100x (the LZ4
        # ratios are profiled on these values): random pixels instead
        inputs = tuple(torch.randn(m.shape).to(m.dtype) if m.dtype.is_floating_point
                       else torch.randint(0, 256, m.shape, dtype=m.dtype) if m.dtype == torch.uint8
                       else torch.zeros(m.shape, dtype=m.dtype) for m in graph.inputs.values())
    inputs = tuple(x.to(dev) for x in inputs)
    samples: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    lz4 = Lz4Meter()
    for name, x in zip(graph.inputs, inputs):
        lz4.see(name, x)
    bar = _progress(progress, len(tiles) * (repeats + 1), f"profiling {graph.name}")
    for t in tiles:
        ex = TiledExecutor(graph, t)
        for rep in range(repeats + 1):
            def seen(task: Any, out: Any, r0: float, s: float, e: float,
                     rep: int = rep, t: int = t) -> None:
                if rep > 0 and task.kind in ("tile", "whole"):  # rep 0 warms up
                    rows = task.b - task.a if task.kind == "tile" else 1
                    samples[task.value][rows].append(e - s)
                elif rep == 0 and t == tiles[0] and task.kind in ("tile", "whole"):
                    lz4.see(task.value, out)  # its first tile: ratio, speed

            ex.run(inputs, seen, sync=sync)  # a steady device is measured as it runs
            bar()
    nodes = {}
    for node in graph:
        pts = [(rows, statistics.median(v)) for rows, v in samples[node.name].items()]
        nodes[node.name] = fit_line(pts) if node.locality else NodeCost(
            0.0, statistics.median(samples[node.name][1]) if samples[node.name][1] else 0.0)
    frame_cpu, codec_per_byte = measure_codec(dev)
    lz4_c, lz4_d = lz4.per_byte()
    costs = PeerCosts(nodes, _copy_cost(dev), name or f"{device}x{torch.get_num_threads()}",
                      frame_cpu, codec_per_byte, lz4_c, lz4_d, lz4.ratio, lz4.time)
    if key is not None:
        _MEMO[key] = costs
        try:
            d = _cache_dir()
            d.mkdir(parents=True, exist_ok=True)
            # Write then rename: another process (the other peer in loopback) may be
            # reading the same file, and must see all of it or none of it.
            tmp = d / f".{_file_name(key)}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_text(costs_to_json(costs))
            os.replace(tmp, d / _file_name(key))
        except OSError:
            pass  # a read-only home: the in-memory cache still serves this process
    return costs


def _copy_cost(dev: torch.device) -> float:
    a = torch.randn(1 << 20, device=dev)
    b = torch.randn(1 << 20, device=dev)
    torch.cat([a, b])
    s = time.perf_counter()
    for _ in range(5):
        torch.cat([a, b])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - s) / 5 / (8 << 20)
