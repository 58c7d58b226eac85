"""The server's op allow-list: the functional overloads of the ops the catalogue
(:mod:`lopinfer.graph.ops`) marks ``allowed`` — every op with a locality rule, and the
global ops of torchvision classifiers, segmentation nets and ViT/Swin/MaxViT as captured.

Not allowed: anything that mutates, writes an ``out=`` tensor, draws random numbers,
returns uninitialised memory (``empty*``), or returns non-tensors (the TorchScript
list/str/int overloads).
"""

from __future__ import annotations

import torch

from .ops import ALLOWED_PACKETS

__all__ = ["DEFAULT_ALLOWED_OPS"]

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
    ops: set[str] = set()
    for name in sorted(ALLOWED_PACKETS):
        ops.update(_functional_overloads(name))
    return frozenset(ops - _DENIED_OVERLOADS)


#: "aten.NAME.OVERLOAD" names a default server accepts.
DEFAULT_ALLOWED_OPS: frozenset[str] = _allowed_ops()
