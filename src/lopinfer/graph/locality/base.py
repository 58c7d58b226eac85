"""What every locality rule builds on: :class:`Locality`, its dependencies, and the
small helpers the rule families share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .._kernel import Interval, Kernel, bind_call
from ..ir import Graph, Node, Ref

__all__ = ["Dep", "Locality", "Rule", "TD", "values_read", "primary", "whole_deps", "per_dim",
           "with_pre", "same_rows", "on_device"]

TD = Mapping[str, "int | None"]  # value name -> tracked dim (None: not tracked)


@dataclass(frozen=True, slots=True)
class Dep:
    """A value a local node reads: along ``dim`` in rows, or whole when ``dim`` is None."""

    ref: str
    dim: int | None


class Locality:
    """Output rows [a, b) along ``dim`` need the same rows of each dep (the identity
    family: pointwise, per-channel, shape ops); subclasses override ``need``/``make``."""

    rule = "rows"

    def __init__(self, node: Node, dim: int, deps: list[Dep]) -> None:
        self.node = node
        self.dim = dim
        self.deps = tuple(deps)
        self.size = node.meta.shape[dim]

    def need(self, a: int, b: int) -> list[Interval | None]:
        return [(a, b) if d.dim is not None else None for d in self.deps]

    def make(self, a: int, b: int, slots: Mapping[str, int], static: Mapping[str, Any]) -> Kernel:
        """Kernel ``fn(*xs)`` for output rows [a, b); ``xs[slots[ref]]`` holds exactly
        the rows ``need(a, b)`` of each activation, ``static`` the parameters."""
        return bind_call(self.node, slots, static)

    def halo(self) -> int:
        """Rows two adjacent tiles both read from the first row-read dep (0: none)."""
        if self.size < 2:
            return 0
        m = self.size // 2
        for lo, hi in zip(self.need(0, m), self.need(m, self.size)):
            if lo is not None and hi is not None:
                return max(0, lo[1] - hi[0])
        return 0

    def __repr__(self) -> str:
        deps = ", ".join(f"{d.ref}:{'whole' if d.dim is None else d.dim}" for d in self.deps)
        return f"<{type(self).__name__} {self.rule} dim={self.dim} deps=({deps})>"


# -- helpers the rule families share ----------------------------------------------
def values_read(node: Node) -> list[str]:
    """The values a node reads, each once, in argument order."""
    return list(dict.fromkeys(node.refs()))


def primary(node: Node) -> str:
    """The value of the node's first argument (\"\": not a value)."""
    a = node.args[0]
    return a.name if isinstance(a, Ref) else ""


def whole_deps(node: Node, primary: str, in_dim: int) -> list[Dep]:
    """``primary`` read in rows along ``in_dim``, every other value read whole."""
    return [Dep(r, in_dim if r == primary else None) for r in values_read(node)]


def per_dim(v: Any, n: int) -> list[int]:
    """An int-or-list argument (kernel, stride, padding) as one value per spatial dim."""
    if isinstance(v, int):
        return [v] * n
    v = list(v)
    return v * n if len(v) == 1 else v


def with_pre(call: Kernel, slot: int, pre: Callable[[torch.Tensor], torch.Tensor]) -> Kernel:
    """Kernel applying ``pre`` to activation ``slot`` before ``call``."""
    if slot == 0:
        return lambda x, *rest: call(pre(x), *rest)

    def fn(*xs: torch.Tensor) -> torch.Tensor:
        xs2 = list(xs)
        xs2[slot] = pre(xs[slot])
        return call(*xs2)

    return fn


def same_rows(node: Node, g: Graph, td: TD, x: str, out_dim_of: Callable[[int], int | None]) -> Locality | None:
    """Identity-family rule on primary input ``x``: output dim = out_dim_of(td[x])."""
    d = td.get(x)
    if d is None:
        return None
    od = out_dim_of(d)
    if od is None or node.meta.shape[od] != g.meta(x).shape[d]:
        return None
    return Locality(node, od, whole_deps(node, x, d))


def on_device(const: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A kernel constant (made on the CPU at compile time) on the activation's device."""
    return const if const.device == like.device else const.to(like.device)


Rule = Callable[[Node, Graph, TD], "Locality | None"]
