"""A connection's receiving half: the next frame from the stream, decoded and
dispatched as a :class:`~lopinfer.transports.Frame` or a control message.

A header is checked before anything else, a compressed payload decompressed (on a
worker thread when big), and a peer that sent something invalid is told why before
the connection closes. Kept apart from sending: the two share only the stream and
the connection's fate (``_fail``).
"""

from __future__ import annotations

import asyncio
import time

from ..errors import ConnectionClosedError, ProtocolError, TransportError
from ..log import logger
from ..steady import CPU, stretched
from ._base import RawFrame
from ._buffers import as_uint8_array, build_tensor, frame_from_header
from ._compress import codec_executor
from ._conn_state import _DEFAULT
from ._conn_stats import LinkMeasurements
from ._frame import FLAG_LZ4, TYPE_CONTROL, Frame, control_header, parse_header
from ._messages import Error, Message, decode_message, encode_message
from ._stats import TransferRecord

log = logger("transports")


class ReceiveSide(LinkMeasurements):
    """The receiving half of :class:`~lopinfer.transports.Connection`."""

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
