"""Capture, the Graph IR, the op catalogue, locality rules and (de)serialisation."""

from ._kernel import Kernel, bind_call
from .capture import capture
from .ir import Graph, Node, Ref, TensorMeta
from .load import (
    DEFAULT_ALLOWED_OPS,
    GraphLimits,
    graph_from_json,
    unpack,
    weights_from_safetensors,
)
from .locality import Dep, Locality, analyse
from .serialize import content_hash, graph_to_json, pack, weights_to_safetensors

__all__ = ["capture", "analyse", "bind_call", "Kernel", "Graph", "Node", "Ref", "TensorMeta", "Dep", "Locality"]
__all__ += [
    "DEFAULT_ALLOWED_OPS", "GraphLimits", "content_hash", "graph_from_json", "graph_to_json",
    "pack", "unpack", "weights_from_safetensors", "weights_to_safetensors",
]
