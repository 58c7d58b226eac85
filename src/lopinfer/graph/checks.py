"""Validators the untrusted loader (:mod:`.load`) applies: strict JSON shapes (exact
keys, bounded lists, identifiers), the output pytree spec, and every node's declared
output checked by running its op on ``meta`` tensors. Each failure is a one-line
:class:`~lopinfer.errors.DeployError`."""

from __future__ import annotations

import json
import re
from typing import Any

import torch

from ..errors import DeployError
from .format import GraphLimits, first_line, show
from .ir import Graph, TensorMeta, map_refs

__all__ = ["warm_up", "check_name", "no_duplicate_keys", "no_constant", "exact_keys", "bounded_list",
           "check_out_spec", "check_declared_shapes"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_name(name: Any, limits: GraphLimits, what: str) -> str:
    if not isinstance(name, str) or len(name) > limits.max_name_len or not _NAME.fullmatch(name):
        raise DeployError(f"{what} name {show(name)} is not an identifier of at most "
                          f"{limits.max_name_len} characters")
    return name


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return out


def no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_json(text: str, what: str) -> Any:
    """``text`` parsed as strict JSON (no duplicate keys, no NaN or Infinity);
    :class:`DeployError` naming ``what`` when it does not parse."""
    try:
        return json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:
        raise DeployError(f"{what} does not parse: {first_line(exc)}") from exc


def exact_keys(obj: Any, keys: set[str], what: str) -> dict:
    if not isinstance(obj, dict):
        raise DeployError(f"{what} must be an object, got {type(obj).__name__}")
    if obj.keys() != keys:
        extra, missing = sorted(obj.keys() - keys), sorted(keys - obj.keys())
        raise DeployError(f"{what}: " + "; ".join(
            ([f"unknown field(s) {', '.join(map(show, extra))}"] if extra else [])
            + ([f"missing field(s) {', '.join(missing)}"] if missing else [])))
    return obj


def bounded_list(obj: Any, limit: int, what: str) -> list:
    if not isinstance(obj, list):
        raise DeployError(f"{what} must be a list, got {type(obj).__name__}")
    if len(obj) > limit:
        raise DeployError(f"{what}: {len(obj)} entries, over the limit of {limit}")
    return obj


# -- output pytree spec ------------------------------------------------------------------------
# torch's treespec_loads can import modules named in the text (enum contexts) and build
# defaultdict factories; only these containers, with plain JSON keys, may come from a peer.
_SPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict",
               "collections.OrderedDict", "torch.fx.immutable_collections.immutable_list",
               "torch.fx.immutable_collections.immutable_dict"}
_KEYED = {"builtins.dict", "collections.OrderedDict",
          "torch.fx.immutable_collections.immutable_dict"}


def check_out_spec(spec: Any, n_outputs: int, limits: GraphLimits) -> str | None:
    if spec is None:
        return None
    if not isinstance(spec, str) or len(spec) > limits.max_out_spec_chars:
        raise DeployError(f"out_spec must be null or a string of at most "
                          f"{limits.max_out_spec_chars} characters")
    doc = strict_json(spec, "out_spec")
    if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == 1 and type(doc[0]) is int):
        raise DeployError("out_spec must be [1, tree] (pytree protocol 1)")
    leaves = _spec_leaves(doc[1], 0, limits)
    if leaves != n_outputs:
        raise DeployError(f"out_spec has {leaves} leaves for {n_outputs} outputs")
    try:
        from torch.utils._pytree import treespec_loads

        treespec_loads(spec)
    except Exception as exc:  # checked above; a safety net for torch's own checks
        raise DeployError(f"out_spec is not a valid pytree spec: {first_line(exc)}") from exc
    return spec


def _spec_leaves(node: Any, depth: int, limits: GraphLimits) -> int:
    if depth > limits.max_depth:
        raise DeployError(f"out_spec nested deeper than {limits.max_depth}")
    exact_keys(node, {"type", "context", "children_spec"}, "out_spec node")
    kind, context = node["type"], node["context"]
    children = bounded_list(node["children_spec"], limits.max_outputs, "out_spec children")
    if kind not in _SPEC_TYPES:
        raise DeployError(f"out_spec: container {show(kind)} is not allowed")
    if kind is None:
        if context is not None or children:
            raise DeployError("out_spec: a leaf has a context or children")
        return 1
    if not isinstance(context, str):
        raise DeployError(f"out_spec: context of {kind} must be a string")
    try:
        keys = json.loads(context, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:
        raise DeployError(f"out_spec: context of {kind} does not parse") from exc
    if kind in _KEYED:
        if not isinstance(keys, list) or len(keys) != len(children) or not all(
                k is None or isinstance(k, (str, int, float, bool)) for k in keys):
            raise DeployError(f"out_spec: keys of {kind} must be a list of plain values, "
                              "one per child")
    elif keys is not None:
        raise DeployError(f"out_spec: context of {kind} must be null")
    return sum(_spec_leaves(c, depth + 1, limits) for c in children)


# -- shapes, checked on meta tensors -------------------------------------------------------------
_META = torch.device("meta")


def warm_up() -> None:
    """Import what the first shape check imports lazily (torch's decompositions and
    dynamo: 1.3 s on this VM), so that a fresh server's first deploy does not wait for
    it. A server calls this once at start, in a thread."""
    import torch._decomp  # noqa: F401
    import torch._dynamo  # noqa: F401


def check_declared_shapes(graph: Graph) -> None:
    """Run each op on ``meta`` tensors and compare with the declared output meta.
    Never beside a capture: torch.export switches process-wide dispatch state that
    breaks meta kernels run from other threads meanwhile."""
    from .capture import EXPORT_LOCK

    with EXPORT_LOCK:
        _check_shapes_locked(graph)


def _check_shapes_locked(graph: Graph) -> None:
    vals: dict[str, torch.Tensor] = {}
    for name in (*graph.inputs, *graph.params):
        m = graph.meta(name)
        vals[name] = torch.empty(m.shape, dtype=m.dtype, device=_META)

    def on_meta(v: Any) -> Any:
        return _devices_to_meta(map_refs(v, lambda r: vals[r.name]))

    for node in graph.nodes:
        where = f"node {node.name} ({node.target})"
        args, kwargs = list(on_meta(node.args)), on_meta(node.kwargs)
        for i, a in enumerate(node.op._schema.arguments):
            if a.name == "device" and "Device" in str(a.type):  # factories: never allocate
                if i < len(args) and not a.kwarg_only:
                    args[i] = _META
                else:
                    kwargs["device"] = _META
        try:
            out = node.op(*args, **kwargs)
        except NotImplementedError:
            out = None  # no meta kernel: the declared meta stands
        except Exception as exc:
            raise DeployError(f"{where}: invalid arguments: {first_line(exc)}") from exc
        if out is not None:
            if node.index is not None:
                if not isinstance(out, (tuple, list)) or node.index >= len(out):
                    raise DeployError(f"{where}: index {node.index} of an op that does not "
                                      "return that many values")
                out = out[node.index]
            if not isinstance(out, torch.Tensor):
                raise DeployError(f"{where}: the op does not return a tensor here")
            got = TensorMeta(tuple(out.shape), out.dtype)
            if got != node.meta:
                raise DeployError(f"{where}: declared {node.meta!r}, the op gives {got!r}")
        vals[node.name] = torch.empty(node.meta.shape, dtype=node.meta.dtype, device=_META)


def _devices_to_meta(v: Any) -> Any:
    if isinstance(v, torch.device):
        return _META
    if isinstance(v, list):
        return [_devices_to_meta(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_devices_to_meta(x) for x in v)
    if isinstance(v, dict):
        return {k: _devices_to_meta(x) for k, x in v.items()}
    return v

