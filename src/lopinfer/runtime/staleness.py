"""Noticing that a deployed model's weights changed on the client.

After ``deploy`` the server holds a copy of the weights. If the user then changes the
model (an optimiser step, ``load_state_dict``, an in-place edit, a new ``Parameter``),
a split plan would mix the server's old weights with the client's new ones and match
neither model. :class:`ModelWatch` stamps every parameter and buffer with its version
counter (bumped by every in-place write), data pointer, shape and dtype, and compares
the stamp before each inference: a few microseconds per tensor, no data read.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

from torch import nn

from ..graph import Graph

__all__ = ["ModelWatch"]


def _stamp(module: nn.Module) -> list[tuple[Any, ...]]:
    out = []
    for name, t in chain(module.named_parameters(), module.named_buffers()):
        try:
            version = t._version
        except RuntimeError:  # an inference-mode tensor has no version counter
            version = -1
        out.append((name, t.data_ptr(), version, tuple(t.shape), t.dtype))
    return out


class ModelWatch:
    """Watches ``module``'s parameters and buffers; ``recapture(inputs)`` makes a new
    graph of the module as it is now (``capture_fn`` captures it)."""

    def __init__(self, module: nn.Module, capture_fn: Callable[[Any], Graph]) -> None:
        self.module = module
        self._capture = capture_fn
        self._seen = _stamp(module)

    def changed(self) -> bool:
        """True when any parameter or buffer was written, replaced, added or removed."""
        return _stamp(self.module) != self._seen

    def recapture(self, inputs: Any) -> Graph:
        """A graph of the module's current weights (and the stamp taken anew)."""
        self._seen = _stamp(self.module)
        return self._capture(inputs)

    def __repr__(self) -> str:
        return f"<ModelWatch {type(self.module).__name__} tensors={len(self._seen)}>"
