"""The project's own graph IR: a flat, topologically ordered list of ATen calls.

A :class:`Graph` holds user inputs, parameters (weights, buffers and lifted constants,
by name) and call nodes. Arguments are plain Python values in which references to other
values are :class:`Ref` objects, so the graph can be walked, serialised to JSON and
executed without any code object. Every call node carries its output meta (shape, dtype)
and, after analysis, its :class:`~lopinfer.graph.locality.Locality`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .locality import Locality

__all__ = ["Ref", "TensorMeta", "Node", "Graph", "resolve_op", "walk_refs", "map_refs"]


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference, inside node arguments, to an input, a parameter or another node."""

    name: str

    def __repr__(self) -> str:
        return f"%{self.name}"


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """Shape and dtype of a value (static: LOPInfer captures fixed shapes)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * _itemsize(self.dtype)

    def __repr__(self) -> str:
        dt = str(self.dtype).removeprefix("torch.")
        return f"{dt}[{','.join(map(str, self.shape))}]"


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(slots=True, eq=False)
class Node:
    """One ATen call. ``index`` selects one element when the op returns a tuple."""

    name: str
    target: str  # e.g. "aten.convolution.default"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    meta: TensorMeta
    index: int | None = None
    module_path: str = ""  # the nn.Module the call came from, for messages
    # memory format of the output in a plain run ("" if neither of these): kernels of
    # global ops round differently on other layouts, so whole tasks restore it
    layout: str = ""
    locality: Locality | None = None
    op: Any = field(default=None, repr=False)  # resolved torch OpOverload

    def __post_init__(self) -> None:
        if self.op is None:
            self.op = resolve_op(self.target)

    @property
    def local(self) -> bool:
        return self.locality is not None

    def refs(self) -> list[str]:
        """Names of every value this node reads, in argument order (repeats kept)."""
        out: list[str] = []
        walk_refs((self.args, self.kwargs), lambda r: out.append(r.name))
        return out

    def __repr__(self) -> str:
        idx = f"[{self.index}]" if self.index is not None else ""
        kind = f"local(dim={self.locality.dim})" if self.locality else "global"
        return f"<Node {self.name} = {self.target}{idx} -> {self.meta!r} {kind}>"


class Graph:
    """A captured model: inputs, parameters, call nodes in topological order, outputs."""

    def __init__(
        self,
        inputs: dict[str, TensorMeta],
        params: dict[str, torch.Tensor],
        nodes: list[Node],
        outputs: list[str],
        *,
        out_spec: str | None = None,
        name: str = "model",
    ) -> None:
        self.inputs = inputs
        self.params = params
        self.nodes = nodes
        self.outputs = outputs
        self.out_spec = out_spec  # pytree spec of the model's output, as JSON
        self.name = name
        self.input_dims: dict[str, int | None] = {}  # tracked dim of each input (analyse)
        self._by_name = {n.name: n for n in nodes}
        self._check()

    def _check(self) -> None:
        seen = set(self.inputs) | set(self.params)
        for node in self.nodes:
            for ref in node.refs():
                if ref not in seen:
                    raise ValueError(f"node {node.name} reads {ref!r} before it is defined")
            if node.name in seen:
                raise ValueError(f"duplicate value name {node.name!r}")
            seen.add(node.name)
        for out in self.outputs:
            if out not in seen:
                raise ValueError(f"output {out!r} is not defined")

    # -- lookups ---------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def meta(self, name: str) -> TensorMeta:
        """Meta of any value: input, parameter or node output."""
        if name in self._by_name:
            return self._by_name[name].meta
        if name in self.inputs:
            return self.inputs[name]
        p = self.params[name]
        return TensorMeta(tuple(p.shape), p.dtype)

    def kind(self, name: str) -> str:
        """"input", "param" or "node"."""
        if name in self._by_name:
            return "node"
        if name in self.inputs:
            return "input"
        if name in self.params:
            return "param"
        raise KeyError(name)

    def users(self) -> dict[str, list[Node]]:
        """Map from each value name to the nodes that read it (each at most once)."""
        users: dict[str, list[Node]] = {name: [] for name in (*self.inputs, *self.params)}
        for node in self.nodes:
            users[node.name] = []
            for ref in dict.fromkeys(node.refs()):
                users[ref].append(node)
        return users

    def __repr__(self) -> str:
        n_local = sum(1 for n in self.nodes if n.local)
        return (
            f"<Graph {self.name!r} inputs={len(self.inputs)} params={len(self.params)} "
            f"nodes={len(self.nodes)} local={n_local} outputs={len(self.outputs)}>"
        )

    def describe(self) -> str:
        """A readable listing, one node per line."""
        lines = [repr(self)]
        for name, meta in self.inputs.items():
            lines.append(f"  input {name}: {meta!r}")
        lines.extend(f"  {n!r}" for n in self.nodes)
        lines.append(f"  return {', '.join(self.outputs)}")
        return "\n".join(lines)


def resolve_op(target: str) -> Any:
    """Turn "aten.name.overload" into the torch OpOverload (no code is evaluated)."""
    parts = target.split(".")
    if len(parts) != 3 or parts[0] != "aten":
        raise ValueError(f"not an ATen op name: {target!r}")
    packet = getattr(torch.ops.aten, parts[1], None)
    overload = getattr(packet, parts[2], None) if packet is not None else None
    if overload is None:
        raise ValueError(f"unknown ATen op: {target!r}")
    return overload


def walk_refs(value: Any, visit: Any) -> None:
    """Call ``visit(ref)`` for every :class:`Ref` nested in lists/tuples/dicts."""
    if isinstance(value, Ref):
        visit(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            walk_refs(v, visit)
    elif isinstance(value, dict):
        for v in value.values():
            walk_refs(v, visit)


def map_refs(value: Any, fn: Any) -> Any:
    """Copy of ``value`` with every :class:`Ref` replaced by ``fn(ref)``."""
    if isinstance(value, Ref):
        return fn(value)
    if isinstance(value, list):
        return [map_refs(v, fn) for v in value]
    if isinstance(value, tuple):
        return tuple(map_refs(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_refs(v, fn) for k, v in value.items()}
    return value
