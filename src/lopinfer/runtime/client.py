"""The client: the connection to one server, and deploying models on it.

``async with lopinfer.connect(url) as client`` opens a session; ``client.deploy(model,
example_inputs)`` captures the model, uploads it (only when the server does not have
its content hash), sends a plan and returns a :class:`~.session.Session`;
``await session.infer(x)`` runs one inference: the client computes its tasks on its
compute thread while tiles stream both ways, and returns the model's exact output.

Nothing is lost: a server unreachable at deploy gives a local session (warned once);
a link or server lost mid-inference makes the client finish it locally
(``last_report.fell_back``); the next inference reconnects, with backoff.

This module holds the connection: hello, the read loop that routes what the server
sends (tiles and ends of inferences to the runs in flight, replies to
:meth:`Client.request`), reconnecting with backoff. The rest lives in parts named for
their jobs: ``session.py``, ``policy.py``, ``deploy.py``, ``remote.py``, ``report.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import (
    ConnectError,
    DeployError,
    InputError,
    LopInferError,
    PlanError,
    ProtocolError,
    TransportError,
    remote_error,
)
from ..log import logger
from ..progress import Steps
from ..scheduler.cost import PeerCosts
from ..scheduler.energy import DeviceProfile, Objective
from ..scheduler.link import ReceiptLog
from ..scheduler.plan import Plan
from ..transports import Bye, Connection, Error, Frame, Message
from ..transports import connect as transport_connect
from .diagnose import check_url, explain_connect_error, hello_failed, hello_refused
from .peer import DeviceWorker
from .policy import objective_from
from .protocol import Done, FellBack, Hello, InferFailed, Welcome, Working
from .session import Session
from .staleness import ModelWatch

if TYPE_CHECKING:
    from .remote import InFlight

__all__ = ["Client", "Session", "connect"]

log = logger("client")

MAX_REPLIES = 16  # replies not yet taken by a request: the read loop waits beyond this
MAX_FALLBACKS = 16  # fallbacks kept to tell the server when it is back
MAX_BACKOFF_S = 30.0


def connect(url: str, *, token: str = "", timeout: float = 10.0, peer_timeout: float = 30.0,
            strict: bool = False, **options: Any) -> Client:
    """A client for the server at ``url``; use as ``async with connect(url) as client``.

    Args:
        token: sent at hello when the server requires one.
        timeout: connect and request timeout (seconds).
        ca, ssl: for ``tls://`` and ``wss://``: a CA file to trust (e.g. the server's
            self-signed certificate), or a whole ``ssl.SSLContext``.
        peer_timeout: longest wait for the server's next tile during an inference
            before the client finishes it locally.
        strict: raise instead of running locally: at connect (``ConnectError`` with a
            ``reason``, ``AuthError``, ``ProtocolVersionError``, ``MissingDependencyError``),
            at deploy, and when an inference would fall back.
        **options: transport options (see ``lopinfer.transports.Options``).

    Raises:
        InputError: a malformed URL (at once, strict or not).
    """
    return Client(url, token=token, timeout=timeout, peer_timeout=peer_timeout, strict=strict,
                  **options)


class Client:
    """A session with one server (see :func:`connect`)."""

    server_process: Any  # the server's child process, set only by runtime.loopback.loopback()

    def __init__(self, url: str, *, token: str = "", timeout: float = 10.0,
                 peer_timeout: float = 30.0, name: str = "lopinfer-client", strict: bool = False,
                 **options: Any) -> None:
        check_url(url)  # a typo is not a server that is down: refused at once
        self.url, self.token, self.timeout, self.peer_timeout = url, token, timeout, peer_timeout
        ca = options.pop("ca", None)
        if ca is not None and options.get("ssl") is None:  # trust a private CA (tls://, wss://)
            from ..transports import client_ssl_context

            options["ssl"] = client_ssl_context(ca)
        self.strict = strict
        # (monotonic time, LinkProbe) of the last deploy's link probe: a deploy within
        # PROBE_REUSE_S reuses it (the same link, the same stored plan book)
        self.last_probe: tuple[float, Any] | None = None
        self.last_error: Exception | None = None  # why the last connect attempt failed
        self.fallbacks: list[tuple[int, str]] = []  # (inference, why) not yet told the server
        self.name, self.options = name, options
        self.conn: Connection | None = None
        self.welcome: Welcome | None = None
        self.worker = DeviceWorker("lopinfer-client")
        self._reader: asyncio.Task | None = None
        self._replies: asyncio.Queue = asyncio.Queue(MAX_REPLIES)
        self._runs: dict[int, InFlight] = {}
        self._ids = itertools.count(1)
        self._backoff = 0.5
        self._next_try = 0.0
        self._last_heard = 0.0  # time.monotonic() of the last thing the server sent
        self._warned = False
        self.sessions: list[Session] = []
        self.received = ReceiptLog()  # the passive down-link samples

    @property
    def compression(self) -> str:
        """The LZ4 mode of this client's connections (what the cost model assumes)."""
        return str(self.options.get("compression", "auto"))

    # -- connection -----------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and say hello. Raises ConnectError, AuthError, ProtocolError."""
        try:
            conn = await transport_connect(self.url, timeout=self.timeout, **self.options)
        except ConnectError as exc:
            raise explain_connect_error(self.url, exc, self.timeout) from exc
        try:
            await conn.send_message(Hello(token=self.token, client_name=self.name))
            reply = await conn.recv(timeout=self.timeout)
        except (TransportError, ProtocolError) as exc:
            conn.abort()
            raise hello_failed(self.url, exc, self.timeout) from exc
        except BaseException:
            conn.abort()
            raise
        if isinstance(reply, Error):
            await conn.aclose()
            raise hello_refused(self.url, reply.code, reply.message) from None
        if not isinstance(reply, Welcome):
            conn.abort()
            raise ProtocolError(f"expected welcome, got {type(reply).__name__}")
        self.conn, self.welcome = conn, reply
        conn.add_observer(self.received)
        self._replies = asyncio.Queue(MAX_REPLIES)
        self._reader = asyncio.create_task(self._read_loop(conn))
        self._backoff = 0.5

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    async def _read_loop(self, conn: Connection) -> None:
        try:
            async for item in conn:
                self._last_heard = time.monotonic()
                if isinstance(item, Working):
                    continue  # a long request is still being served
                if isinstance(item, Frame):
                    flight = self._runs.get(item.inference_id)
                    if flight is not None:  # else an inference already finished locally
                        flight.deliver(item)
                elif isinstance(item, (Done, InferFailed)):
                    flight = self._runs.get(item.inference_id)
                    if flight is not None:
                        flight.server_message(item)
                else:  # backpressure: a server that floods replies is read no further
                    await self._replies.put(item)
        except (TransportError, ProtocolError) as exc:
            log.info("connection to %s lost: %s", self.url, exc)
        finally:
            self._lost(conn)

    def give_up(self, conn: Connection | None = None) -> None:
        """Drop a connection (default: the current one) to a server that stopped
        answering, and wait out the backoff before trying it again (each try would
        cost a whole timeout)."""
        conn = conn or self.conn
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        if conn is not None:
            self._lost(conn)

    def drop(self) -> None:
        """Drop the current connection now (the next inference reconnects, no backoff)."""
        if self.conn is not None:
            self._lost(self.conn)

    def _lost(self, conn: Connection) -> None:
        if self.conn is not conn:  # dropped already (its reader ending late): a newer
            return  # connection's runs and replies are none of its business
        self.conn = None
        conn.abort()
        for flight in list(self._runs.values()):
            flight.link_lost("the connection to the server was lost")
        while not self._replies.empty():  # unanswered replies are moot now; room for
            self._replies.get_nowait()  # the end marker a waiting request sees
        self._replies.put_nowait(None)

    async def send(self, msg: Message) -> None:
        """Send a control message on the current connection.

        Raises:
            ConnectError: not connected. TransportError: the send failed.
        """
        if self.conn is None:
            raise ConnectError(f"not connected to {self.url}")
        await self.conn.send_message(msg, timeout=self.peer_timeout)

    async def send_frame(self, frame: Frame) -> None:
        """Send a tensor frame on the current connection (raises as :meth:`send`)."""
        if self.conn is None:
            raise ConnectError(f"not connected to {self.url}")
        await self.conn.send_tensor(frame)

    async def request(self, msg: Message, want: type, *, timeout: float | None = None) -> Any:
        """Send ``msg`` and wait for the reply of type ``want``.

        The wait ends when the server is silent for ``timeout`` seconds (default
        ``peer_timeout``): a server doing long honest work says so (``Working``), a
        hung one is given up on, and its connection dropped.

        Raises:
            ConnectError: not connected, the connection was lost, the server was silent,
                or it ended the session (it found a protocol error).
            PlanError, DeployError, UnknownDeploymentError, ProfileError, RemoteError...:
                the server refused the request (the class its ``Error`` code names).
        """
        if self.conn is None:
            raise ConnectError(f"not connected to {self.url}")
        conn = self.conn
        limit = timeout or self.peer_timeout
        await conn.send_message(msg, timeout=limit)
        sent = time.monotonic()
        while True:
            # our own upload still going counts as the exchange being alive
            silent = time.monotonic() - max(sent, self._last_heard, conn.last_activity)
            if silent >= limit:
                self.give_up(conn)  # a server that does not answer is as good as gone
                raise ConnectError(f"no reply to {type(msg).__name__} from {self.url}: the "
                                   f"server was silent for {limit:g} s")
            try:
                reply = await asyncio.wait_for(self._replies.get(), limit - silent)
                break
            except asyncio.TimeoutError:
                continue
        if reply is None:
            raise ConnectError(f"connection to {self.url} lost")
        if isinstance(reply, Error):
            exc = remote_error(reply.code, f"server {self.url}: {reply.message}")
            if type(exc) is ProtocolError:  # the server ends this session after saying so
                self.give_up(conn)
                raise ConnectError(f"server {self.url} ended the session: {reply.message}") \
                    from exc
            raise exc
        if not isinstance(reply, want):
            raise ProtocolError(f"expected {want.__name__}, got {type(reply).__name__}")
        return reply

    async def ensure_connected(self) -> bool:
        """Reconnect if the link is down and the backoff allows; True when connected."""
        if self.connected:
            return True
        if time.monotonic() < self._next_try and not self.strict:
            return False
        try:
            await self.open()
            self.last_error = None
            return True
        except (LopInferError, OSError) as exc:
            self.last_error = exc
            # counted from the failure: an attempt that waited out a timeout must not
            # be followed at once by another one
            self._next_try = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
            log.info("server %s unreachable: %s", self.url, exc)
            if self.strict:
                raise
            return False

    # -- inferences in flight -------------------------------------------------------------
    def track(self, flight: InFlight) -> int:
        """A new inference id; what the server sends for it goes to ``flight`` until
        :meth:`untrack`."""
        iid = next(self._ids)
        self._runs[iid] = flight
        return iid

    def untrack(self, inference_id: int) -> None:
        self._runs.pop(inference_id, None)

    def fell_back(self, inference_id: int, reason: str) -> None:
        """Remember that an inference finished locally, to tell the server when it is back."""
        self.fallbacks.append((inference_id, reason))
        del self.fallbacks[:-MAX_FALLBACKS]

    async def report_fallbacks(self, conn: Connection) -> None:
        """Tell the server (its log and metrics) the inferences that finished locally."""
        while self.fallbacks:
            fid, why = self.fallbacks.pop(0)
            await conn.send_message(FellBack(inference_id=fid, reason=why[:200]))

    # -- deploy ---------------------------------------------------------------------------
    async def deploy(self, model: Any, example_inputs: Any, *,
                     objective: str | Objective = "latency", planner: str = "lopinfer",
                     plan: Plan | None = None, deadline_s: float | None = None,
                     device_profile: str | DeviceProfile | None = None,
                     client_costs: PeerCosts | None = None, adapt: bool = True,
                     grid: list[float] | None = None, progress: bool | None = None,
                     extra_methods: tuple[str, ...] = (), strict: bool | None = None,
                     watch: ModelWatch | None = None) -> Session:
        """Capture ``model``, upload it unless the server has it, measure, plan.

        With ``planner`` (default ``"lopinfer"``; or ``local``, ``offload``,
        ``neurosurgeon``, ``dads``) the client profiles itself, has the server profile
        itself, probes the link, and plans for the measured bandwidth; plans for a grid
        of bandwidths around it are computed in the background, and each inference
        runs the plan for the current estimate (with hysteresis; ``adapt=False`` keeps
        the first). ``plan=`` runs a given plan instead, unchanged.

        Args:
            objective: "latency", "energy", or an :class:`Objective`; with
                ``deadline_s``, energy is minimised among plans meeting the deadline.
            device_profile: the client's power model (a name in ``DEVICE_PROFILES``).
            client_costs: the client's costs, when known (e.g. a throttled device's
                profile scaled); otherwise measured here.
            grid: the bandwidths (bytes/s) to plan for; default from 1/256 to 16 times
                the probe, a factor 2 apart.
            progress: show the deploy's steps (a bar that appears once it has taken 2 s;
                default: when stderr is a terminal, else INFO log records).
            extra_methods: more planners for the plan book (``"lopinfer-energy"``: least
                device energy at no more than offload's latency), for
                :meth:`Session.use_planner`.
            strict: when the model's parameters or buffers change after deploy, raise
                :class:`ModelChangedError` at the next inference instead of redeploying
                (default: the client's ``strict``, else False).
            watch: how to notice such changes and capture the model again (made here
                for an ``nn.Module``; the facade passes its own).

        A server that cannot be reached gives a local session (warned once).

        Raises:
            CaptureError, InputError, UnsupportedModelError: the model cannot be used.
            PlanError: ``plan`` is invalid for the model, or an unknown planner.
        """
        from ..scheduler.registry import methods as planners

        obj = objective_from(objective, deadline_s, device_profile)
        if plan is None and planner not in planners():
            raise PlanError(f"unknown planner {planner!r}; use one of {sorted(planners())}")
        session = await Session.new(self, model, example_inputs, objective=obj,
                                    planner=planner, plan=plan, adapt=adapt,
                                    strict=self.strict if strict is None else strict, watch=watch)
        steps = Steps(f"lopinfer: deploying {session.graph.name}", 2, enabled=progress)
        if await self.ensure_connected():
            # this peer profiles itself while the weights go up (its CPU waits on the link)
            mine = session.policy.profile_client(
                self, bool(progress), _example(session.graph, example_inputs)) \
                if plan is None and client_costs is None else None
            try:
                if plan is None:
                    steps.step(f"uploading to {self.url} (by hash when the server has it), "
                               "profiling both peers, probing the link, planning")
                    await session.upload_and_plan(client_costs=client_costs, grid=grid,
                                                  progress=bool(progress),
                                                  extra_methods=extra_methods, mine=mine)
                else:
                    steps.step(f"uploading to {self.url} (by hash when the server has it)")
                    await session.upload(use=True)
                steps.step("ready")
            except (TransportError, ConnectError) as exc:
                if self.strict:
                    raise
                self._warn(f"server {self.url} lost during deploy ({exc}); running locally")
            except DeployError as exc:  # over a server limit, say: it will not change
                if self.strict:
                    raise
                session.refused = str(exc)
                self._warn(f"{exc}; running locally")
        else:
            self._warn(f"{self.last_error or f'server {self.url} unreachable'}; running "
                       "locally until the server is reachable")
        steps.close()
        self.sessions.append(session)
        return session

    def _warn(self, message: str) -> None:
        if not self._warned:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            self._warned = True
            log.debug(message)  # the warning said it: printed once, not twice
        else:
            log.info(message)

    async def aclose(self) -> None:
        for session in self.sessions:
            session.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.conn is not None:
            try:
                await self.conn.send_message(Bye(reason="client closing"), timeout=1.0)
            except (TransportError, LopInferError):
                pass
            await self.conn.aclose()
            self.conn = None
        self.worker.close()

    async def __aenter__(self) -> Client:
        await self.ensure_connected()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (f"<Client {self.url} connected={self.connected} sessions={len(self.sessions)} "
                f"in_flight={len(self._runs)} replies={self._replies.qsize()}/{MAX_REPLIES}>")


def _example(graph: Any, example_inputs: Any) -> tuple[Any, ...] | None:
    """The example as the graph's inputs, or None when it is not a plain match (a
    pytree the capture flattened: the profile then runs on random input)."""
    from .executor import check_inputs

    xs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    try:
        check_inputs(graph, xs)
    except InputError:
        return None
    return tuple(x.detach() for x in xs)
