"""Per-connection settings: timeouts, limits, flow control, compression."""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ._compress import COMPRESSION_MODES
from ._frame import Limits

MiB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class Options:
    """Settings of a connection (and of every connection a listener accepts).

    Timeouts are in seconds; ``None`` waits forever.

    Args:
        connect_timeout: opening a connection (and the shm handshake).
        recv_timeout: default wait in ``recv()`` for the next frame (idle time between
            frames). ``None`` by default: dead peers are still detected by the link
            (TCP keepalive, WebSocket heartbeat, process exit for shm).
        send_timeout: a send blocked by a peer that does not read; the connection
            breaks when it passes.
        stall_timeout: a frame that started to arrive and stops making progress for
            this long breaks the connection (peer vanished mid-frame).
        close_timeout: graceful close (flushing, the peer's close) before aborting.
        max_frame_size, max_message_size, max_ndim: limits on what the peer may send
            (see :class:`Limits`); also checked when sending.
        send_high_water, send_low_water: bytes queued for sending; a sender waits at
            high water until the queue drains to low water.
        max_send_frames: frames queued for sending before senders wait.
        recv_high_water, recv_low_water: bytes received but not yet ``recv()``-ed;
            reading from the peer pauses at high water (the peer then slows down).
        compression: ``"auto"`` (adaptive LZ4), ``"always"``, ``"off"``.
        compress_min_size: frames below this many bytes are never compressed.
        bandwidth: initial link bandwidth estimate in bytes/s for the LZ4 decision
            (``None``: the scheme's default until measured).
        offload_threshold: codec work (LZ4, copies) on frames of at least this many
            bytes runs on worker threads, off the event loop.
        history: how many per-frame transfer records :meth:`statistics` keeps.
        ssl: an ``ssl.SSLContext`` for ``wss://`` (client or server).
        heartbeat: WebSocket ping interval (the peer is dropped when pings go unanswered).
        keepalive: TCP keepalive idle seconds (``None``: off).
        shm_ring_size: bytes of each shared-memory ring (one per direction).
        shm_zero_copy: let received shm tensors view the sender's ring (no copy) while
            less than half of it is held; ``False`` always copies out.
        max_connections: a listener refuses connections beyond this many.
        shutdown_timeout: a closing listener lets handlers finish this long, then cancels.
        http_routes: extra ``(method, path, aiohttp handler)`` served beside a ``ws://``
            listener's endpoint (the server's ``/healthz`` and ``/metrics``).
        link_shape: a :class:`~lopinfer.transports.LinkShape` that paces this
            connection's sends and receipts (a user-space shaped link, for benchmarks
            where kernel shaping is not available; client side only).
        pre_auth_max_size: when set (a server's listener), until
            :meth:`Connection.authenticated` the peer may send only control messages of
            at most this many bytes: no tensor frame is allocated, buffered or
            decompressed for a peer that has not passed its hello.
        min_recv_rate: bytes/s; a frame that arrives slower than this (measured over
            ``stall_timeout`` windows, at most 5 s each) breaks the connection, so a
            byte-a-second drip cannot hold a connection open (``None``: off).
    """

    connect_timeout: float | None = 10.0
    recv_timeout: float | None = None
    send_timeout: float | None = 60.0
    stall_timeout: float | None = 30.0
    close_timeout: float = 5.0
    max_frame_size: int = 1 << 30
    max_message_size: int = 64 * MiB
    max_ndim: int = 8
    send_high_water: int = 16 * MiB
    send_low_water: int = 4 * MiB
    max_send_frames: int = 4096
    recv_high_water: int = 8 * MiB
    recv_low_water: int = 2 * MiB
    compression: str = "auto"
    compress_min_size: int = 8192
    bandwidth: float | None = None
    offload_threshold: int = 1 * MiB
    history: int = 256
    ssl: ssl.SSLContext | None = None
    heartbeat: float | None = 20.0
    keepalive: float | None = 15.0
    shm_ring_size: int = 32 * MiB
    shm_zero_copy: bool = True
    max_connections: int = 256
    shutdown_timeout: float = 5.0
    http_routes: tuple = ()
    link_shape: Any = None
    pre_auth_max_size: int | None = None
    min_recv_rate: float | None = None

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSION_MODES:
            raise InputError(f"compression must be one of {COMPRESSION_MODES}, got {self.compression!r}")
        if not 0 <= self.send_low_water <= self.send_high_water:
            raise InputError("need 0 <= send_low_water <= send_high_water")
        if not 0 <= self.recv_low_water <= self.recv_high_water:
            raise InputError("need 0 <= recv_low_water <= recv_high_water")
        if self.shm_ring_size < 64 * 1024:
            raise InputError("shm_ring_size must be at least 64 KiB")
        for name in ("connect_timeout", "recv_timeout", "send_timeout", "stall_timeout"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise InputError(f"{name} must be > 0 or None, got {v!r}")
        if self.link_shape is not None:
            from ._shaped import LinkShape

            if not isinstance(self.link_shape, LinkShape):
                raise InputError(f"link_shape must be a LinkShape, got {type(self.link_shape).__name__}")
        object.__setattr__(
            self, "limits", Limits(self.max_frame_size, self.max_message_size, self.max_ndim)
        )
        pre = self.pre_auth_max_size
        object.__setattr__(self, "pre_auth_limits", None if pre is None else Limits(
            0, min(pre, self.max_message_size), self.max_ndim, tensors=False))

    limits: Limits = dataclasses.field(init=False, repr=False, compare=False)
    pre_auth_limits: Limits | None = dataclasses.field(init=False, repr=False, compare=False)

    @classmethod
    def from_kwargs(cls, base: Options | None = None, **kwargs: Any) -> Options:
        """Options from keyword arguments (on top of ``base``).

        Raises:
            InputError: an unknown option name (the message lists the valid ones) or a bad value.
        """
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise InputError(f"unknown transport option(s) {unknown}; valid: {sorted(names)}")
        if base is None:
            return cls(**kwargs)
        return dataclasses.replace(base, **kwargs)
