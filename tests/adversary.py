"""A hostile peer for the trust-boundary tests: speaks the wire protocol by hand over a
raw TCP socket, so it can send what no honest client would (tensors before hello,
lying headers, LZ4 bombs, byte-a-second drips, deployments under a stolen hash)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from lopinfer.transports import Frame, Message, decode_frame, encode_frame
from lopinfer.transports._frame import PREAMBLE, parse_preamble

__all__ = ["RawPeer", "lz4_bomb_frame"]


class RawPeer:
    """A protocol peer driven by hand (``async with RawPeer(url) as peer``)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawPeer:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def send_bytes(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, item: Frame | Message) -> None:
        await self.send_bytes(encode_frame(item))

    async def recv(self, timeout: float = 5.0) -> Any:
        """The next frame or message from the server."""
        assert self.reader is not None
        head = await asyncio.wait_for(self.reader.readexactly(PREAMBLE.size), timeout)
        from lopinfer.transports import Limits

        pre = parse_preamble(head, Limits())
        rest = await asyncio.wait_for(
            self.reader.readexactly(pre.meta_len + pre.payload_len), timeout)
        return decode_frame(head + rest)

    async def recv_until(self, kind: type, timeout: float = 5.0) -> Any:
        """Skip keep-alives and other replies until one of type ``kind``."""
        while True:
            item = await self.recv(timeout)
            if isinstance(item, kind):
                return item

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within ``timeout``."""
        assert self.reader is not None
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return True
        except (asyncio.TimeoutError, TimeoutError):
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True

    async def hello(self, token: str = "") -> Any:
        from lopinfer.runtime.protocol import Hello

        await self.send(Hello(token=token, client_name="adversary"))
        return await self.recv()


def lz4_bomb_frame(raw_len: int, payload_len: int = 1024) -> bytes:
    """A tensor frame that claims ``raw_len`` uint8 bytes LZ4-compressed into
    ``payload_len`` bytes (far beyond LZ4's ~255x)."""
    import torch

    honest = encode_frame(Frame(tensor=torch.zeros(1, dtype=torch.uint8)))
    magic, version, ftype, _flags, meta_len, _ = PREAMBLE.unpack_from(honest)
    meta = bytearray(honest[PREAMBLE.size:PREAMBLE.size + meta_len])
    # shape is the first u64 after the fixed tensor meta; raw length after the ids and rows (offset 52)
    from lopinfer.transports._frame import TENSOR_META

    struct.pack_into("<Q", meta, TENSOR_META.size, raw_len)
    struct.pack_into("<Q", meta, 52, raw_len)
    return (PREAMBLE.pack(magic, version, ftype, 1, meta_len, payload_len) + bytes(meta)
            + b"\x00" * payload_len)
