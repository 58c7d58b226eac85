"""The server: many sessions on one event loop, compute serialised per device.

Each connection is a session (hello, optional token, deploy, plans, inferences). Graphs
arrive as JSON over an op allow-list plus safetensors weights, are validated, and are
cached by the content hash the server computes itself (a client's claim is only a
lookup key that must match), so a second client with the same model uploads nothing
and no client can change what another one's hash names. Inferences run on the
device's one :class:`DeviceWorker`, a fair queue across sessions by compute time.
A bad frame or message ends that session only; every resource a client can make the
server spend is bounded in bytes or seconds (:class:`~.limits.ServerLimits`).

Here: the :class:`Server` (listeners, the deployment cache, limits, the worker, admission
and each session's hello). A session after its hello is in :mod:`.server_session`, its
deploys in :mod:`.server_deploy`, its inferences in :mod:`.server_infer`.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import (
    AuthError,
    BusyError,
    LopInferError,
    ProtocolError,
    ProtocolVersionError,
    TransportError,
)
from ..graph import Graph
from ..log import logger
from ..transports import Connection, listen
from .accounting import Accounts
from .limits import ServerLimits, check_graph, graph_bytes
from .model_store import ModelStore
from .peer import DeviceWorker
from .protocol import PROTOCOL_VERSION, Hello, Welcome
from .server_deploy import check_devices, to_device
from .server_session import ServerSession

__all__ = ["Server", "ServerStats"]

log = logger("server")


@dataclass
class ServerStats:
    sessions_total: int = 0
    sessions_open: int = 0
    inferences: int = 0
    inferences_failed: int = 0
    deploys: int = 0
    deploys_cached: int = 0
    deploys_stored: int = 0  # of the cached ones: read back from the model store
    bytes_in: int = 0
    bytes_out: int = 0
    latencies: list[float] = field(default_factory=list)


class Server:
    """Serve LOPInfer sessions on one or more listen URLs.

    Args:
        device: "cpu" or "cuda" (tiles are moved to the device as they arrive).
        token: when set, a client's ``Hello`` must carry it.
        name: reported to clients.
        max_deployments: graphs kept in the content-hash cache.
        max_sessions: concurrent sessions (more are refused at hello).
        hello_timeout: seconds a new connection has to say hello.
        models: pre-deployed graphs (``lopinfer serve --models DIR``), by content hash.
        max_model_size: bytes of weights one deployment may upload (overrides ``limits``).
        limits: every other bound (cache and upload bytes, activations, FLOPs, plan
            size, compile time, in-flight inferences, idle and unauthenticated time).
        store: deployments kept on disk (:class:`~.model_store.ModelStore`): each upload
            is written there, and a hash-only deploy the memory cache misses is served
            from it, so a restarted server needs no upload.
    """

    def __init__(self, *, device: str = "cpu", token: str | None = None, name: str = "lopinfer",
                 max_deployments: int = 32, max_sessions: int = 256,
                 hello_timeout: float | None = None, models: dict[str, Graph] | None = None,
                 max_model_size: int | None = None, limits: ServerLimits | None = None,
                 store: ModelStore | None = None) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise LopInferError(f"device {device!r}: no CUDA device is available")
        if token is not None and not token.strip():
            raise LopInferError("the token is empty: give a real one, or none")
        self.token = token
        self.name = name
        limits = limits or ServerLimits()
        if max_model_size is not None or hello_timeout is not None:
            import dataclasses

            limits = dataclasses.replace(
                limits, max_model_bytes=limits.max_model_bytes if max_model_size is None
                else max_model_size,
                hello_timeout=limits.hello_timeout if hello_timeout is None else hello_timeout)
        self.limits = limits
        self.max_deployments = max_deployments
        self.max_sessions = max_sessions
        self.hello_timeout = limits.hello_timeout
        self.max_model_size = limits.max_model_bytes
        self.deployments: OrderedDict[str, Graph] = OrderedDict(models or {})
        self.cache_used = sum(graph_bytes(g) for g in self.deployments.values())
        self.pending_upload = 0  # weight chunk bytes held by every session now
        self.store = store
        self._stored: dict[str, asyncio.Future] = {}  # hash -> its load from the store
        self._saving: set[asyncio.Future] = set()  # writes to the store in flight
        self.compiling = threading.Event()  # set at close: compilations stop at once
        self.worker = DeviceWorker(f"lopinfer-{self.device.type}")
        self.copier = None
        if self.device.type == "cuda":
            from .cuda import DeviceCopier

            # PyTorch runs float32 convolutions in TF32 on CUDA by default (10-bit
            # mantissas): vgg19_bn's offload then differed from the unsplit model past
            # the float32 tolerance (scripts/cuda_check, H200, 2026-12-04)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            self.copier = DeviceCopier(self.device)
        self.stats = ServerStats()
        self.acct = Accounts()  # per-session/deployment counters and the INFO log
        self.listeners: list[Any] = []
        self._ids: set[int] = set()
        self._unauthenticated: OrderedDict[int, Connection] = OrderedDict()
        self._closing = False

    async def start(self, *urls: str, **options: Any) -> list[str]:
        """Listen on every URL; returns the bound URLs (port 0 resolved)."""
        lim = self.limits
        for url in urls:
            opts = dict(options)
            # nothing big before hello: small control frames only, none of them slow
            opts.setdefault("pre_auth_max_size", lim.pre_auth_message_bytes)
            opts.setdefault("min_recv_rate", lim.min_recv_rate)
            opts.setdefault("max_connections", self.max_sessions + lim.max_unauthenticated)
            if url.startswith(("ws://", "wss://")):
                from .metrics import http_routes

                opts.setdefault("http_routes", tuple(http_routes(self)))
            self.listeners.append(await listen(url, self._handle, **opts))
        return [lst.url for lst in self.listeners]

    @property
    def urls(self) -> list[str]:
        return [lst.url for lst in self.listeners]

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop accepting, let in-flight sessions finish for ``timeout``, then close."""
        self._closing = True
        self.compiling.set()
        await asyncio.gather(*(lst.aclose(timeout=timeout) for lst in self.listeners),
                             return_exceptions=True)
        if self._saving:  # a deployment half written is no use to the next server
            await asyncio.wait(self._saving, timeout=timeout)
        self.worker.close()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- one session ----------------------------------------------------------------------
    async def _handle(self, conn: Connection) -> None:
        sid = self._new_id()
        session = ServerSession(self, conn, sid)
        self.stats.sessions_total += 1
        self.stats.sessions_open += 1
        self.acct.opened(sid, conn)
        why = ""
        try:
            if await self._greet(session):
                await session.serve()
        except (TransportError, ProtocolError) as exc:
            why = str(exc)
            if isinstance(exc, ProtocolError) and not conn.closed:  # say why, then close
                await session.refuse(exc)
        finally:
            self.acct.closed(sid, why)
            self.stats.sessions_open -= 1
            self._unauthenticated.pop(sid, None)
            self._ids.discard(sid)
            session.cancel_runs()
            session.release_uploads()

    async def _greet(self, session: ServerSession) -> bool:
        """The session's hello: protocol version, token and room checked, then welcomed.
        False when the session was refused (and told why)."""
        sid, conn = session.id, session.conn
        self.admit_unauthenticated(sid, conn)
        hello = await conn.recv(timeout=self.hello_timeout)
        self._unauthenticated.pop(sid, None)
        if not isinstance(hello, Hello):
            await session.refuse(ProtocolError("the first message must be hello"))
            return False
        if hello.protocol_version != PROTOCOL_VERSION:
            await session.refuse(ProtocolVersionError(
                f"client protocol version {hello.protocol_version}, server {PROTOCOL_VERSION}"))
            return False
        if self.token is not None and not hmac.compare_digest(hello.token.encode(), self.token.encode()):
            self.acct.rejected_token(sid, hello.client_name)
            await session.refuse(AuthError("invalid token"))
            return False
        authenticated = self.stats.sessions_open - len(self._unauthenticated)
        if self._closing or authenticated > self.max_sessions:
            await session.refuse(BusyError("the server is not accepting sessions"))
            return False
        conn.authenticated()  # tensor frames and full-size messages from now on
        self.acct.hello(sid, hello.client_name)
        await conn.send_message(Welcome(session_id=sid, server_name=self.name,
                                        device=str(self.device)))
        return True

    def _new_id(self) -> int:
        """An unguessable session id: frames name their session, ids must not be forged."""
        while True:
            sid = secrets.randbits(63) or 1
            if sid not in self._ids:
                self._ids.add(sid)
                return sid

    def admit_unauthenticated(self, sid: int, conn: Connection) -> None:
        """Count a connection that has not said hello; over the quota, drop the oldest."""
        self._unauthenticated[sid] = conn
        while len(self._unauthenticated) > self.limits.max_unauthenticated:
            old_sid, old = self._unauthenticated.popitem(last=False)
            log.info("session %x: dropped before hello (max_unauthenticated=%d)", old_sid,
                     self.limits.max_unauthenticated)
            old.abort()

    def remember(self, key: str, graph: Graph) -> None:
        """Cache ``graph`` under ``key`` (a hash this server computed), LRU by bytes."""
        if key in self.deployments:
            self.deployments.move_to_end(key)
            return
        size = graph_bytes(graph)
        if size > self.limits.cache_bytes:
            return  # served to this session, never cached
        self.deployments[key] = graph
        self.cache_used += size
        while self.cache_used > self.limits.cache_bytes or len(self.deployments) > self.max_deployments:
            _, old = self.deployments.popitem(last=False)
            self.cache_used -= graph_bytes(old)

    async def from_store(self, key: str) -> Graph | None:
        """The graph the model store keeps under ``key`` (read, checked against this
        server's limits and cached), or None. Concurrent asks for one hash read it once."""
        if self.store is None or key not in self.store:
            return None
        fut = self._stored.get(key)
        if fut is None:
            fut = self._stored[key] = asyncio.ensure_future(self._read_stored(key))
            fut.add_done_callback(lambda _f: self._stored.pop(key, None))
        return await asyncio.shield(fut)

    async def _read_stored(self, key: str) -> Graph | None:
        assert self.store is not None
        t0 = time.perf_counter()
        graph = await asyncio.to_thread(self.store.load, key)
        if graph is None:
            return None
        try:  # this server's limits may be tighter than those it was stored under
            check_devices(graph, self.device)
            check_graph(graph, self.limits)
        except LopInferError as exc:
            log.info("model store: %s... not served: %s", key[:16], exc)
            return None
        if self.device.type != "cpu":
            to_device(graph, self.device)
        self.remember(key, graph)
        self.stats.deploys_stored += 1
        log.info("deployment %s... read from the model store in %.2f s", key[:16],
                 time.perf_counter() - t0)
        return graph

    def keep(self, key: str, graph: Graph, text: str) -> None:
        """Write a graph just uploaded (``key``: the hash this server computed) to the
        model store, in the background."""
        if self.store is None or self._closing:
            return
        params = dict(graph.params)  # as they are now: to_device may replace them
        fut = asyncio.ensure_future(asyncio.to_thread(self.store.save, key, text, params))
        self._saving.add(fut)
        fut.add_done_callback(self._saving.discard)

    def __repr__(self) -> str:
        return (f"<Server {self.name!r} device={self.device} urls={self.urls} "
                f"sessions={self.stats.sessions_open} deployments={len(self.deployments)}>")

