"""Verification: run a model plainly and split, and check every split result is exact.

:func:`verify` is what ``lopinfer verify`` runs. Each check is one way of running the
captured graph (today ``tiled:T``, the row-streaming executor with T tiles per local
node; later issues add ``plan:<kind>`` checks in loopback) compared with the unsplit
model by :func:`lopinfer.testing.compare` (DESIGN.md invariant 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from .errors import InputError, LopInferError
from .log import logger
from .testing import Check, compare

__all__ = ["verify", "Runner", "tiled_runners", "report_json"]

log = logger("verify")

# a named way of running a captured graph: (name, run(graph, inputs) -> outputs)
Runner = tuple[str, Callable[[Any, tuple[torch.Tensor, ...]], Any]]


def tiled_runners(tiles: Iterable[int]) -> list[Runner]:
    """One ``tiled:T`` runner per tile count (the executor on the whole graph)."""
    from .runtime import TiledExecutor

    def make(t: int) -> Callable[[Any, tuple[torch.Tensor, ...]], Any]:
        return lambda graph, inputs: TiledExecutor(graph, tiles=t)(*inputs)

    return [(f"tiled:{t}", make(t)) for t in tiles]


def _as_inputs(example: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example, torch.Tensor):
        return (example,)
    if isinstance(example, (tuple, list)) and example and all(
        isinstance(x, torch.Tensor) for x in example
    ):
        return tuple(example)
    raise InputError(f"example must be a tensor or a tuple of tensors, got {type(example).__name__}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def verify(
    model: torch.nn.Module,
    example: Any,
    tiles: Sequence[int] = (1, 4, 7),
    *,
    name: str | None = None,
    graph: Any = None,
    tiled_dim: int | None = None,
    runners: Sequence[Runner] = (),
) -> dict[str, Any]:
    """Check that every split way of running ``model`` gives the unsplit result.

    The reference is ``model(*example)`` under ``torch.no_grad``. The model is captured
    (unless ``graph`` is given) and run by one ``tiled:T`` check per tile count, then by
    each extra runner.

    Args:
        model: an ``nn.Module`` in eval mode.
        example: a tensor or a tuple of tensors.
        tiles: tile counts for the ``tiled:T`` checks.
        name: the model's name in the report (default: its class name).
        graph: an already captured graph of ``model`` on ``example``.
        tiled_dim: re-analyse locality with this tiled dim (see ``analyse``).
        runners: extra ``(name, run(graph, inputs))`` checks.

    Returns:
        ``{"model", "checks": [{"name", "max_abs_err", "rel_err", "exact", "detail"}],
        "exact", "internal_errors", "local_flops_share", "nodes", "local_nodes"}``. A check
        whose run raises is recorded as not exact, with the error in ``detail``; if the
        error is not a :class:`~lopinfer.errors.LopInferError` (a bug) its name is also
        listed in ``internal_errors``.

    Raises:
        CaptureError, UnsupportedModelError: the model cannot be captured.
        InputError: the model fails on ``example`` when run plainly.
    """
    from .graph import analyse, capture
    from .graph.flops import local_flops_share

    inputs = _as_inputs(example)
    name = name or type(model).__name__
    try:
        with torch.no_grad():
            ref = model(*inputs)
    except Exception as exc:
        shapes = ", ".join(f"{str(x.dtype).removeprefix('torch.')}{list(x.shape)}" for x in inputs)
        raise InputError(f"{name} fails on input {shapes}: {_first_line(exc)}") from exc
    if graph is None:
        graph = capture(model, inputs, name=name)
    if tiled_dim is not None:
        analyse(graph, tiled_dim=tiled_dim)

    checks: list[Check] = []
    internal: list[str] = []  # checks that crashed on a bug, not on a refused input
    for check_name, run in [*tiled_runners(tiles), *runners]:
        try:
            out = run(graph, inputs)
        except LopInferError as exc:
            check = Check(check_name, math.inf, math.inf, False, _first_line(exc))
        except Exception as exc:  # a bug in a split run: report it as a failed check
            log.warning("%s failed: %s", check_name, _first_line(exc), exc_info=True)
            check = Check(check_name, math.inf, math.inf, False, _first_line(exc))
            internal.append(check_name)
        else:
            check = compare(check_name, out, ref)
        log.info("%s: exact=%s max_abs_err=%.3g", check.name, check.exact, check.max_abs_err)
        checks.append(check)

    return {
        "model": name,
        "input_shapes": [list(x.shape) for x in inputs],
        "dtype": str(inputs[0].dtype).removeprefix("torch."),
        "checks": [c.to_dict() for c in checks],
        "exact": all(c.exact for c in checks),
        "internal_errors": internal,
        "local_flops_share": local_flops_share(graph),
        "nodes": len(graph.nodes),
        "local_nodes": sum(1 for n in graph.nodes if n.local),
    }


def report_json(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with non-finite floats as ``None``, so it is standard JSON."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(report)


class LoopbackChecks:
    """``plan:<kind>`` runners for :func:`verify`: every plan kind (local, offload,
    tiled offload, single cut, intra-layer split) run through a loopback server in a
    child process, over ``transport``. Use as a context manager."""

    KINDS = ("local", "offload", "offload-tiled", "cut", "split")

    def __init__(self, transport: str = "tcp", tiles: int = 4) -> None:
        self.transport, self.tiles = transport, tiles
        self._loop: Any = None
        self._thread: Any = None
        self._cm: Any = None
        self._client: Any = None
        self._session: Any = None
        self._graph: Any = None

    def __enter__(self) -> LoopbackChecks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any, timeout: float = 600) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _start(self) -> None:
        import asyncio
        import threading

        from .runtime import loopback

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="lopinfer-verify")
        self._thread.start()
        self._cm = loopback(self.transport, peer_timeout=120)
        self._client = self._call(self._cm.__aenter__())

    def _plan(self, graph: Any, kind: str) -> Any:
        from .scheduler import cut_plan, local_plan, local_segments, offload_plan, split_plan

        if kind == "local":
            return local_plan(graph, self.tiles)
        if kind == "offload":
            return offload_plan(graph, 1)
        if kind == "offload-tiled":
            return offload_plan(graph, self.tiles)
        if kind == "cut":
            return cut_plan(graph, len(graph) // 3, self.tiles)
        seg = max(local_segments(graph), key=lambda s: s[1] - s[0])
        return split_plan(graph, 0.5, seg[0], seg[1], self.tiles, halo="send")

    def run(self, kind: str, graph: Any, inputs: tuple[torch.Tensor, ...]) -> Any:
        if self._client is None:
            self._start()
        if self._graph is not graph:
            self._session = self._call(self._client.deploy(graph, None))
            self._graph = graph

        async def once() -> Any:
            await self._session.use_plan(self._plan(graph, kind))
            out = await self._session.infer(*inputs)
            report = self._session.last_report
            if report.fell_back:
                raise LopInferError(f"plan:{kind} fell back to local: {report.reason}")
            return out

        return self._call(once())

    def runners(self) -> list[Runner]:
        # mypy cannot type a lambda with a default (capture) parameter
        return [(f"plan:{k}", lambda g, x, k=k: self.run(k, g, x))  # type: ignore[misc]
                for k in self.KINDS]

    def close(self) -> None:
        if self._cm is not None:
            try:
                self._call(self._cm.__aexit__(None, None, None), timeout=60)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)
                self._loop.close()
            self._cm = None
