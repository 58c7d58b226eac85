"""Planners, registered in one place: the command line, the bench, the session and the
docs' test take their lists from here.

    @planner("dads", requires="networkx", baseline=True)
    def plan_dads(graph, cost, objective): ...

A planner is ``fn(graph, cost, objective) -> Scored``; one that ``searches`` also gets
``baselines`` (the other planners' results) and keeps them as candidates, so its
prediction is never worse than theirs. To add one: write the function in
:mod:`lopinfer.scheduler.planners` (or any module imported before planning) with this
decorator.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["PlannerInfo", "planner", "registered", "baselines", "default_methods",
           "methods", "available"]


@dataclass(frozen=True)
class PlannerInfo:
    name: str
    fn: Callable[..., Any]
    requires: str | None  # a module it imports (from an extra), checked before offering it
    baseline: bool  # a classic method: a candidate of every search, a column of the bench
    default: bool  # in the session's plan book unless asked otherwise
    searches: bool  # given the baselines' results as candidates
    summary: str


_REGISTRY: dict[str, PlannerInfo] = {}


def planner(name: str, *, requires: str | None = None, baseline: bool = False,
            default: bool = True, searches: bool = False) -> Callable[[Callable], Callable]:
    """Register ``fn`` as planner ``name`` (a second registration of a name is a bug)."""
    def register(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"planner {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        _REGISTRY[name] = PlannerInfo(name, fn, requires, baseline, default, searches, doc)
        return fn

    return register


def registered() -> dict[str, PlannerInfo]:
    """Every planner, in registration order (baselines first)."""
    from . import planners  # noqa: F401  (registers the built-in ones)

    return dict(_REGISTRY)


def baselines() -> tuple[str, ...]:
    return tuple(n for n, p in registered().items() if p.baseline)


def default_methods() -> tuple[str, ...]:
    return tuple(n for n, p in registered().items() if p.default)


def methods() -> tuple[str, ...]:
    return tuple(registered())


def available(name: str) -> bool:
    """Whether planner ``name`` exists and what it requires is installed."""
    p = registered().get(name)
    return p is not None and (p.requires is None
                              or importlib.util.find_spec(p.requires) is not None)
