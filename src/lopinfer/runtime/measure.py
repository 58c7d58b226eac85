"""What a deploy measures before planning: both peers' costs and the link.

- client costs: :func:`lopinfer.runtime.profiler.profile` on the client's compute
  thread (cached by graph hash, device and threads);
- server costs: a ``ProfileRequest``; the server profiles on its own device and
  sends the fitted costs back (``Profiled``);
- the link: an active probe (a burst of incompressible frames each way, sized up
  until a burst takes long enough to measure) and the round trip of a tiny request.
  Bandwidth comes only from these transfers, never from OS settings. The link's own
  per-frame cost is the intercept of seconds against bytes over every burst size.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import ProfileError, RemoteError
from ..scheduler.cost import PeerCosts
from ..scheduler.link import transfer_samples
from ..transports import Frame
from .protocol import (
    FRAME_PROBE,
    MAX_PROBE_BYTES,
    ProbeRequest,
    ProbeResult,
    Profiled,
    ProfileRequest,
)

if TYPE_CHECKING:
    from .client import Client

__all__ = ["LinkProbe", "probe_link", "server_costs", "frame_intercept"]


@dataclass
class LinkProbe:
    """What an active probe measured (bytes/s, seconds)."""

    up: float
    down: float
    rtt: float
    up_samples: list[tuple[int, float]]
    down_samples: list[tuple[int, float]]
    seconds: float
    up_frame_s: float = 0.0  # per-frame seconds beyond bytes / bandwidth (fitted)
    down_frame_s: float = 0.0

    def __repr__(self) -> str:
        return (f"<LinkProbe up={self.up / 1e6:.3g} MB/s down={self.down / 1e6:.3g} MB/s "
                f"rtt={self.rtt * 1e3:.2f} ms in {self.seconds:.2f} s>")


async def server_costs(client: Client, *, tiles: tuple[int, ...] = (1, 4),
                       repeats: int = 2) -> PeerCosts:
    """The deployed graph's per-node costs measured on the server's device."""

    reply = await client.request(ProfileRequest(tiles=list(tiles), repeats=repeats), Profiled)
    return _costs(reply)


async def kept_server_costs(client: Client, digest: str) -> PeerCosts | None:
    """The server's costs for the graph of content hash ``digest`` if it kept them from
    an earlier profile (asked before the upload, so planning can overlap it), or None."""
    try:
        return _costs(await client.request(ProfileRequest(content_hash=digest), Profiled))
    except ProfileError:
        return None


def _costs(reply: Profiled) -> PeerCosts:
    from .profiler import costs_from_json

    costs = costs_from_json(reply.costs_json)
    costs.name = costs.name or f"server:{reply.device}"
    return costs


def _rate(samples: list[tuple[int, float]]) -> float | None:
    rates = [n / s for n, s in samples if s > 0]
    return statistics.median(rates) if rates else None


def frame_intercept(samples: list[tuple[int, float]], *, cap: float = 5e-3) -> float:
    """Per-frame seconds: the intercept of a least-squares line of seconds against
    bytes, over at least two frame sizes; 0 when it cannot be told (one size, or a
    negative intercept: the cost is below what these frames can resolve)."""
    pts = [(float(n), s) for n, s in samples if s > 0]
    if len({n for n, _ in pts}) < 2:
        return 0.0
    mx = statistics.fmean(n for n, _ in pts)
    my = statistics.fmean(s for _, s in pts)
    var = sum((n - mx) ** 2 for n, _ in pts)
    slope = sum((n - mx) * (s - my) for n, s in pts) / var
    return min(max(my - slope * mx, 0.0), cap)


async def probe_link(client: Client, *, frames: int = 3, start_bytes: int = 32 << 10,
                     min_seconds: float = 0.05, max_seconds: float = 2.0) -> LinkProbe:
    """Measure the link: round trip of an empty probe, then bursts of ``frames``
    frames each way, growing 8x until a frame takes ``min_seconds`` (or the size
    limit, or ``max_seconds`` spent)."""
    conn = client.conn
    if conn is None:
        raise RemoteError("not connected")
    records: list = []
    conn.add_observer(records.append)
    t_start = time.perf_counter()
    try:
        rtts = []
        for _ in range(3):
            t0 = time.perf_counter()
            await client.request(ProbeRequest(up_frames=0, down_frames=0, down_bytes=0),
                                  ProbeResult)
            rtts.append(time.perf_counter() - t0)
        size = start_bytes
        every_up: list[tuple[int, float]] = []
        every_down: list[tuple[int, float]] = []
        while True:
            records.clear()
            noise = torch.randint(0, 256, (size,), dtype=torch.uint8)  # LZ4 cannot shrink it
            for i in range(frames):
                await conn.send_tensor(Frame(tensor=noise, kind=FRAME_PROBE, tensor_id=i))
            reply = await client.request(
                ProbeRequest(up_frames=frames, down_frames=frames, down_bytes=size), ProbeResult)
            up_s = [(int(n), float(s)) for n, s in reply.up_samples]
            down_s = transfer_samples(records)
            up, down = _rate(up_s), _rate(down_s)
            every_up += up_s
            every_down += down_s
            slowest = max((s for _, s in up_s + down_s), default=0.0)
            spent = time.perf_counter() - t_start
            if (slowest >= min_seconds or size * 8 > MAX_PROBE_BYTES
                    or spent + slowest * 8 * frames * 2 > max_seconds):
                break
            size *= 8
    finally:
        conn.remove_observer(records.append)
    rtt = statistics.median(rtts)
    if up is None or down is None:
        # too fast to time a frame (a loopback link): call it what the bytes allowed
        fallback = size / max(min(rtts), 1e-6)
        up, down = up or fallback, down or fallback
    return LinkProbe(up, down, rtt, up_s, down_s, time.perf_counter() - t_start,
                     frame_intercept(every_up), frame_intercept(every_down))

