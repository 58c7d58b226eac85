"""The synchronous three-line API of the seed::

    lop = LOPInfer(ip="192.168.50.1", port=7700)
    lop.start_client(model=model, example=x)
    y = model(x)            # now split with the server, same result

The façade owns an event loop on a background thread; ``model(x)`` hands the call to
it and waits. Without ``example=``, the first ``model(x)`` captures and deploys.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..graph import Graph, capture
from ..progress import announce
from ..scheduler.plan import Plan
from .client import Client, Session
from .diagnose import server_url
from .staleness import ModelWatch

__all__ = ["LOPInfer"]


class LOPInfer:
    """Synchronous client (see module doc).

    Args:
        ip, port: the server; ``transport`` "tcp" (default), "ws" or "shm". ``ip`` may
            also be ``host:port`` or a whole URL (``tcp://host:7711``); ``port``
            defaults to 7700.
        url: a full URL instead (``tcp://host:port``, ``ws://host:port/path``, ...).
        token: sent at hello when the server requires one.
        strict: raise when the server cannot be used (refused, unreachable, DNS, wrong
            token, protocol version, missing extra) instead of warning once and running
            locally.
        **options: passed to :class:`~lopinfer.runtime.client.Client`.

    Raises:
        InputError: a malformed ``ip``, ``port``, ``url`` or ``transport`` (at once).
    """

    def __init__(self, ip: str = "127.0.0.1", port: int | None = None, *,
                 transport: str = "tcp", token: str = "", url: str | None = None,
                 strict: bool = False, tls: bool = False, **options: Any) -> None:
        if url is None:
            if tls:  # TLS over the chosen stream transport
                transport = {"tcp": "tls", "ws": "wss"}.get(transport, transport)
            url = server_url(ip, port, transport)
        self.url = url
        self.client = Client(url, token=token, strict=strict, **options)  # checks the URL
        from ..transports import event_loop_factory

        self._loop = event_loop_factory()()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lopinfer-loop",
                                        daemon=True)
        self._thread.start()
        self.session: Session | None = None
        self.model: nn.Module | None = None

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def start_client(self, model: nn.Module, example: Any = None, *,
                     plan: Plan | Callable[[Graph], Plan] | None = None,
                     objective: str = "latency", **deploy_options: Any) -> LOPInfer:
        """Make ``model(x)`` run split with the server (captured now if ``example``).

        ``plan`` (a Plan, or a function of the captured graph) fixes the plan; without
        it the planner chooses per bandwidth. ``deploy_options`` go to
        :meth:`Client.deploy` (``planner=``, ``deadline_s=``, ``device_profile=``...).
        """
        self.model, self._plan, self._objective = model, plan, objective
        self._options = deploy_options
        if example is not None:
            self._deploy(example)

        def forward(*args: torch.Tensor, **kwargs: Any) -> Any:
            if kwargs:
                raise InputError("an offloaded model takes positional tensors only")
            if self.session is None:  # the first call: say why it takes a while
                announce(f"first call of {type(model).__name__}: capturing it and deploying "
                         f"to {self.url} (profiles, link probe, plan; once per model)")
                self._deploy(args)
            assert self.session is not None  # _deploy opened it (or raised)
            return self._call(self.session.infer(*args))

        model.forward = forward  # type: ignore[method-assign]
        return self

    def _capture(self, example: Any) -> Graph:
        model = self.model
        assert model is not None
        override = model.__dict__.pop("forward", None)  # capture the model's own forward
        try:
            return capture(model, example)
        finally:
            if override is not None:
                model.forward = override  # type: ignore[method-assign]

    def _deploy(self, example: Any) -> None:
        assert self.model is not None
        watch = ModelWatch(self.model, self._capture)  # weights changed later: redeployed
        graph = self._capture(example)
        self.session = self._call(self._open_and_deploy(graph, watch))

    async def _open_and_deploy(self, graph: Any, watch: ModelWatch) -> Session:
        await self.client.ensure_connected()
        plan = self._plan(graph) if callable(self._plan) else self._plan
        return await self.client.deploy(graph, None, plan=plan, objective=self._objective,
                                        watch=watch, **self._options)

    @property
    def last_report(self) -> Any:
        return self.session.last_report if self.session else None

    def close(self) -> None:
        """Restore the model's own forward, close the session and the loop."""
        if self.model is not None:
            self.model.__dict__.pop("forward", None)
        if self._loop.is_running():
            self._call(self.client.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> LOPInfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LOPInfer {self.url} session={self.session!r}>"
