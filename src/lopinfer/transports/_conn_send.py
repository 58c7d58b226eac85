"""A connection's sending half: encoding, the send queue and its flow control.

Frames are encoded (maybe compressed, maybe on a worker thread), written at once when
nothing is ahead of them and the transport takes them, else queued under the high
and low water marks and written in order by one writer task; :meth:`drain` waits
for the queue to empty. Kept apart from receiving: the two share only the stream
and the connection's fate (``_fail``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from ..errors import ConnectionClosedError, InputError, TransportError
from ..steady import CPU, stretched
from ._base import now_ns, wait_future
from ._compress import codec_executor
from ._conn_state import _DEFAULT
from ._conn_stats import LinkMeasurements
from ._frame import FLAG_LZ4, Frame, PreparedTensor, control_header, prepare_tensor, tensor_header
from ._messages import Message, encode_message
from ._stats import TransferRecord

_RATE_MIN_NS = 500_000  # a send that took longer than this was paced by the link


@dataclass(slots=True)
class _Outgoing:
    raw: int
    kind: str
    queued_ns: int
    header: bytes = b""
    payload: Any = None
    compressed: bool = False
    job: asyncio.Future | None = None



class SendSide(LinkMeasurements):
    """The sending half of :class:`~lopinfer.transports.Connection`."""

    async def send_tensor(self, frame: Frame, *, timeout: float | None = _DEFAULT) -> None:
        """Queue ``frame`` for sending (waits while the send queue is at high water).

        Raises:
            InputError: the frame cannot be encoded (dtype, layout, ids, limits).
            ConnectionClosedError: the connection is closed or broken.
            TransportTimeoutError: no queue space within ``timeout`` (default
                ``options.send_timeout``); the frame was not sent.
        """
        self._check_open()
        p = prepare_tensor(frame, self.options.limits)
        comp = self._compressor
        key = (frame.kind, frame.tensor_id)
        compress = (
            comp.mode != "off" and p.nbytes >= comp.min_size and comp.should_try(p.nbytes, key, self.bandwidth_estimate)
        )
        item = _Outgoing(p.nbytes, "tensor", now_ns())
        heavy = compress or p.needs_copy or not frame.tensor.is_cpu
        if heavy and p.nbytes >= self.options.offload_threshold:
            item.job = self._loop.run_in_executor(codec_executor(), self._encode_tensor, p, compress, key)
        else:
            item.header, item.payload, item.compressed = self._encode_tensor(p, compress, key)
        await self._submit(item, timeout)

    async def send_message(self, msg: Message, *, timeout: float | None = _DEFAULT) -> None:
        """Queue a control message (same ordering and flow control as tensors).

        Raises:
            InputError: ``msg`` is not a registered message or is over ``max_message_size``.
            ConnectionClosedError, TransportTimeoutError: as :meth:`send_tensor`.
        """
        self._check_open()
        body = encode_message(msg)
        if len(body) > self.options.max_message_size:
            raise InputError(
                f"{type(msg).__name__} of {len(body)} bytes exceeds max_message_size={self.options.max_message_size}"
            )
        key = ("msg", type(msg))
        compress = self._compressor.should_try(len(body), key, self.bandwidth_estimate)
        item = _Outgoing(len(body), "control", now_ns())
        if compress and len(body) >= self.options.offload_threshold:
            item.job = self._loop.run_in_executor(codec_executor(), self._encode_control, body, compress, key)
        else:
            item.header, item.payload, item.compressed = self._encode_control(body, compress, key)
        await self._submit(item, timeout)

    def _encode_tensor(self, p: PreparedTensor, compress: bool, key: Hashable) -> tuple[bytes, Any, bool]:
        with stretched(CPU):  # a slow device's per-frame CPU cost (lopinfer.steady)
            return self._encode_tensor_now(p, compress, key)

    def _encode_tensor_now(self, p: PreparedTensor, compress: bool, key: Hashable) -> tuple[bytes, Any, bool]:
        payload = p.materialise()
        if compress:
            packed = self._compressor.compress(payload, key)
            if packed is not None:
                return tensor_header(p, flags=FLAG_LZ4, payload_len=len(packed)), memoryview(packed), True
        return tensor_header(p, flags=0, payload_len=p.nbytes), payload, False

    def _encode_control(self, body: bytes, compress: bool, key: Hashable) -> tuple[bytes, Any, bool]:
        with stretched(CPU):
            return self._encode_control_now(body, compress, key)

    def _encode_control_now(self, body: bytes, compress: bool, key: Hashable) -> tuple[bytes, Any, bool]:
        if compress:
            packed = self._compressor.compress(body, key)
            if packed is not None:
                hdr = control_header(flags=FLAG_LZ4, raw_len=len(body), payload_len=len(packed))
                return hdr, memoryview(packed), True
        return control_header(flags=0, raw_len=len(body), payload_len=len(body)), memoryview(body), False

    async def _submit(self, item: _Outgoing, timeout: float | None) -> None:
        opts = self.options
        if self._queued_bytes >= opts.send_high_water or len(self._queue) >= opts.max_send_frames:
            await self._wait_space(opts.send_timeout if timeout is _DEFAULT else timeout)
            self._check_open()
        if not self._queue and not self._writing and item.job is None:
            # fast path: nothing ahead of us and the transport takes it without waiting
            start = now_ns()
            try:
                if self._stream.send_nowait(item.header, item.payload):
                    self._sent(item, start, now_ns())
                    return
            except TransportError as exc:
                self._fail(exc)
                raise
        self._queue.append(item)
        self._queued_bytes += item.raw
        self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None and not self._writing:
            self._writer = self._loop.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        self._writing = True
        try:
            while self._queue and self._error is None:
                item = self._queue[0]
                if item.job is not None:
                    item.header, item.payload, item.compressed = await item.job
                    item.job = None
                start = now_ns()
                await self._stream.send(item.header, item.payload)
                self._queue.popleft()
                self._queued_bytes -= item.raw
                self._sent(item, start, now_ns())
                if self._space_waiters and self._queued_bytes <= self.options.send_low_water:
                    self._wake(self._space_waiters)
        except BaseException as exc:  # noqa: B036 - the writer must fail the connection on anything
            self._fail(exc if isinstance(exc, Exception) else ConnectionClosedError("writer cancelled"))
        finally:
            self._writing = False
            self._writer = None
            self._wake(self._drain_waiters)

    def _sent(self, item: _Outgoing, start: int, end: int) -> None:
        wire = len(item.header) + (len(item.payload) if item.payload is not None else 0)
        self.last_activity = time.monotonic()
        n = self._n
        n[0] += 1
        n[2] += wire
        n[4] += item.raw
        n[6] += item.compressed
        dt = end - start
        if dt >= _RATE_MIN_NS:
            rate = wire * 1e9 / dt
            self._send_rate = rate if self._send_rate is None else self._send_rate + 0.3 * (rate - self._send_rate)
        if self._history.maxlen or self._observers:
            self._record(TransferRecord("send", item.kind, wire, item.raw, item.compressed, item.queued_ns, start, end))
        item.payload = None

    async def _wait_space(self, timeout: float | None) -> None:
        fut = self._loop.create_future()
        self._space_waiters.append(fut)
        try:
            await wait_future(fut, timeout, "waiting for send queue space")
        finally:
            if fut in self._space_waiters:
                self._space_waiters.remove(fut)

    async def drain(self, *, timeout: float | None = _DEFAULT) -> None:
        """Wait until every frame sent so far was handed to the OS (or peer); after it,
        the tensors sent may be modified.

        Raises:
            ConnectionClosedError: the connection broke first.
            TransportTimeoutError: not drained within ``timeout`` (default ``send_timeout``).
        """
        limit = self.options.send_timeout if timeout is _DEFAULT else timeout
        while self._queue or self._writing:
            if self._error is not None:
                raise self._error
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await wait_future(fut, limit, "drain")
        if self._error is not None:
            raise self._error
        await self._stream.flush(limit)
        if self._error is not None:
            raise self._error

    @staticmethod
    def _wake(waiters: list[asyncio.Future]) -> None:
        ws = list(waiters)
        waiters.clear()
        for w in ws:
            if not w.done():
                w.set_result(None)
