"""The objects layer: tensors and control messages over any Stream, written once.

A :class:`Connection` encodes frames (header + raw tensor bytes), compresses them
when LZ4 pays off, queues them under high/low water marks, writes them in order,
and decodes what arrives, with timeouts on every wait and statistics on all of it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..errors import (
    ConnectionClosedError,
    InputError,
    ProtocolError,
    TransportError,
)
from ..log import logger
from ..steady import CPU, stretched
from ._base import RawFrame, Stream, now_ns, wait_future
from ._buffers import as_uint8_array, build_tensor, frame_from_header
from ._compress import AdaptiveCompressor, codec_executor
from ._frame import (
    FLAG_LZ4,
    TYPE_CONTROL,
    Frame,
    PreparedTensor,
    control_header,
    parse_header,
    prepare_tensor,
    tensor_header,
)
from ._messages import Error, Message, decode_message, encode_message
from ._options import Options
from ._stats import ConnectionStatistics, LinkObserver, TransferRecord

log = logger("transports")

class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


_DEFAULT: Any = _Default()  # "use the connection's option" (None means "no limit")
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


class Connection:
    """One link to a peer: send tensor frames and control messages, receive either.

    Obtained from :func:`~lopinfer.transports.connect` or passed to a listener's
    handler. Use as ``async with``. Sends keep their order; a sent tensor must not be
    modified in place until :meth:`drain` returns (it may still be queued).

    Attributes:
        url: where it points (``scheme://address``).
        options: its :class:`Options`.
    """

    def __init__(self, stream: Stream, options: Options, url: str) -> None:
        self._stream = stream
        self.options = options
        self.url = url
        self._loop = asyncio.get_running_loop()
        self._compressor = AdaptiveCompressor(options.compression, options.compress_min_size)  # type: ignore[arg-type]
        self._bandwidth: float | Callable[[], float] | None = options.bandwidth
        self._queue: deque[_Outgoing] = deque()
        self._queued_bytes = 0
        self._writing = False
        self._writer: asyncio.Task | None = None
        self._space_waiters: list[asyncio.Future] = []
        self._drain_waiters: list[asyncio.Future] = []
        self._error: Exception | None = None
        self._closing = False
        self._closed = False
        self._observers: list[LinkObserver] = []
        self._history: deque[TransferRecord] = deque(maxlen=max(options.history, 0))
        self._send_rate: float | None = None
        self._n = [0] * 8  # frames/wire/raw/compressed x sent/received
        self._protocol_errors = 0
        #: time.monotonic() when a frame was last sent or received
        self.last_activity = time.monotonic()
        if options.pre_auth_limits is not None:
            stream.limits = options.pre_auth_limits

    def authenticated(self) -> None:
        """The peer passed its hello: accept what ``options`` allow from now on."""
        self._stream.limits = self.options.limits

    # -- sending ----------------------------------------------------------------------
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

    def _record(self, rec: TransferRecord) -> None:
        self._history.append(rec)
        for cb in self._observers:
            try:
                cb(rec)
            except Exception:
                log.exception("link observer %r failed", cb)

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

    # -- receiving --------------------------------------------------------------------
    async def recv(self, *, timeout: float | None = _DEFAULT) -> Frame | Message:
        """The next frame (:class:`Frame`) or control message from the peer.

        Args:
            timeout: longest wait for a frame to arrive (default ``options.recv_timeout``).

        Raises:
            ProtocolError: the peer sent something invalid; it was told so with an
                ``Error(code="protocol_error")`` message and the connection is closed.
            ConnectionClosedError: the connection is closed (the peer's or ours).
            TransportTimeoutError: nothing arrived within ``timeout`` (the connection
                stays usable), or a frame stalled mid-way (the connection is closed).
        """
        stream = self._stream
        if timeout is _DEFAULT:
            timeout = self.options.recv_timeout
        while True:
            try:
                raw = stream.receive_nowait()
            except ProtocolError as exc:
                await self._protocol_failure(exc)
                raise
            except TransportError as exc:
                self._fail(exc)
                raise
            if raw is not None:
                break
            if self._closed:
                raise self._error or ConnectionClosedError("connection is closed")
            await stream.wait_readable(timeout)
        try:
            return await self._decode(raw)
        except ProtocolError as exc:
            await self._protocol_failure(exc)
            raise

    async def _decode(self, raw: RawFrame) -> Frame | Message:
        pre, h = parse_header(raw.header, self._stream.limits)
        data = as_uint8_array(raw.payload)
        if data.size != pre.payload_len:
            raise ProtocolError(f"payload has {data.size} bytes, header says {pre.payload_len}")
        compressed = pre.flags & FLAG_LZ4
        if compressed:
            if h.raw_len >= self.options.offload_threshold:
                data = await self._loop.run_in_executor(codec_executor(), self._compressor.decompress, data, h.raw_len)
            else:
                data = self._compressor.decompress(data, h.raw_len)
        self.last_activity = time.monotonic()
        n = self._n
        n[1] += 1
        n[3] += raw.nbytes
        n[5] += h.raw_len
        if compressed:
            n[7] += 1
        if self._history.maxlen or self._observers:
            kind = "control" if pre.type == TYPE_CONTROL else "tensor"
            self._record(TransferRecord(
                "recv", kind, raw.nbytes, h.raw_len, bool(compressed), raw.first_ns, raw.first_ns,
                raw.last_ns, h.send_time_ns))  # fmt: skip
        with stretched(CPU):  # a slow device's per-frame CPU cost (lopinfer.steady)
            if pre.type == TYPE_CONTROL:
                return decode_message(data)
            try:
                return frame_from_header(h, build_tensor(h, data))  # type: ignore[arg-type]
            except ProtocolError:
                raise
            except Exception as exc:  # whatever torch says of a header it cannot build
                raise ProtocolError(f"tensor frame cannot be built: {str(exc)[:200]}") from exc

    async def _protocol_failure(self, exc: ProtocolError) -> None:
        self._protocol_errors += 1
        if self._closed:
            return
        log.info("protocol error from %s: %s; closing the connection", self.url, exc)
        stream = self._stream
        writing = self._writing
        self._fail(ConnectionClosedError(f"connection closed after a protocol error: {exc}"), abort=False)
        if not writing and not stream.closed:
            # tell the peer why, then close (never in the middle of one of our frames)
            body = encode_message(Error(code="protocol_error", message=str(exc)[:1000]))
            hdr = control_header(flags=0, raw_len=len(body), payload_len=len(body))
            try:
                if not stream.send_nowait(hdr, memoryview(body)):
                    await asyncio.wait_for(stream.send(hdr, memoryview(body)), self.options.close_timeout)
                await stream.aclose(error=True)
            except (TransportError, asyncio.TimeoutError, OSError):
                stream.abort()
        else:
            stream.abort()

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Frame | Message:
        """``async for item in conn``: ends when the connection closes cleanly."""
        try:
            return await self.recv()
        except ConnectionClosedError:
            if self._stream.eof_clean or self._closing:
                raise StopAsyncIteration from None
            raise

    # -- lifecycle --------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closing:
            raise ConnectionClosedError("connection is closed")

    def _fail(self, exc: BaseException, *, abort: bool = True) -> None:
        if self._error is None:
            self._error = exc if isinstance(exc, TransportError) else ConnectionClosedError(str(exc))
        self._closed = True
        err = self._error
        for w in self._space_waiters + self._drain_waiters:
            if not w.done():
                w.set_exception(err)
        self._space_waiters.clear()
        self._drain_waiters.clear()
        self._queue.clear()
        self._queued_bytes = 0
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        if abort and not self._stream.closed:
            self._stream.abort()

    async def aclose(self) -> None:
        """Send what is queued (up to ``close_timeout``), then close. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._error is None:
            try:
                await self.drain(timeout=self.options.close_timeout)
                await self._stream.aclose()
            except (TransportError, OSError):
                self._stream.abort()
        else:
            self._stream.abort()
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
        for w in self._space_waiters + self._drain_waiters:
            if not w.done():
                w.set_exception(ConnectionClosedError("connection is closed"))

    def abort(self) -> None:
        """Close at once, dropping whatever is queued."""
        self._closing = True
        self._fail(ConnectionClosedError("connection was aborted"))

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed_cleanly(self) -> bool:
        """True when the peer closed between frames, or we closed it."""
        return self._stream.eof_clean or self._closing

    @property
    def closed(self) -> bool:
        """True once closed by either side or broken."""
        return self._closing or self._closed or self._stream.closed

    @property
    def scheme(self) -> str:
        return self._stream.scheme

    @property
    def local_address(self) -> str:
        return self._stream.local_address

    @property
    def remote_address(self) -> str:
        return self._stream.remote_address

    # -- link measurements ------------------------------------------------------------
    @property
    def bandwidth_estimate(self) -> float | None:
        """Link bandwidth in bytes/s that the LZ4 decision uses.

        A value or a callable set here wins; otherwise the measured send rate; otherwise
        the scheme's default (``inf`` for loopback and shared memory: never compress).
        """
        b = self._bandwidth
        if callable(b):
            try:
                return float(b())
            except Exception:
                log.exception("bandwidth estimator %r failed", b)
                return self._stream.default_bandwidth
        if b is not None:
            return float(b)
        return self._send_rate if self._send_rate is not None else self._stream.default_bandwidth

    @bandwidth_estimate.setter
    def bandwidth_estimate(self, value: float | Callable[[], float] | None) -> None:
        self._bandwidth = value

    def add_observer(self, observer: LinkObserver) -> None:
        """Call ``observer(record)`` with a :class:`TransferRecord` for every frame."""
        self._observers.append(observer)

    def remove_observer(self, observer: LinkObserver) -> None:
        self._observers.remove(observer)

    def statistics(self) -> ConnectionStatistics:
        """Counters, queue depths and recent per-frame transfer records."""
        n = self._n
        rq, rb = self._stream.recv_buffered()
        c = self._compressor
        return ConnectionStatistics(
            frames_sent=n[0], frames_received=n[1], wire_bytes_sent=n[2], wire_bytes_received=n[3],
            raw_bytes_sent=n[4], raw_bytes_received=n[5], compressed_sent=n[6], compressed_received=n[7],
            compression_attempts=c.attempts, compression_ratio=c.ratio,
            send_queue_frames=len(self._queue), send_queue_bytes=self._queued_bytes,
            transport_buffered=self._stream.send_buffered(), recv_queue_frames=rq, recv_queue_bytes=rb,
            send_rate=self._send_rate, bandwidth_estimate=self.bandwidth_estimate,
            protocol_errors=self._protocol_errors, recent=tuple(self._history),
        )  # fmt: skip

    def __repr__(self) -> str:
        state = "broken" if self._error is not None and not self._closing else (
            "closed" if self.closed else "open")  # fmt: skip
        rq, _ = self._stream.recv_buffered()
        return (
            f"<Connection {self.url} {state} local={self.local_address} sent={self._n[0]} "
            f"received={self._n[1]} queued={len(self._queue)}/{self._queued_bytes}B inbox={rq}>"
        )

