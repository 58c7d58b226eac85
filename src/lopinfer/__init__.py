"""LOPInfer: exact, pipelined device/server cooperative inference for PyTorch.

Public names are re-exported here and imported lazily, so ``import lopinfer`` stays
cheap (torch and the transports load on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

# public name -> "module:attribute", resolved on first access (PEP 562)
_LAZY = {
    "capture": "lopinfer.graph:capture",
    "Graph": "lopinfer.graph:Graph",
    "Node": "lopinfer.graph:Node",
    "TiledExecutor": "lopinfer.runtime:TiledExecutor",
    "run_tiled": "lopinfer.runtime:run_tiled",
    "connect": "lopinfer.runtime:connect",
    "loopback": "lopinfer.runtime:loopback",
    "LOPInfer": "lopinfer.runtime:LOPInfer",
    "Server": "lopinfer.runtime:Server",
    "Plan": "lopinfer.scheduler:Plan",
}

__all__ = sorted([*_errors_all, *_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'lopinfer' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
