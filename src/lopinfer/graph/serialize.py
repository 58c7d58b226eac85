"""The deploy format of a captured :class:`~lopinfer.graph.ir.Graph`: JSON + safetensors.

A client sends a graph to a server as two blobs, and the server must never turn bytes into
code (DESIGN.md invariant 2):

- the graph as canonical JSON (``{"format": "lopinfer.graph", "version": 1, ...}``):
  inputs, parameter names/shapes/dtypes, call nodes (ATen op name, arguments, output
  meta), outputs and the output pytree spec;
- the parameter values as one safetensors blob.

Loading validates everything before building anything: the format and version, every op
name against an allow-list of functional ATen overloads (:data:`DEFAULT_ALLOWED_OPS`),
dtypes, devices and memory formats against fixed tables, names, definition before use,
sizes against :class:`GraphLimits`, the output spec's containers, and the parameters
against the safetensors blob, exactly. Then the declared output meta of every node is
checked by running its op on ``meta`` tensors (no data, no allocation) and the locality
is rebuilt locally (:func:`~lopinfer.graph.locality.analyse`), never taken from the wire.
Every failure is a one-line :class:`~lopinfer.errors.DeployError` naming the node.

:func:`content_hash` is a sha256 over the canonical JSON and the raw weight bytes, stable
across processes; a graph loaded back hashes the same as the one that was packed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DeployError, UnsupportedModelError
from .ir import Graph, Node, Ref, TensorMeta, map_refs

__all__ = [
    "FORMAT",
    "VERSION",
    "DEFAULT_ALLOWED_OPS",
    "GraphLimits",
    "graph_to_json",
    "graph_from_json",
    "weights_to_safetensors",
    "weights_from_safetensors",
    "content_hash",
    "pack",
    "unpack",
]

FORMAT = "lopinfer.graph"
VERSION = 1

# -- fixed tables: the only dtypes, devices, memory formats and layouts a graph may name -----
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "uint8": torch.uint8, "int8": torch.int8,
    "int16": torch.int16, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last,
    "channels_last_3d": torch.channels_last_3d, "preserve_format": torch.preserve_format,
}
_MEMORY_FORMAT_NAMES = {v: k for k, v in MEMORY_FORMATS.items()}
LAYOUTS: dict[str, torch.layout] = {"strided": torch.strided}
_LAYOUT_NAMES = {v: k for k, v in LAYOUTS.items()}
_SPECIAL_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_TABLES: dict[str, Mapping[str, Any]] = {
    "float": _SPECIAL_FLOATS, "dtype": DTYPES, "memory_format": MEMORY_FORMATS, "layout": LAYOUTS}
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:[0-9]{1,2})?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT64 = 2**63

# -- the op allow-list ---------------------------------------------------------------------
# Global (barrier) ops of torchvision classifiers, segmentation nets and ViT/Swin/MaxViT
# as captured by lopinfer.capture (torch 2.13), plus their close relatives. Every op that
# has a locality rule (locality.RULES) is allowed too. Not allowed: anything that mutates,
# writes an out= tensor, draws random numbers, returns uninitialised memory (empty*), or
# returns non-tensors (the TorchScript list/str/int overloads).
_GLOBAL_OPS = """
    addmm mm bmm baddbmm t transpose
    mean sum prod amax amin max min argmax argmin any all var std var_mean std_mean
    linalg_vector_norm norm cumsum logsumexp
    native_layer_norm native_group_norm _native_batch_norm_legit
    _adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool2d adaptive_max_pool3d
    _scaled_dot_product_flash_attention_for_cpu _scaled_dot_product_efficient_attention
    scaled_dot_product_attention
    full full_like zeros zeros_like ones ones_like arange scalar_tensor linspace
    index index_select gather embedding slice_scatter select_scatter index_put scatter
    roll flip repeat unbind stack narrow as_strided
    pixel_shuffle pixel_unshuffle native_channel_shuffle unfold im2col col2im
    upsample_bicubic2d _upsample_bilinear2d_aa _upsample_bicubic2d_aa
    grid_sampler_2d topk sort glu
""".split()
_DENIED_OVERLOADS = frozenset({"aten.where.default"})  # nonzero in disguise: data-dependent


def _functional_overloads(packet_name: str) -> list[str]:
    """"aten.NAME.OVERLOAD" for each overload that neither mutates nor writes ``out=``,
    returns only tensors and takes no generator."""
    packet = getattr(torch.ops.aten, packet_name, None)
    if packet is None:
        return []
    names = []
    for overload in packet.overloads():
        schema = getattr(packet, overload)._schema
        if schema.is_mutable or any(a.is_out for a in schema.arguments):
            continue
        if not schema.returns or any(
            str(r.type) not in ("Tensor", "List[Tensor]") for r in schema.returns
        ):
            continue
        if any("Generator" in str(a.type) for a in schema.arguments):
            continue
        names.append(f"aten.{packet_name}.{overload}")
    return names


def _allowed_ops() -> frozenset[str]:
    from .locality import RULES

    ops: set[str] = set()
    for name in sorted({*RULES, *_GLOBAL_OPS}):
        ops.update(_functional_overloads(name))
    return frozenset(ops - _DENIED_OVERLOADS)


DEFAULT_ALLOWED_OPS: frozenset[str] = _allowed_ops()


@dataclass(frozen=True, slots=True)
class GraphLimits:
    """Bounds a deployed graph must respect (DESIGN.md invariant 3).

    The defaults take every torchvision model at its usual input size with a wide margin.
    """

    max_json_bytes: int = 64 * 2**20
    max_weight_bytes: int = 2 * 2**30
    max_nodes: int = 100_000
    max_params: int = 100_000
    max_inputs: int = 256
    max_outputs: int = 1024
    max_args: int = 64  # positional plus keyword arguments of one node
    max_seq_len: int = 4096  # elements of one list argument
    max_depth: int = 8  # nesting of list arguments
    max_rank: int = 8
    max_tensor_elements: int = 2**30  # of any one value
    max_total_elements: int = 2**34  # of the inputs and every node output together
    max_name_len: int = 256  # value names
    max_text_len: int = 1024  # graph name, module paths, string arguments
    max_out_spec_chars: int = 2**20


DEFAULT_LIMITS = GraphLimits()


# -- Graph -> JSON -------------------------------------------------------------------------
def _encode(value: Any, where: str) -> Any:
    if isinstance(value, Ref):
        return {"ref": value.name}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise UnsupportedModelError(f"{where}: integer argument {value} out of int64 range")
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, torch.dtype) and value in _DTYPE_NAMES:
        return {"dtype": _DTYPE_NAMES[value]}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format) and value in _MEMORY_FORMAT_NAMES:
        return {"memory_format": _MEMORY_FORMAT_NAMES[value]}
    if isinstance(value, torch.layout) and value in _LAYOUT_NAMES:
        return {"layout": _LAYOUT_NAMES[value]}
    raise UnsupportedModelError(
        f"{where}: argument {_show(value)} ({type(value).__name__}) cannot be serialised"
    )


def _tensor_spec(name: str, shape: Iterable[int], dtype: torch.dtype, what: str) -> dict:
    if dtype not in _DTYPE_NAMES:
        raise UnsupportedModelError(f"{what} {name} has dtype {dtype}, which cannot be deployed")
    return {"name": name, "shape": [int(s) for s in shape], "dtype": _DTYPE_NAMES[dtype]}


def _document(graph: Graph) -> dict:
    nodes = []
    for n in graph.nodes:
        where = f"node {n.name} ({n.target})"
        nodes.append({
            "name": n.name,
            "target": n.target,
            "args": [_encode(a, where) for a in n.args],
            "kwargs": {k: _encode(v, where) for k, v in n.kwargs.items()},
            "index": n.index,
            "meta": {"shape": list(n.meta.shape), "dtype": _tensor_spec(
                n.name, n.meta.shape, n.meta.dtype, "node")["dtype"]},
            "module_path": n.module_path,
            "layout": n.layout,
        })
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": graph.name,
        "inputs": [_tensor_spec(k, m.shape, m.dtype, "input") for k, m in graph.inputs.items()],
        "params": [_tensor_spec(k, p.shape, p.dtype, "parameter")
                   for k, p in graph.params.items()],
        "nodes": nodes,
        "outputs": list(graph.outputs),
        "out_spec": graph.out_spec,
    }


def graph_to_json(graph: Graph) -> str:
    """The graph as canonical JSON text (sorted keys, no spaces, ASCII): the same graph
    always gives the same text. Parameter values are not included (see
    :func:`weights_to_safetensors`).

    Raises:
        UnsupportedModelError: an argument, dtype or value the format cannot express.
    """
    return json.dumps(_document(graph), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)


# -- weights ---------------------------------------------------------------------------------
def _cpu_params(graph: Graph) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing storage (safetensors refuses aliases)."""
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, t in graph.params.items():
        if t.dtype not in _DTYPE_NAMES:
            raise UnsupportedModelError(f"parameter {name} has dtype {t.dtype}, which cannot "
                                        "be deployed")
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        if not t.is_contiguous() or (ptr and ptr in storages):
            t = t.clone(memory_format=torch.contiguous_format)
        else:
            storages.add(ptr)
        out[name] = t
    return out


def weights_to_safetensors(graph: Graph) -> bytes:
    """The graph's parameters as a safetensors blob, keyed by parameter name.

    Raises:
        UnsupportedModelError: a parameter dtype outside the format's table.
    """
    from safetensors.torch import save

    return save(_cpu_params(graph), metadata={"format": "lopinfer.weights", "version": "1"})


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
        raise DeployError(f"weights are not a valid safetensors blob: {_first_line(exc)}") from exc
    if len(tensors) > limits.max_params:
        raise DeployError(f"weights hold {len(tensors)} tensors, over the limit of "
                          f"{limits.max_params}")
    for name, t in tensors.items():
        _check_name(name, limits, "weights: tensor")
        if t.dtype not in _DTYPE_NAMES:
            raise DeployError(f"weights: tensor {name} has dtype {t.dtype}, not allowed")
    return tensors


# -- hash ------------------------------------------------------------------------------------
def content_hash(graph: Graph) -> str:
    """sha256 (hex) over the canonical JSON and every parameter's raw bytes, in order.

    Stable across processes and machines (little-endian); a graph loaded back with
    :func:`unpack` hashes the same as the one packed. Servers cache deployed graphs by it.
    """
    return _hash(graph_to_json(graph), graph)


def _hash(text: str, graph: Graph) -> str:
    h = hashlib.sha256()
    data = text.encode("ascii")
    h.update(b"lopinfer.graph/1\0" + len(data).to_bytes(8, "little") + data)
    for name, t in graph.params.items():
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        h.update(name.encode() + b"\0" + raw.nbytes.to_bytes(8, "little"))
        h.update(raw.data)
    return h.hexdigest()


# -- pack / unpack -----------------------------------------------------------------------------
def pack(graph: Graph, *, allowed_ops: Iterable[str] = DEFAULT_ALLOWED_OPS
         ) -> tuple[str, bytes, str]:
    """``(json_text, weights_bytes, content_hash)`` to send ``graph`` to a server.

    Raises:
        UnsupportedModelError: the graph uses ops a default server refuses (they are
            named) or values the format cannot express.
    """
    allowed = allowed_ops if isinstance(allowed_ops, (set, frozenset)) else set(allowed_ops)
    refused = sorted({n.target for n in graph.nodes if n.target not in allowed})
    if refused:
        raise UnsupportedModelError(
            f"{graph.name}: ops not in the server allow-list: {', '.join(refused[:8])}"
            + (f" (+{len(refused) - 8} more)" if len(refused) > 8 else ""))
    text = graph_to_json(graph)
    return text, weights_to_safetensors(graph), _hash(text, graph)


def unpack(json_text: str | bytes, weights: bytes, *,
           allowed_ops: Iterable[str] = DEFAULT_ALLOWED_OPS,
           limits: GraphLimits = DEFAULT_LIMITS, check_shapes: bool = True) -> Graph:
    """Validate and load a graph sent by :func:`pack`; its locality analysed here.

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


def graph_from_json(text: str | bytes, params: Mapping[str, torch.Tensor], *,
                    allowed_ops: Iterable[str] = DEFAULT_ALLOWED_OPS,
                    limits: GraphLimits = DEFAULT_LIMITS, check_shapes: bool = True) -> Graph:
    """A graph from :func:`graph_to_json` text and its parameters (name -> tensor, as
    :func:`weights_from_safetensors` returns), validated as :func:`unpack` does.

    Raises:
        DeployError: any violation, in one line naming the node or field.
    """
    return _Loader(_parse(text, limits), allowed_ops, limits).build(params, check_shapes)


# -- validation --------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_name(name: Any, limits: GraphLimits, what: str) -> str:
    if not isinstance(name, str) or len(name) > limits.max_name_len or not _NAME.fullmatch(name):
        raise DeployError(f"{what} name {_show(name)} is not an identifier of at most "
                          f"{limits.max_name_len} characters")
    return name


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse(text: Any, limits: GraphLimits) -> dict:
    if isinstance(text, (bytes, bytearray, memoryview)):
        if len(text) > limits.max_json_bytes:
            raise DeployError(f"graph JSON is {len(text)} bytes, over the limit of "
                              f"{limits.max_json_bytes}")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DeployError(f"graph JSON is not UTF-8: {_first_line(exc)}") from exc
    if not isinstance(text, str):
        raise DeployError(f"graph JSON must be text, got {type(text).__name__}")
    if len(text) > limits.max_json_bytes:
        raise DeployError(f"graph JSON is {len(text)} characters, over the limit of "
                          f"{limits.max_json_bytes}")
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise DeployError(f"graph JSON does not parse: {_first_line(exc)}") from exc
    if not isinstance(doc, dict):
        raise DeployError(f"graph JSON must be an object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise DeployError(f"not a LOPInfer graph: format is {_show(doc.get('format'))}, "
                          f"expected {FORMAT!r}")
    version = doc.get("version")
    if type(version) is not int or version != VERSION:
        raise DeployError(f"unsupported graph format version {_show(version)} "
                          f"(this LOPInfer reads version {VERSION})")
    return doc


_TOP_KEYS = {"format", "version", "name", "inputs", "params", "nodes", "outputs", "out_spec"}
_NODE_KEYS = {"name", "target", "args", "kwargs", "index", "meta", "module_path", "layout"}
_NODE_LAYOUTS = {"", "contiguous", "channels_last", "channels_last_3d"}
_SPEC_KEYS = {"name", "shape", "dtype"}
_MAX_INDEX = 64  # of an element of a tuple-returning op


def _keys(obj: Any, keys: set[str], what: str) -> dict:
    if not isinstance(obj, dict):
        raise DeployError(f"{what} must be an object, got {type(obj).__name__}")
    if obj.keys() != keys:
        extra, missing = sorted(obj.keys() - keys), sorted(keys - obj.keys())
        raise DeployError(f"{what}: " + "; ".join(
            ([f"unknown field(s) {', '.join(map(_show, extra))}"] if extra else [])
            + ([f"missing field(s) {', '.join(missing)}"] if missing else [])))
    return obj


def _list(obj: Any, limit: int, what: str) -> list:
    if not isinstance(obj, list):
        raise DeployError(f"{what} must be a list, got {type(obj).__name__}")
    if len(obj) > limit:
        raise DeployError(f"{what}: {len(obj)} entries, over the limit of {limit}")
    return obj


class _Loader:
    """Validates one parsed document; :meth:`build` then makes the Graph."""

    def __init__(self, doc: dict, allowed_ops: Iterable[str], limits: GraphLimits) -> None:
        self.limits = limits
        self.allowed = (allowed_ops if isinstance(allowed_ops, (set, frozenset))
                        else frozenset(allowed_ops))
        _keys(doc, _TOP_KEYS, "graph")
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
                      enumerate(_list(doc["nodes"], limits.max_nodes, "nodes"))]
        outputs = _list(doc["outputs"], limits.max_outputs, "outputs")
        if not outputs:
            raise DeployError("graph has no outputs")
        for out in outputs:
            if not isinstance(out, str) or out not in self.defined:
                raise DeployError(f"output {_show(out)} is not a defined value")
        self.outputs = list(outputs)
        self.out_spec = _check_out_spec(doc["out_spec"], len(outputs), limits)

    # -- pieces ------------------------------------------------------------------------
    def _text(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or len(value) > self.limits.max_text_len:
            raise DeployError(f"{what} must be a string of at most "
                              f"{self.limits.max_text_len} characters")
        if not value.isprintable():
            raise DeployError(f"{what} {_show(value)} has control characters")
        return value

    def _define(self, name: Any, what: str) -> str:
        _check_name(name, self.limits, what)
        if name in self.defined:
            raise DeployError(f"{what} {name}: the name is defined twice")
        self.defined.add(name)
        return name

    def _specs(self, obj: Any, limit: int, what: str) -> list[dict]:
        specs = _list(obj, limit, what)
        for s in specs:
            _keys(s, _SPEC_KEYS, f"{what} entry")
            self._define(s["name"], what.rstrip("s"))
        return specs

    def _meta(self, spec: dict, what: str, *, count: bool = True) -> TensorMeta:
        where = f"{what} {spec['name']}" if "name" in spec else what
        shape = _list(spec["shape"], self.limits.max_rank, f"{where}: shape")
        if any(type(s) is not int or s < 0 for s in shape):
            raise DeployError(f"{where}: shape {_show(shape)} must be non-negative integers")
        dtype = spec["dtype"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise DeployError(f"{where}: dtype {_show(dtype)} is not one of "
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
            where = f"node {_show(obj['name'])}"
        _keys(obj, _NODE_KEYS, where)
        target = obj["target"]
        if not isinstance(target, str) or target not in self.allowed:
            raise DeployError(f"{where}: op {_show(target)} is not in the allow-list")
        where = f"{where} ({target})"
        args = _list(obj["args"], self.limits.max_args, f"{where}: args")
        kwargs = obj["kwargs"]
        if not isinstance(kwargs, dict):
            raise DeployError(f"{where}: kwargs must be an object")
        if len(args) + len(kwargs) > self.limits.max_args:
            raise DeployError(f"{where}: {len(args) + len(kwargs)} arguments, over the limit of "
                              f"{self.limits.max_args}")
        for k in kwargs:
            _check_name(k, self.limits, f"{where}: keyword")
        index = obj["index"]
        if index is not None and (type(index) is not int or not 0 <= index < _MAX_INDEX):
            raise DeployError(f"{where}: index {_show(index)} must be null or 0..{_MAX_INDEX - 1}")
        out = {
            "target": target,
            "args": tuple(self._value(a, where, 0) for a in args),
            "kwargs": {k: self._value(v, where, 0) for k, v in kwargs.items()},
            "index": index,
            "meta": self._meta(_keys(obj["meta"], {"shape", "dtype"}, f"{where}: meta"), where),
            "module_path": self._text(obj["module_path"], f"{where}: module_path"),
            "layout": obj["layout"],
        }
        if not isinstance(obj["layout"], str) or obj["layout"] not in _NODE_LAYOUTS:
            raise DeployError(f"{where}: layout {_show(obj['layout'])} is not one of "
                              f"{', '.join(sorted(_NODE_LAYOUTS)[1:])} or empty")
        out["name"] = self._define(obj["name"], "node")  # after its args: no self-reference
        return out

    def _value(self, v: Any, where: str, depth: int) -> Any:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, int):
            if not -_INT64 <= v < _INT64:
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
                    for x in _list(v, self.limits.max_seq_len, f"{where}: list argument")]
        if isinstance(v, dict) and len(v) == 1:
            (kind, x), = v.items()
            if kind == "ref":
                if not isinstance(x, str) or x not in self.defined:
                    raise DeployError(f"{where}: reads {_show(x)} before it is defined")
                return Ref(x)
            if kind == "tuple" and isinstance(x, list):
                return tuple(self._value(e, where, self._deeper(depth, where))
                             for e in _list(x, self.limits.max_seq_len, f"{where}: tuple"))
            table = _TABLES.get(kind)
            if table is not None and isinstance(x, str) and x in table:
                return table[x]
            if kind == "device" and isinstance(x, str) and _DEVICE.fullmatch(x):
                return torch.device(x)
            raise DeployError(f"{where}: {kind} value {_show(x)} is not allowed")
        raise DeployError(f"{where}: unsupported argument value {_show(v)}")

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
            raise DeployError(f"invalid graph: {_first_line(exc)}") from exc
        if check_shapes:
            _check_shapes(graph)
        try:
            analyse(graph)
        except Exception as exc:  # a rule tripping on odd but valid arguments
            raise DeployError(f"locality analysis failed: {type(exc).__name__}: "
                              f"{_first_line(exc)}") from exc
        return graph


# -- output pytree spec ------------------------------------------------------------------------
# torch's treespec_loads can import modules named in the text (enum contexts) and build
# defaultdict factories; only these containers, with plain JSON keys, may come from a peer.
_SPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict",
               "collections.OrderedDict", "torch.fx.immutable_collections.immutable_list",
               "torch.fx.immutable_collections.immutable_dict"}
_KEYED = {"builtins.dict", "collections.OrderedDict",
          "torch.fx.immutable_collections.immutable_dict"}


def _check_out_spec(spec: Any, n_outputs: int, limits: GraphLimits) -> str | None:
    if spec is None:
        return None
    if not isinstance(spec, str) or len(spec) > limits.max_out_spec_chars:
        raise DeployError(f"out_spec must be null or a string of at most "
                          f"{limits.max_out_spec_chars} characters")
    try:
        doc = json.loads(spec, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise DeployError(f"out_spec does not parse: {_first_line(exc)}") from exc
    if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == 1 and type(doc[0]) is int):
        raise DeployError("out_spec must be [1, tree] (pytree protocol 1)")
    leaves = _spec_leaves(doc[1], 0, limits)
    if leaves != n_outputs:
        raise DeployError(f"out_spec has {leaves} leaves for {n_outputs} outputs")
    try:
        from torch.utils._pytree import treespec_loads

        treespec_loads(spec)
    except Exception as exc:  # checked above; a safety net for torch's own checks
        raise DeployError(f"out_spec is not a valid pytree spec: {_first_line(exc)}") from exc
    return spec


def _spec_leaves(node: Any, depth: int, limits: GraphLimits) -> int:
    if depth > limits.max_depth:
        raise DeployError(f"out_spec nested deeper than {limits.max_depth}")
    _keys(node, {"type", "context", "children_spec"}, "out_spec node")
    kind, context = node["type"], node["context"]
    children = _list(node["children_spec"], limits.max_outputs, "out_spec children")
    if kind not in _SPEC_TYPES:
        raise DeployError(f"out_spec: container {_show(kind)} is not allowed")
    if kind is None:
        if context is not None or children:
            raise DeployError("out_spec: a leaf has a context or children")
        return 1
    if not isinstance(context, str):
        raise DeployError(f"out_spec: context of {kind} must be a string")
    try:
        keys = json.loads(context, parse_constant=_no_constant)
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


def _check_shapes(graph: Graph) -> None:
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
            raise DeployError(f"{where}: invalid arguments: {_first_line(exc)}") from exc
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
