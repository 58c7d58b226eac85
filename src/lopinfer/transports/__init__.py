"""Transports: tensor frames and control messages between device and server.

One interface over several links, picked by URL scheme::

    async with await lopinfer.transports.connect("tcp://server:7700") as conn:
        await conn.send_message(Bye(reason="done"))   # any registered Message
        await conn.send_tensor(Frame(tensor=x, tensor_id=3, dim=2, row_start=0, row_stop=8))
        reply = await conn.recv()                  # a Frame or a control Message

    async def handler(conn): ...                   # one task per accepted connection
    async with await lopinfer.transports.listen("tcp://0.0.0.0:7700", handler) as lst: ...

Schemes: ``tcp://host:port``; ``tls://host:port`` (TCP inside TLS); ``ws://host:port/path`` and ``wss://`` (extra ``ws``);
``shm://name`` (same machine: payloads through shared memory); ``mem://name`` (same
process and event loop).

How it behaves (decisions a user can rely on):

- Framing: a fixed, versioned binary header + raw tensor bytes; control messages are
  msgspec Structs (msgpack), registered in one tagged union (``register_message``).
  Nothing from the wire is ever unpickled or evaluated. Every header field is checked
  before any payload is allocated; bad bytes raise ``ProtocolError`` in ``recv()``,
  the peer is sent ``Error(code="protocol_error")`` and the connection is closed.
- Layouts: dense tensors (contiguous, channels_last, transposed) travel in their own
  memory order and come back with the same strides; other strided tensors are made
  contiguous first. Received tensors are writable and never alias another frame.
- Sending: ``send_tensor``/``send_message`` return once the frame is written or
  queued; they wait only while the send queue is at its high water mark. A tensor
  must not be modified in place until ``drain()`` returns. Order is preserved.
- Compression: LZ4 per frame when expected to finish sooner at
  ``conn.bandwidth_estimate`` (settable: a number or a callable; by default the send
  rate measured when the link pushed back, else the scheme's default, ``inf`` on
  loopback and shm). Random data is never sent compressed. Work on frames of at
  least ``offload_threshold`` bytes runs on worker threads.
- Timeouts: every wait on the peer is bounded (``Options``); a frame that stops
  arriving half-way breaks the connection after ``stall_timeout``.
- Measuring: ``statistics()`` and ``add_observer()`` give per-frame
  ``TransferRecord``s (sizes, local write/arrival times, the sender's clock) for a
  bandwidth estimator.
- Event loop: ``run()`` / ``event_loop_factory()`` use uvloop when it is installed.
"""

from __future__ import annotations

from ._codec import decode_frame, encode_frame
from ._compress import HAVE_LZ4, AdaptiveCompressor
from ._connection import Connection
from ._frame import SUPPORTED_DTYPES, Frame, Limits
from ._listener import Listener, ListenerStatistics
from ._messages import (
    Bye,
    Error,
    Message,
    decode_message,
    encode_message,
    message_types,
    register_message,
)
from ._options import Options
from ._registry import SCHEMES, connect, event_loop_factory, listen, run
from ._shaped import LinkShape
from ._stats import ConnectionStatistics, LinkObserver, TransferRecord
from ._tls import client_context as client_ssl_context
from ._tls import server_context as server_ssl_context

__all__ = [
    "HAVE_LZ4",
    "SCHEMES",
    "SUPPORTED_DTYPES",
    "AdaptiveCompressor",
    "Bye",
    "Connection",
    "ConnectionStatistics",
    "Error",
    "Frame",
    "Limits",
    "LinkObserver",
    "Listener",
    "ListenerStatistics",
    "Message",
    "Options",
    "TransferRecord",
    "LinkShape",
    "connect",
    "decode_frame",
    "decode_message",
    "encode_frame",
    "encode_message",
    "event_loop_factory",
    "listen",
    "message_types",
    "register_message",
    "run",
    "client_ssl_context",
    "server_ssl_context",
]
