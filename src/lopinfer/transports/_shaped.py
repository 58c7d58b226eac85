"""A user-space shaped link: any stream slowed to a given rate (and latency) per direction.

For benchmarks and tests where kernel shaping (``tc``, namespaces, root) is not
available. The client's side shapes both directions of its own connection:

- up: a frame of ``n`` wire bytes occupies the virtual link for ``n / rate`` after the
  previous one left it; ``send`` returns when it has left (the link pushes back, as a
  socket would), and the frame reaches the peer ``latency`` later;
- down: a received frame enters the virtual link when its first byte really arrived
  (the peer sent it unshaped) and is handed to the reader only when it would have
  finished crossing it, ``latency`` later. Its arrival times are rewritten to the
  virtual ones, so a bandwidth estimator measures the shaped link.

Rates are bytes per second, or a callable of the seconds since the connection opened
(trace replay). A frame crosses at the rate in force when it starts.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InputError, TransportError, TransportTimeoutError
from ._base import RawFrame, Stream

__all__ = ["LinkShape", "ShapedStream"]

Rate = float | Callable[[float], float]


@dataclass(frozen=True)
class LinkShape:
    """Rates (bytes/s, or a callable of elapsed seconds) and one-way latency (s)."""

    up: Rate
    down: Rate | None = None  # None: the same as up
    latency: float = 0.0

    def __post_init__(self) -> None:
        for r in (self.up, self.down):
            if r is not None and not callable(r) and not float(r) > 0:
                raise InputError(f"a shaped link's rate must be > 0 bytes/s, got {r!r}")
        if self.latency < 0:
            raise InputError(f"a shaped link's latency must be >= 0, got {self.latency!r}")

    def rate(self, direction: str, elapsed: float) -> float:
        r = self.up if direction == "up" or self.down is None else self.down
        value = float(r(elapsed)) if callable(r) else float(r)
        return max(value, 1.0)  # a trace may dip to zero: keep the link crawling, not stuck


class ShapedStream(Stream):
    """``inner`` with its sends and receipts paced by a :class:`LinkShape`."""

    def __init__(self, inner: Stream, shape: LinkShape) -> None:
        super().__init__(inner.options)
        self.inner, self.shape = inner, shape
        self.scheme = inner.scheme  # type: ignore[misc]
        self.default_bandwidth = shape.rate("up", 0.0)
        self.local_address, self.remote_address = inner.local_address, inner.remote_address
        self._t0 = time.perf_counter()
        self._up_free = 0.0  # perf_counter seconds when the virtual up link is free
        self._down_free = 0.0
        self._late: deque[tuple[float, bytes, memoryview]] = deque()  # sent, in flight
        self._late_bytes = 0
        self._late_task: asyncio.Task | None = None
        self._late_error: BaseException | None = None
        self._arriving: deque[tuple[float, RawFrame]] = deque()  # received, crossing
        self._arriving_bytes = 0
        self._recv_error: BaseException | None = None

    @property
    def eof_clean(self) -> bool:  # type: ignore[override]
        return self.inner.eof_clean and not self._arriving

    # -- up ---------------------------------------------------------------------------
    async def send(self, header: bytes, payload: memoryview) -> None:
        if self._late_error is not None:
            raise self._late_error
        n = len(header) + len(payload)
        now = time.perf_counter()
        start = max(now, self._up_free)
        end = start + n / self.shape.rate("up", start - self._t0)
        self._up_free = end
        if end > now:
            await asyncio.sleep(end - now)
        if self.shape.latency <= 0 and not self._late:
            await self.inner.send(header, payload)
            return
        self._late.append((end + self.shape.latency, header, payload))
        self._late_bytes += n
        if self._late_task is None:
            self._late_task = asyncio.get_running_loop().create_task(self._deliver_late())

    async def _deliver_late(self) -> None:
        try:
            while self._late:
                due, header, payload = self._late[0]
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.inner.send(header, payload)
                self._late.popleft()
                self._late_bytes -= len(header) + len(payload)
        except BaseException as exc:  # noqa: B036 - reported to the next send
            self._late_error = exc if isinstance(exc, TransportError) else TransportError(
                f"shaped link: {exc!r}")
        finally:
            self._late_task = None

    def send_buffered(self) -> int:
        return self._late_bytes + self.inner.send_buffered()

    async def flush(self, timeout: float | None) -> None:
        if self._late_task is not None:
            await asyncio.wait_for(asyncio.shield(self._late_task), timeout)
        await self.inner.flush(timeout)

    # -- down -------------------------------------------------------------------------
    def _pull(self) -> None:
        """Move frames that really arrived onto the virtual link (bounded)."""
        high = self.options.recv_high_water
        while self._recv_error is None and self._arriving_bytes < high:
            try:
                raw = self.inner.receive_nowait()
            except BaseException as exc:  # noqa: B036 - delivered after the frames before it
                self._recv_error = exc
                return
            if raw is None:
                return
            first = raw.first_ns / 1e9
            start = max(first, self._down_free)
            end = start + raw.nbytes / self.shape.rate("down", start - self._t0)
            self._down_free = end
            raw.first_ns, raw.last_ns = int(start * 1e9), int(end * 1e9)
            self._arriving.append((end + self.shape.latency, raw))
            self._arriving_bytes += raw.nbytes

    def receive_nowait(self) -> RawFrame | None:
        self._pull()
        if self._arriving and self._arriving[0][0] <= time.perf_counter():
            _, raw = self._arriving.popleft()
            self._arriving_bytes -= raw.nbytes
            return raw
        if not self._arriving and self._recv_error is not None:
            raise self._recv_error
        return None

    async def wait_readable(self, timeout: float | None) -> None:
        self._pull()
        if not self._arriving:
            if self._recv_error is not None:
                return
            await self.inner.wait_readable(timeout)
            self._pull()
            if not self._arriving:
                return  # an error to give, or the inner stream woke us for nothing
        delay = self._arriving[0][0] - time.perf_counter()
        if delay <= 0:
            return
        if timeout is not None and delay > timeout:
            await asyncio.sleep(timeout)
            raise TransportTimeoutError(f"waiting for a frame timed out after {timeout:g} s")
        await asyncio.sleep(delay)

    def recv_buffered(self) -> tuple[int, int]:
        frames, nbytes = self.inner.recv_buffered()
        return frames + len(self._arriving), nbytes + self._arriving_bytes

    # -- lifetime ---------------------------------------------------------------------
    async def aclose(self, *, error: bool = False) -> None:
        if self._late_task is not None and not error:
            try:
                await asyncio.wait_for(asyncio.shield(self._late_task), self.options.close_timeout)
            except (asyncio.TimeoutError, TransportError):
                pass
        if self._late_task is not None:
            self._late_task.cancel()
        await self.inner.aclose(error=error)

    def abort(self) -> None:
        if self._late_task is not None:
            self._late_task.cancel()
        self.inner.abort()

    @property
    def closed(self) -> bool:
        return self.inner.closed
