"""The deploy format's constants, shared by the writer (:mod:`.serialize`) and the
untrusted loader (:mod:`.load`): its name and version, the fixed tables of dtypes, memory
formats and layouts a graph may name, and the size bounds a deployed graph respects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "FORMAT", "VERSION", "DTYPES", "DTYPE_NAMES", "MEMORY_FORMATS", "MEMORY_FORMAT_NAMES",
    "LAYOUTS", "LAYOUT_NAMES", "INT64", "GraphLimits", "DEFAULT_LIMITS", "show", "first_line",
]

FORMAT = "lopinfer.graph"
VERSION = 1

# -- fixed tables: the only dtypes, devices, memory formats and layouts a graph may name -----
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "uint8": torch.uint8, "int8": torch.int8,
    "int16": torch.int16, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last,
    "channels_last_3d": torch.channels_last_3d, "preserve_format": torch.preserve_format,
}
MEMORY_FORMAT_NAMES = {v: k for k, v in MEMORY_FORMATS.items()}
LAYOUTS: dict[str, torch.layout] = {"strided": torch.strided}
LAYOUT_NAMES = {v: k for k, v in LAYOUTS.items()}
INT64 = 2**63


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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

