"""Plan books on disk: a second deploy of the same model on the same peers and link
plans nothing.

A grid point's plans are stored under a key made of everything that decides them: the
graph's content hash, both peers' measured costs, the link's latency and per-frame
costs (in half-octave buckets: two probes of one link differ by a few percent, and
plans do not change with that), the compression mode, the objective, the methods and
the grid point's bandwidth. Files live in ``$LOPINFER_CACHE/plans`` (default
``~/.cache/lopinfer/plans``), one JSON per key, written then renamed. A file that does
not parse is ignored and planned again: this is this machine's own cache, but a plan
read from it is still validated (``Plan.from_json``) and compiled before it runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

from .cost import CostModel, costs_to_json
from .energy import Objective
from .plan import Plan
from .planners import Scored
from .simulator import Prediction

__all__ = ["BookStore", "book_key"]

FORMAT = 2  # 2: plans carry ranks (critical-path order)
_PREDICTION = ("latency_s", "client_busy_s", "server_busy_s", "bytes_up", "bytes_down",
               "frames_up", "frames_down", "wire_up", "wire_down")


def _bucket(x: float) -> int | None:
    """Half-octave bucket of a positive time (None for 0)."""
    return None if x <= 0 else round(2 * math.log2(x))


def book_key(graph_hash: str, cost: CostModel, objective: Objective,
             methods: tuple[str, ...]) -> str:
    """What decides a plan book's plans, but the bandwidth (see the module docstring)."""
    doc = {
        "format": FORMAT, "graph": graph_hash,
        "client": costs_to_json(cost.client), "server": costs_to_json(cost.server),
        "link": [_bucket(cost.up.latency), _bucket(cost.down.latency),
                 _bucket(cost.up.frame_overhead), _bucket(cost.down.frame_overhead),
                 round(4 * math.log2(cost.down.bandwidth / cost.up.bandwidth))],
        "compression": cost.compression, "objective": repr(objective),
        "methods": list(methods),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _scored_to_dict(s: Scored) -> dict[str, Any]:
    return {"plan": s.plan.to_dict(), "energy_j": s.energy_j, "bound_s": s.bound_s,
            "prediction": {k: getattr(s.prediction, k) for k in _PREDICTION}}


def _scored_from_dict(d: dict[str, Any]) -> Scored:
    pred = Prediction(**{k: type(getattr(Prediction(0.0), k))(d["prediction"][k])
                         for k in _PREDICTION})
    return Scored(Plan.from_json(d["plan"]), pred, float(d["energy_j"]), float(d["bound_s"]))


class BookStore:
    """Where one plan book's grid points are kept (``key``: :func:`book_key`)."""

    def __init__(self, key: str, root: str | Path | None = None) -> None:
        base = Path(root) if root is not None else Path(
            os.environ.get("LOPINFER_CACHE", Path.home() / ".cache" / "lopinfer"))
        self.dir = base / "plans"
        self.key = key
        self.hits = self.misses = 0

    def _path(self, bandwidth: float) -> Path:
        return self.dir / f"{self.key[:40]}-{bandwidth:.6g}.json"

    def get(self, bandwidth: float, *, quick: bool = False
            ) -> tuple[dict[str, Scored], bool] | None:
        """(the plans stored for ``bandwidth``, whether they were planned under the quick
        budget); quick ones only when ``quick`` (a deploy waiting for its first plan
        takes them, a full search does not)."""
        try:
            d = json.loads(self._path(bandwidth).read_text())
            if d.get("key") != self.key:
                raise ValueError("another key")
            if d.get("quick") and not quick:
                raise ValueError("planned under the quick budget")
            plans = {str(m): _scored_from_dict(v) for m, v in d["plans"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            self.misses += 1
            return None
        self.hits += 1
        return plans, bool(d.get("quick"))

    def put(self, bandwidth: float, plans: dict[str, Scored], *, quick: bool = False) -> None:
        """Keep ``plans`` for ``bandwidth``; ``quick`` ones never replace full ones."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self._path(bandwidth)
            if quick and self.get(bandwidth) is not None:
                return
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps({"key": self.key, "quick": quick,
                                       "plans": {m: _scored_to_dict(s) for m, s in plans.items()}}))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache: plans are simply made again next time
