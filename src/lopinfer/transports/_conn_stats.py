"""A connection's measurements: counters, per-frame records for observers and
history, and the bandwidth estimate the LZ4 decision reads.

Separate from sending and receiving, which only count and call :meth:`_record`:
what is measured and how it is reported to applications lives here.
"""

from __future__ import annotations

from collections.abc import Callable

from ..log import logger
from ._conn_state import ConnectionState
from ._stats import ConnectionStatistics, LinkObserver, TransferRecord

log = logger("transports")


class LinkMeasurements(ConnectionState):
    """Statistics hooks of :class:`~lopinfer.transports.Connection`."""

    def _record(self, rec: TransferRecord) -> None:
        self._history.append(rec)
        for cb in self._observers:
            try:
                cb(rec)
            except Exception:
                log.exception("link observer %r failed", cb)

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
