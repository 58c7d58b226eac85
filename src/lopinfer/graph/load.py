"""The untrusted side of the deploy format: a graph and its weights from a peer.

Loading validates everything before building anything: the format and version, every op
name against the allow-list (:data:`~lopinfer.graph.allowlist.DEFAULT_ALLOWED_OPS`,
derived from the op catalogue), dtypes, devices and memory formats against fixed tables,
names, definition before use, sizes against :class:`~lopinfer.graph.format.GraphLimits`,
the output spec's containers, and the parameters against the safetensors blob, exactly.
Then the declared output meta of every node is checked by running its op on ``meta``
tensors (no data, no allocation) and the locality is rebuilt locally
(:func:`~lopinfer.graph.locality.analyse`), never taken from the wire. Every failure is
a one-line :class:`~lopinfer.errors.DeployError` naming the node. No bytes from a peer
become code (DESIGN.md invariant 2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..errors import DeployError
from .allowlist import DEFAULT_ALLOWED_OPS
from .checks import (
    bounded_list,
    check_declared_shapes,
    check_name,
    check_out_spec,
    exact_keys,
    strict_json,
)
from .format import (
    DEFAULT_LIMITS,
    DTYPE_NAMES,
    DTYPES,
    FORMAT,
    INT64,
    LAYOUTS,
    MEMORY_FORMATS,
    VERSION,
    GraphLimits,
    first_line,
    show,
)
from .ir import Graph, Node, Ref, TensorMeta

__all__ = ["unpack", "unpack_parts", "graph_from_json", "weights_from_safetensors", "DEFAULT_ALLOWED_OPS",
           "GraphLimits", "DEFAULT_LIMITS"]

_SPECIAL_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_TABLES: dict[str, Mapping[str, Any]] = {
    "float": _SPECIAL_FLOATS, "dtype": DTYPES, "memory_format": MEMORY_FORMATS, "layout": LAYOUTS}
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:[0-9]{1,2})?")


def weights_from_safetensors(data: bytes, *, limits: GraphLimits = DEFAULT_LIMITS
                             ) -> dict[str, torch.Tensor]:
    """Parameters from a safetensors blob (CPU tensors; nothing but tensors is decoded).

    Raises:
        DeployError: not safetensors, over ``limits``, or a name or dtype not allowed.
    """
    from safetensors.torch import load

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DeployError(f"weights must be bytes, got {type(data).__name__}")
    if len(data) > limits.max_weight_bytes:
        raise DeployError(f"weights are {len(data)} bytes, over the limit of "
                          f"{limits.max_weight_bytes}")
    if len(data) < 8 or int.from_bytes(bytes(data[:8]), "little") > len(data) - 8:
        raise DeployError("weights are not a safetensors blob (bad header length)")
    try:
        tensors = load(bytes(data))
    except Exception as exc:  # safetensors raises its own types, and asserts; map them all
        raise DeployError(f"weights are not a valid safetensors blob: {first_line(exc)}") from exc
    if len(tensors) > limits.max_params:
        raise DeployError(f"weights hold {len(tensors)} tensors, over the limit of "
                          f"{limits.max_params}")
    for name, t in tensors.items():
        check_name(name, limits, "weights: tensor")
        if t.dtype not in DTYPE_NAMES:
            raise DeployError(f"weights: tensor {name} has dtype {t.dtype}, not allowed")
    return tensors


def unpack(json_text: str | bytes, weights: bytes, *,
           allowed_ops: Iterable[str] = DEFAULT_ALLOWED_OPS,
           limits: GraphLimits = DEFAULT_LIMITS, check_shapes: bool = True) -> Graph:
    """Validate and load a graph sent by :func:`~lopinfer.graph.serialize.pack`; its locality analysed here.

    The JSON is validated in full before the weights are decoded.

    Args:
        allowed_ops: ATen op names ("aten.NAME.OVERLOAD") the graph may call.
        limits: size bounds.
        check_shapes: run every op on ``meta`` tensors and check the declared shapes.

    Raises:
        DeployError: any violation, in one line naming the node or field.
    """
    loader = _Loader(_parse(json_text, limits), allowed_ops, limits)
    return loader.build(weights_from_safetensors(weights, limits=limits), check_shapes)


def unpack_parts(json_text: str | bytes, parts: Sequence[torch.Tensor], *,
                 allowed_ops: Iterable[str] = DEFAULT_ALLOWED_OPS,
                 limits: GraphLimits = DEFAULT_LIMITS, check_shapes: bool = True) -> Graph:
    """As :func:`unpack`, the weights as :func:`~lopinfer.graph.serialize.weights_parts`
    sends them: 1-d tensors, taken in the graph's parameter order, each parameter's
    elements from one or more consecutive parts of its declared dtype. A parameter in
    one part is a view of it (no copy); the parts' dtypes and element counts must match
    the declarations exactly, and every part must be used.

    Raises:
        DeployError: any violation, in one line naming the parameter, node or field.
    """
    loader = _Loader(_parse(json_text, limits), allowed_ops, limits)
    total = sum(p.numel() * p.element_size() for p in parts)
    if total > limits.max_weight_bytes:
        raise DeployError(f"weights are {total} bytes, over the limit of "
                          f"{limits.max_weight_bytes}")
    params: dict[str, torch.Tensor] = {}
    i = 0
    for name, meta in loader.params.items():
        need, got = math.prod(meta.shape), 0
        mine: list[torch.Tensor] = []
        while got < need or not mine:
            if i == len(parts):
                raise DeployError(f"parameter {name}: weights end after {got} of its {need} "
                                  "elements")
            p = parts[i]
            if p.dim() != 1 or p.dtype != meta.dtype or p.layout != torch.strided:
                raise DeployError(f"parameter {name}: weights part {i} is "
                                  f"{TensorMeta(tuple(p.shape), p.dtype)!r}, expected 1-d "
                                  f"{meta.dtype}")
            mine.append(p)
            got += p.numel()
            i += 1
            if need == 0:
                break
        if got != need:
            raise DeployError(f"parameter {name}: weights hold {got} elements, the graph "
                              f"declares {need} {meta!r}")
        flat = mine[0] if len(mine) == 1 else torch.cat(mine)
        params[name] = flat.view(meta.shape)
    if i != len(parts):
        raise DeployError(f"weights hold {len(parts) - i} parts more than the graph's "
                          f"{len(loader.params)} parameters")
    return loader.build(params, check_shapes)


def graph_from_json(text: str | bytes, params: Mapping[str, torch.Tensor], *,
                    allowed_ops: Iterable[str] = DEFAULT_ALLOWED_OPS,
                    limits: GraphLimits = DEFAULT_LIMITS, check_shapes: bool = True) -> Graph:
    """A graph from :func:`~lopinfer.graph.serialize.graph_to_json` text and its parameters (name -> tensor, as
    :func:`weights_from_safetensors` returns), validated as :func:`unpack` does.

    Raises:
        DeployError: any violation, in one line naming the node or field.
    """
    return _Loader(_parse(text, limits), allowed_ops, limits).build(params, check_shapes)


def _parse(text: Any, limits: GraphLimits) -> dict:
    if isinstance(text, (bytes, bytearray, memoryview)):
        if len(text) > limits.max_json_bytes:
            raise DeployError(f"graph JSON is {len(text)} bytes, over the limit of "
                              f"{limits.max_json_bytes}")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DeployError(f"graph JSON is not UTF-8: {first_line(exc)}") from exc
    if not isinstance(text, str):
        raise DeployError(f"graph JSON must be text, got {type(text).__name__}")
    if len(text) > limits.max_json_bytes:
        raise DeployError(f"graph JSON is {len(text)} characters, over the limit of "
                          f"{limits.max_json_bytes}")
    doc = strict_json(text, "graph JSON")
    if not isinstance(doc, dict):
        raise DeployError(f"graph JSON must be an object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise DeployError(f"not a LOPInfer graph: format is {show(doc.get('format'))}, "
                          f"expected {FORMAT!r}")
    version = doc.get("version")
    if type(version) is not int or version != VERSION:
        raise DeployError(f"unsupported graph format version {show(version)} "
                          f"(this LOPInfer reads version {VERSION})")
    return doc


_TOP_KEYS = {"format", "version", "name", "inputs", "params", "nodes", "outputs", "out_spec"}
_NODE_KEYS = {"name", "target", "args", "kwargs", "index", "meta", "module_path", "layout"}
_NODE_LAYOUTS = {"", "contiguous", "channels_last", "channels_last_3d"}
_SPEC_KEYS = {"name", "shape", "dtype"}
_MAX_INDEX = 64  # of an element of a tuple-returning op


class _Loader:
    """Validates one parsed document; :meth:`build` then makes the Graph."""

    def __init__(self, doc: dict, allowed_ops: Iterable[str], limits: GraphLimits) -> None:
        self.limits = limits
        self.allowed = (allowed_ops if isinstance(allowed_ops, (set, frozenset))
                        else frozenset(allowed_ops))
        exact_keys(doc, _TOP_KEYS, "graph")
        self.name = self._text(doc["name"], "graph name")
        self.defined: set[str] = set()
        self.total = 0
        self.inputs = {s["name"]: self._meta(s, "input") for s in
                       self._specs(doc["inputs"], limits.max_inputs, "inputs")}
        if not self.inputs:
            raise DeployError("graph has no inputs")
        self.params = {s["name"]: self._meta(s, "parameter", count=False) for s in
                       self._specs(doc["params"], limits.max_params, "params")}
        self.nodes = [self._node(i, n) for i, n in
                      enumerate(bounded_list(doc["nodes"], limits.max_nodes, "nodes"))]
        outputs = bounded_list(doc["outputs"], limits.max_outputs, "outputs")
        if not outputs:
            raise DeployError("graph has no outputs")
        for out in outputs:
            if not isinstance(out, str) or out not in self.defined:
                raise DeployError(f"output {show(out)} is not a defined value")
        self.outputs = list(outputs)
        self.out_spec = check_out_spec(doc["out_spec"], len(outputs), limits)

    # -- pieces ------------------------------------------------------------------------
    def _text(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or len(value) > self.limits.max_text_len:
            raise DeployError(f"{what} must be a string of at most "
                              f"{self.limits.max_text_len} characters")
        if not value.isprintable():
            raise DeployError(f"{what} {show(value)} has control characters")
        return value

    def _define(self, name: Any, what: str) -> str:
        check_name(name, self.limits, what)
        if name in self.defined:
            raise DeployError(f"{what} {name}: the name is defined twice")
        self.defined.add(name)
        return name

    def _specs(self, obj: Any, limit: int, what: str) -> list[dict]:
        specs = bounded_list(obj, limit, what)
        for s in specs:
            exact_keys(s, _SPEC_KEYS, f"{what} entry")
            self._define(s["name"], what.rstrip("s"))
        return specs

    def _meta(self, spec: dict, what: str, *, count: bool = True) -> TensorMeta:
        where = f"{what} {spec['name']}" if "name" in spec else what
        shape = bounded_list(spec["shape"], self.limits.max_rank, f"{where}: shape")
        if any(type(s) is not int or s < 0 for s in shape):
            raise DeployError(f"{where}: shape {show(shape)} must be non-negative integers")
        dtype = spec["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise DeployError(f"{where}: dtype {show(dtype)} is not one of "
                              f"{', '.join(DTYPES)}")
        numel = math.prod(shape)
        if numel > self.limits.max_tensor_elements:
            raise DeployError(f"{where}: {numel} elements, over the limit of "
                              f"{self.limits.max_tensor_elements}")
        if count:
            self.total += numel
            if self.total > self.limits.max_total_elements:
                raise DeployError(f"{where}: the graph's values exceed "
                                  f"{self.limits.max_total_elements} elements in total")
        return TensorMeta(tuple(shape), DTYPES[dtype])

    def _node(self, i: int, obj: Any) -> dict:
        where = f"node #{i}"
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            where = f"node {show(obj['name'])}"
        exact_keys(obj, _NODE_KEYS, where)
        target = obj["target"]
        if not isinstance(target, str) or target not in self.allowed:
            raise DeployError(f"{where}: op {show(target)} is not in the allow-list")
        where = f"{where} ({target})"
        args = bounded_list(obj["args"], self.limits.max_args, f"{where}: args")
        kwargs = obj["kwargs"]
        if not isinstance(kwargs, dict):
            raise DeployError(f"{where}: kwargs must be an object")
        if len(args) + len(kwargs) > self.limits.max_args:
            raise DeployError(f"{where}: {len(args) + len(kwargs)} arguments, over the limit of "
                              f"{self.limits.max_args}")
        for k in kwargs:
            check_name(k, self.limits, f"{where}: keyword")
        index = obj["index"]
        if index is not None and (type(index) is not int or not 0 <= index < _MAX_INDEX):
            raise DeployError(f"{where}: index {show(index)} must be null or 0..{_MAX_INDEX - 1}")
        out = {
            "target": target,
            "args": tuple(self._value(a, where, 0) for a in args),
            "kwargs": {k: self._value(v, where, 0) for k, v in kwargs.items()},
            "index": index,
            "meta": self._meta(exact_keys(obj["meta"], {"shape", "dtype"}, f"{where}: meta"), where),
            "module_path": self._text(obj["module_path"], f"{where}: module_path"),
            "layout": obj["layout"],
        }
        if not isinstance(obj["layout"], str) or obj["layout"] not in _NODE_LAYOUTS:
            raise DeployError(f"{where}: layout {show(obj['layout'])} is not one of "
                              f"{', '.join(sorted(_NODE_LAYOUTS)[1:])} or empty")
        out["name"] = self._define(obj["name"], "node")  # after its args: no self-reference
        return out

    def _value(self, v: Any, where: str, depth: int) -> Any:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, int):
            if not -INT64 <= v < INT64:
                raise DeployError(f"{where}: integer argument out of int64 range")
            return v
        if isinstance(v, float):
            return v
        if isinstance(v, str):
            if len(v) > self.limits.max_text_len:
                raise DeployError(f"{where}: string argument over {self.limits.max_text_len} "
                                  "characters")
            return v
        if isinstance(v, list):
            return [self._value(x, where, self._deeper(depth, where))
                    for x in bounded_list(v, self.limits.max_seq_len, f"{where}: list argument")]
        if isinstance(v, dict) and len(v) == 1:
            (kind, x), = v.items()
            if kind == "ref":
                if not isinstance(x, str) or x not in self.defined:
                    raise DeployError(f"{where}: reads {show(x)} before it is defined")
                return Ref(x)
            if kind == "tuple" and isinstance(x, list):
                return tuple(self._value(e, where, self._deeper(depth, where))
                             for e in bounded_list(x, self.limits.max_seq_len, f"{where}: tuple"))
            table = _TABLES.get(kind)
            if table is not None and isinstance(x, str) and x in table:
                return table[x]
            if kind == "device" and isinstance(x, str) and _DEVICE.fullmatch(x):
                return torch.device(x)
            raise DeployError(f"{where}: {kind} value {show(x)} is not allowed")
        raise DeployError(f"{where}: unsupported argument value {show(v)}")

    def _deeper(self, depth: int, where: str) -> int:
        if depth >= self.limits.max_depth:
            raise DeployError(f"{where}: arguments nested deeper than {self.limits.max_depth}")
        return depth + 1

    # -- the graph ---------------------------------------------------------------------
    def build(self, params: Mapping[str, torch.Tensor], check_shapes: bool) -> Graph:
        from .locality import analyse

        if params.keys() != self.params.keys():
            missing = sorted(self.params.keys() - params.keys())
            extra = sorted(params.keys() - self.params.keys())
            raise DeployError("weights do not match the graph's params: " + "; ".join(
                ([f"missing {', '.join(missing[:5])}"] if missing else [])
                + ([f"unexpected {', '.join(extra[:5])}"] if extra else [])))
        for name, meta in self.params.items():
            t = params[name]
            if not isinstance(t, torch.Tensor):
                raise DeployError(f"parameter {name} is a {type(t).__name__}, not a tensor")
            if tuple(t.shape) != meta.shape or t.dtype != meta.dtype:
                raise DeployError(
                    f"parameter {name}: weights hold {TensorMeta(tuple(t.shape), t.dtype)!r}, "
                    f"the graph declares {meta!r}")
        try:
            nodes = [Node(**spec) for spec in self.nodes]
            for node in nodes:
                if not isinstance(node.op, torch._ops.OpOverload):  # a custom allow-list's slip
                    raise DeployError(f"node {node.name}: {node.target} is not an ATen op")
            graph = Graph(dict(self.inputs), {k: params[k] for k in self.params}, nodes,
                          self.outputs, out_spec=self.out_spec, name=self.name)
        except ValueError as exc:  # checked above already; kept as a safety net
            raise DeployError(f"invalid graph: {first_line(exc)}") from exc
        if check_shapes:
            check_declared_shapes(graph)
        try:
            analyse(graph)
        except Exception as exc:  # a rule tripping on odd but valid arguments
            raise DeployError(f"locality analysis failed: {type(exc).__name__}: "
                              f"{first_line(exc)}") from exc
        return graph

