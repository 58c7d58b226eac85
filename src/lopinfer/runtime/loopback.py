"""Loopback: a server in a child process on this machine, for tests and demos."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..errors import ConnectError
from .client import Client

__all__ = ["loopback", "start_server_process"]

_names = itertools.count(1)


def _listen_url(transport: str) -> str:
    if transport == "tcp":
        return "tcp://127.0.0.1:0"
    if transport == "ws":
        return "ws://127.0.0.1:0/lopinfer"
    if transport == "shm":
        return f"shm://lopinfer-{os.getpid()}-{next(_names)}"
    raise ConnectError(f"loopback transport must be tcp, ws or shm, not {transport!r}")


async def start_server_process(transport: str = "tcp", *, token_file: str | None = None,
                               timeout: float = 120.0, threads: int = 0,
                               store: str | None = None) -> tuple[Any, str]:
    """Start ``python -m lopinfer.runtime.serve`` and return (process, its URL).
    ``store``: a folder to keep deployments in (``--store``); by default a loopback
    server keeps nothing on disk."""
    args = [sys.executable, "-m", "lopinfer.runtime.serve", "--listen", _listen_url(transport),
            "--grace", "2"]
    args += ["--store", store] if store else ["--store-bytes", "0"]
    if token_file:
        args += ["--token-file", token_file]
    if threads:
        args += ["--threads", str(threads)]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None  # stdout=PIPE
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout)
            if not line:
                raise ConnectError("the loopback server exited before listening")
            text = line.decode(errors="replace").strip()
            if text.startswith("LOPINFER_LISTENING "):
                return proc, text.split(" ", 1)[1]
    except BaseException:
        proc.kill()
        await proc.wait()
        raise


@asynccontextmanager
async def loopback(transport: str = "tcp", *, token: str = "", store: str | None = None,
                   **client_options: Any) -> AsyncIterator[Client]:
    """``async with loopback("tcp") as client``: a server in a child process on
    127.0.0.1 (or shared memory), stopped on exit. ``client.server_process`` is it;
    ``store``: the folder it keeps deployments in (none by default)."""
    token_file = None
    if token:
        import tempfile

        fd, token_file = tempfile.mkstemp(prefix="lopinfer-token-")
        os.write(fd, token.encode())
        os.close(fd)
    proc, url = await start_server_process(transport, token_file=token_file, store=store)
    client = Client(url, token=token, **client_options)
    client.server_process = proc
    try:
        await client.open()
        yield client
    finally:
        await client.aclose()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if token_file:
            os.unlink(token_file)
