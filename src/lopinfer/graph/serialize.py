"""The deploy format of a captured :class:`~lopinfer.graph.ir.Graph`, writing side.

A client sends a graph to a server as two blobs, and the server must never turn bytes into
code (DESIGN.md invariant 2):

- the graph as canonical JSON (``{"format": "lopinfer.graph", "version": 1, ...}``):
  inputs, parameter names/shapes/dtypes, call nodes (ATen op name, arguments, output
  meta), outputs and the output pytree spec;
- the parameter values: one safetensors blob (:func:`pack`, for files), or, for an
  upload, each parameter's own bytes as typed 1-d tensors (:func:`pack_parts`: views of
  the parameters, nothing copied, which the server keeps as they arrive).

:func:`pack` writes both (refusing ops a default server would refuse); the server reads
them back with :func:`~lopinfer.graph.load.unpack` or
:func:`~lopinfer.graph.load.unpack_parts`, the untrusted loader (re-exported here, with
the loader's other public names, for callers that import them from this module).

:func:`content_hash` is a sha256 over the canonical JSON and the raw weight bytes, stable
across processes; a graph loaded back hashes the same as the one that was packed.
"""

from __future__ import annotations

import hashlib
import json
import math
import weakref
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import UnsupportedModelError
from .allowlist import DEFAULT_ALLOWED_OPS
from .format import (
    DEFAULT_LIMITS,
    DTYPE_NAMES,
    DTYPES,
    FORMAT,
    INT64,
    LAYOUT_NAMES,
    LAYOUTS,
    MEMORY_FORMAT_NAMES,
    MEMORY_FORMATS,
    VERSION,
    GraphLimits,
    show,
)
from .ir import Graph, Ref
from .load import graph_from_json, unpack, unpack_parts, weights_from_safetensors

__all__ = [
    "FORMAT",
    "VERSION",
    "DEFAULT_ALLOWED_OPS",
    "GraphLimits",
    "graph_to_json",
    "graph_from_json",
    "weights_to_safetensors",
    "weights_blob",
    "pack_blob",
    "pack_parts",
    "weights_parts",
    "weights_from_safetensors",
    "content_hash",
    "WeightsDigest",
    "weights_digest",
    "hash_with",
    "remember_hash",
    "pack",
    "unpack",
    "unpack_parts",
]

# names of the loader and the format, importable from here as before the split
__all__ += ["DEFAULT_LIMITS", "DTYPES", "MEMORY_FORMATS", "LAYOUTS"]


# -- Graph -> JSON -------------------------------------------------------------------------
def _encode(value: Any, where: str) -> Any:
    if isinstance(value, Ref):
        return {"ref": value.name}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not -INT64 <= value < INT64:
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
    if isinstance(value, torch.dtype) and value in DTYPE_NAMES:
        return {"dtype": DTYPE_NAMES[value]}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format) and value in MEMORY_FORMAT_NAMES:
        return {"memory_format": MEMORY_FORMAT_NAMES[value]}
    if isinstance(value, torch.layout) and value in LAYOUT_NAMES:
        return {"layout": LAYOUT_NAMES[value]}
    raise UnsupportedModelError(
        f"{where}: argument {show(value)} ({type(value).__name__}) cannot be serialised"
    )


def _tensor_spec(name: str, shape: Iterable[int], dtype: torch.dtype, what: str) -> dict:
    if dtype not in DTYPE_NAMES:
        raise UnsupportedModelError(f"{what} {name} has dtype {dtype}, which cannot be deployed")
    return {"name": name, "shape": [int(s) for s in shape], "dtype": DTYPE_NAMES[dtype]}


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
        if t.dtype not in DTYPE_NAMES:
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


# safetensors' names of the format's dtypes (its specification's table)
_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
    torch.int64: "I64", torch.bool: "BOOL",
}
_WEIGHTS_METADATA = {"format": "lopinfer.weights", "version": "1"}


def weights_blob(graph: Graph) -> torch.Tensor:
    """The graph's parameters as a safetensors blob in one uint8 tensor, keyed by
    parameter name, in the graph's order.

    Written here rather than by ``safetensors.torch.save``, which builds the blob twice
    (a Rust buffer, then Python bytes): 3.8 s for vgg19_bn's 575 MB on this machine,
    where first-touching fresh memory costs about 2.5 s per GB. This is one buffer, each
    parameter copied in once, and its slices are the upload's frames as they are. The
    reader stays safetensors' own (:func:`~lopinfer.graph.load.weights_from_safetensors`
    on the server: the untrusted side), and the round trip is tested against it.

    Raises:
        UnsupportedModelError: a parameter dtype outside the format's table.
    """
    params = _cpu_params(graph)
    header: dict[str, Any] = {}
    end = 0
    for name, t in params.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [end, end + n]}
        end += n
    header["__metadata__"] = _WEIGHTS_METADATA
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors pads
    start = 8 + len(text)
    blob = torch.empty(start + end, dtype=torch.uint8)
    blob[:start] = torch.frombuffer(bytearray(len(text).to_bytes(8, "little") + text),
                                    dtype=torch.uint8)
    pos = start
    for t in params.values():
        n = t.numel() * t.element_size()
        if n:
            blob[pos:pos + n] = t.reshape(-1).view(torch.uint8)
        pos += n
    return blob


def weights_parts(graph: Graph, max_bytes: int) -> list[torch.Tensor]:
    """Every parameter, in the graph's order, as 1-d tensors of its own dtype of at most
    ``max_bytes`` each: views of the parameters (a contiguous CPU one is not copied), so
    an upload sends the weights from where they are and the server keeps the tensors it
    receives as the parameters (:func:`~lopinfer.graph.load.unpack_parts`).

    Raises:
        UnsupportedModelError: a parameter dtype outside the format's table.
    """
    parts: list[torch.Tensor] = []
    for t in _cpu_params(graph).values():
        flat = t.reshape(-1)
        step = max(1, max_bytes // t.element_size())
        parts += [flat[a:a + step] for a in range(0, flat.numel(), step)] or [flat]
    return parts


def weights_to_safetensors(graph: Graph) -> bytes:
    """The graph's parameters as a safetensors blob (bytes), keyed by parameter name.

    Raises:
        UnsupportedModelError: a parameter dtype outside the format's table.
    """
    return weights_blob(graph).numpy().tobytes()


# -- hash ------------------------------------------------------------------------------------
def content_hash(graph: Graph) -> str:
    """sha256 (hex) over the canonical JSON and a sha256 of every parameter's raw bytes,
    in the graph's order (:func:`weights_digest`; the JSON names each parameter, its
    shape and dtype, so it says how that byte stream divides).

    Stable across processes and machines (little-endian); a graph loaded back with
    :func:`unpack` hashes the same as the one packed. Servers cache deployed graphs by
    it, and a server hashes the weights as they arrive (:class:`WeightsDigest`).
    """
    return _hash(graph_to_json(graph), graph)


class WeightsDigest:
    """The parameters' byte stream hashed as it comes (a part at a time, any split):
    :func:`hash_with` then binds it to the graph JSON."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"lopinfer.weights/1\0")

    def update(self, part: torch.Tensor) -> None:
        if part.numel():
            self._h.update(part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)

    def digest(self) -> bytes:
        return self._h.digest()


def weights_digest(graph: Graph) -> bytes:
    """sha256 of every parameter's raw bytes, one after the other, in the graph's order."""
    d = WeightsDigest()
    for t in graph.params.values():
        d.update(t)
    return d.digest()


def hash_with(text: str, weights: bytes) -> str:
    """The content hash of graph JSON ``text`` and its parameters' :func:`weights_digest`."""
    data = text.encode("ascii")
    return hashlib.sha256(b"lopinfer.graph/2\0" + len(data).to_bytes(8, "little") + data
                          + weights).hexdigest()


def remember_hash(graph: Graph, text: str, digest: str) -> None:
    """Memoise ``digest`` as the hash of ``graph`` (whose JSON is ``text``), computed from
    its parts as they arrived."""
    try:
        _HASHES[graph] = (_stamp(graph), text, digest)
    except TypeError:
        pass


# graph -> (its parameters' stamp, the JSON hashed, the hash): a deploy hashes a graph
# for the upload, both profiles and the plan book's key; 0.5 GB of weights take seconds
_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stamp(graph: Graph) -> tuple:
    """Changes whenever a parameter is replaced or written in place (version counter)."""
    return tuple((name, id(t), t._version, t.data_ptr()) for name, t in graph.params.items())


def _hash(text: str, graph: Graph) -> str:
    stamp = _stamp(graph)
    known = _HASHES.get(graph)
    if known is not None and known[0] == stamp and known[1] == text:
        return known[2]
    digest = hash_with(text, weights_digest(graph))
    try:
        _HASHES[graph] = (stamp, text, digest)
    except TypeError:  # a graph type that cannot be weakly referenced: no memo
        pass
    return digest


# -- pack / unpack -----------------------------------------------------------------------------
def pack(graph: Graph, *, allowed_ops: Iterable[str] = DEFAULT_ALLOWED_OPS
         ) -> tuple[str, bytes, str]:
    """``(json_text, weights_bytes, content_hash)`` to send ``graph`` to a server.

    Raises:
        UnsupportedModelError: the graph uses ops a default server refuses (they are
            named) or values the format cannot express.
    """
    text, blob, digest = pack_blob(graph, allowed_ops=allowed_ops)
    return text, blob.numpy().tobytes(), digest


def pack_blob(graph: Graph, *, allowed_ops: Iterable[str] = DEFAULT_ALLOWED_OPS
              ) -> tuple[str, torch.Tensor, str]:
    """As :func:`pack`, the weights as one uint8 tensor (:func:`weights_blob`: no copy
    to bytes, for an upload in frames).

    Raises:
        UnsupportedModelError: as :func:`pack`.
    """
    text = _allowed_json(graph, allowed_ops)
    return text, weights_blob(graph), _hash(text, graph)


def pack_parts(graph: Graph, *, allowed_ops: Iterable[str] = DEFAULT_ALLOWED_OPS,
               max_bytes: int = 512 << 20) -> tuple[str, list[torch.Tensor], str]:
    """As :func:`pack`, the weights as :func:`weights_parts` (for an upload in frames).

    Raises:
        UnsupportedModelError: as :func:`pack`.
    """
    text = _allowed_json(graph, allowed_ops)
    return text, weights_parts(graph, max_bytes), _hash(text, graph)


def _allowed_json(graph: Graph, allowed_ops: Iterable[str]) -> str:
    allowed = allowed_ops if isinstance(allowed_ops, (set, frozenset)) else set(allowed_ops)
    refused = sorted({n.target for n in graph.nodes if n.target not in allowed})
    if refused:
        raise UnsupportedModelError(
            f"{graph.name}: ops not in the server allow-list: {', '.join(refused[:8])}"
            + (f" (+{len(refused) - 8} more)" if len(refused) > 8 else ""))
    return graph_to_json(graph)

