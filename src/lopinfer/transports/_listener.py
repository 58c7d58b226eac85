"""A listening endpoint: one handler task per accepted connection, graceful shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from urllib.parse import SplitResult

from ..errors import ProtocolError, TransportError
from ..log import logger
from ._base import Server, Stream
from ._connection import Connection
from ._options import Options

log = logger("transports")

Handler = Callable[[Connection], Awaitable[None]]


@dataclass(frozen=True)
class ListenerStatistics:
    """Counts of a listener's connections."""

    accepted: int
    active: int
    refused: int
    handler_errors: int
    protocol_errors: int


class Listener:
    """Accepts connections on :attr:`url` and runs the handler for each; ``async with``.

    Attributes:
        url: the bound address (a port of 0 or an empty name resolved).
    """

    def __init__(self, handler: Handler, options: Options) -> None:
        self._handler = handler
        self.options = options
        self.url = ""
        self._server: Server | None = None
        self._tasks: dict[asyncio.Task, Connection] = {}
        self._closing = False
        self._accepted = self._refused = self._handler_errors = self._protocol_errors = 0

    async def _start(self, backend: ModuleType, parts: SplitResult) -> None:
        self._server = await backend.start_server(parts, self._on_stream, self.options)
        self.url = self._server.url
        log.info("listening on %s", self.url)

    def _on_stream(self, stream: Stream) -> None:
        if self._closing or len(self._tasks) >= self.options.max_connections:
            self._refused += 1
            log.warning("refusing a connection from %s: %s", stream.remote_address,
                        "shutting down" if self._closing else f"max_connections={self.options.max_connections} reached")  # fmt: skip
            stream.abort()
            return
        self._accepted += 1
        scheme = stream.scheme
        conn = Connection(stream, self.options, f"{scheme}://{stream.remote_address}")
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks[task] = conn
        task.add_done_callback(self._tasks.pop)

    async def _serve(self, conn: Connection) -> None:
        try:
            await self._handler(conn)
        except ProtocolError as exc:
            self._protocol_errors += 1
            log.info("%s: protocol error: %s", conn.url, exc)
        except TransportError as exc:
            log.info("%s: %s: %s", conn.url, type(exc).__name__, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._handler_errors += 1
            log.exception("handler for %s failed", conn.url)
        finally:
            try:
                await conn.aclose()
            except BaseException:  # cancelled by a shutdown, or anything else: close hard
                conn.abort()
                raise

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(
            self._accepted, len(self._tasks), self._refused, self._handler_errors, self._protocol_errors
        )

    @property
    def connections(self) -> list[Connection]:
        """The connections being served now."""
        return list(self._tasks.values())

    async def aclose(self, *, timeout: float | None = None) -> None:
        """Stop accepting, let handlers finish for ``timeout`` s (default
        ``options.shutdown_timeout``), then close their connections and cancel them."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            await self._server.aclose()
        tasks = list(self._tasks)
        if tasks:
            grace = self.options.shutdown_timeout if timeout is None else timeout
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                conn = self._tasks.get(task)
                if conn is not None:
                    conn.abort()
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=self.options.close_timeout)
        log.info("stopped listening on %s", self.url)

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closing else "listening"
        return f"<Listener {self.url} {state} active={len(self._tasks)} accepted={self._accepted}>"
