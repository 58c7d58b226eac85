"""Transports: tensor frames and control messages between device and server.

One interface over several links, picked by URL scheme::

    async with await lopinfer.transports.connect("tcp://server:7700") as conn:
        await conn.send_message(Hello(token="..."))
        await conn.send_tensor(Frame(tensor=x, tensor_id=3, dim=2, row_start=0, row_stop=8))
        reply = await conn.recv()

    async def handler(conn): ...
    async with await lopinfer.transports.listen("tcp://0.0.0.0:7700", handler) as lst: ...

Schemes: ``tcp://host:port``, ``ws://host:port/path`` and ``wss://`` (extra ``ws``),
``shm://name`` (same machine, payloads through shared memory), ``mem://name`` (same
process). Frames carry a validated binary header and raw tensor bytes (never pickle),
LZ4-compressed when that is expected to be faster; control messages are msgspec Structs.
"""

from __future__ import annotations

from ._codec import decode_frame, encode_frame
from ._compress import HAVE_LZ4, AdaptiveCompressor
from ._connection import Connection, ConnectionStatistics, LinkObserver, TransferRecord
from ._frame import SUPPORTED_DTYPES, Frame, Limits
from ._listener import Listener, ListenerStatistics
from ._messages import (
    PROTOCOL_VERSION,
    Bye,
    Deploy,
    Deployed,
    Error,
    Hello,
    Message,
    PlanMsg,
    Welcome,
    decode_message,
    encode_message,
    message_types,
    register_message,
)
from ._options import Options
from ._registry import SCHEMES, connect, event_loop_factory, listen, run

__all__ = [
    "HAVE_LZ4",
    "PROTOCOL_VERSION",
    "SCHEMES",
    "SUPPORTED_DTYPES",
    "AdaptiveCompressor",
    "Bye",
    "Connection",
    "ConnectionStatistics",
    "Deploy",
    "Deployed",
    "Error",
    "Frame",
    "Hello",
    "Limits",
    "LinkObserver",
    "Listener",
    "ListenerStatistics",
    "Message",
    "Options",
    "PlanMsg",
    "TransferRecord",
    "Welcome",
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
]
