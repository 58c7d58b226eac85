"""Plans are data: which rows of which node each peer computes, in which tiles.

A :class:`Plan` names, per node, the row ranges (tiles) the client and the server
compute along the node's tiled dim. A global node has one "row", its whole output:
its only legal ranges are ``[]`` or ``[(0, 1)]``. Inputs live on the client; their
``input_edges`` say in which pieces they stream to the server when it needs them.

Transfers are not stored: they follow from the ranges (rows a peer needs and does not
compute cross from the other peer, halos included) and are derived by
:func:`lopinfer.scheduler.compile.compile_program`, which also validates the plan.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import PlanError
from ..graph import Graph

__all__ = ["Plan", "NodeRows", "Split", "PEERS", "WHOLE", "CRITICAL"]

PEERS = ("client", "server")
WHOLE = (0, 1)  # the one "row" of a global node: its whole output
CRITICAL = "~cp"  # a plan name's suffix: its ranks order tasks by their critical path

Interval = tuple[int, int]


@dataclass(frozen=True)
class NodeRows:
    """Tiles of one node on each peer (row ranges along its tiled dim)."""

    client: tuple[Interval, ...] = ()
    server: tuple[Interval, ...] = ()

    def on(self, peer: str) -> tuple[Interval, ...]:
        return self.client if peer == "client" else self.server


@dataclass(frozen=True)
class Split:
    """An intra-layer split: the client computes the first ``fraction`` of each node of
    ``graph.nodes[start:stop]``, the server the rest; halos sent or recomputed."""

    fraction: float
    start: int
    stop: int
    halo: str


@dataclass
class Plan:
    """Per node, the tiles each peer computes; per input, its streaming pieces.

    How a builder made it, as typed fields (never parsed back out of ``name``):
    ``tiles`` (its uniform tile count, None for another spec), ``cut`` (the first
    server node of a cut), ``split``; and who chose it: ``planner``, ``candidates``
    (how many plans that planner scored) and ``search_s`` (the seconds it searched). ``info`` is free-form (a user's notes).

    ``ranks``, when given, orders each peer's ready tasks (:mod:`lopinfer.scheduler.order`):
    per node, one number per tile (the client's tiles in row order, then the server's),
    larger first. The planner sets them to each tile's critical path to the end of the
    inference where that shortens the predicted makespan; without them a tile's rank is
    its node's position in the graph (deepest first). They travel with the plan so both
    peers order their tasks by the same numbers the simulator scored."""

    name: str
    nodes: dict[str, NodeRows]
    input_edges: dict[str, tuple[int, ...]] = field(default_factory=dict)
    kind: str = "custom"
    info: dict[str, Any] = field(default_factory=dict)
    tiles: int | None = None
    cut: int | None = None
    split: Split | None = None
    planner: str = ""
    candidates: int = 0
    search_s: float = 0.0
    ranks: dict[str, tuple[float, ...]] = field(default_factory=dict)

    # -- queries --------------------------------------------------------------------------
    def peers_of(self, node: str) -> list[str]:
        rows = self.nodes.get(node, NodeRows())
        return [p for p in PEERS if rows.on(p)]

    @property
    def base_name(self) -> str:
        """The name without the critical-path order's suffix (a plan re-tiled or
        re-scored from this one is ordered anew)."""
        return self.name.removesuffix(CRITICAL)

    def is_local_only(self) -> bool:
        return all(not r.server for r in self.nodes.values())

    def uses_server(self) -> bool:
        return any(r.server for r in self.nodes.values())

    # -- validation -----------------------------------------------------------------------
    def check_shape(self, graph: Graph) -> None:
        """Structural checks against ``graph`` (rows in range, no peer computing a row
        twice, globals whole). :func:`compile_program` also checks every needed row exists."""
        known = {n.name for n in graph}
        for name in self.nodes:
            if name not in known:
                raise PlanError(f"plan {self.name!r} names {name!r}, not a node of the graph")
        for node in graph:
            rows = self.nodes.get(node.name)
            if rows is None:
                raise PlanError(f"plan {self.name!r} says nothing about node {node.name}")
            size = node.locality.size if node.locality else 1
            for peer in PEERS:
                tiles = sorted(rows.on(peer))
                if node.locality is None and tiles not in ([], [WHOLE]):
                    raise PlanError(
                        f"plan {self.name!r} computes global node {node.name} partially on "
                        f"the {peer}: {tiles} (a global node is computed whole or not at all)"
                    )
                for a, b in tiles:
                    if not 0 <= a < b <= size:
                        raise PlanError(
                            f"plan {self.name!r}: rows [{a}, {b}) of {node.name} are outside "
                            f"[0, {size})"
                        )
                for (_, b0), (a1, _) in zip(tiles, tiles[1:]):
                    if a1 < b0:
                        raise PlanError(
                            f"plan {self.name!r}: the {peer} computes rows of {node.name} twice "
                            f"(tiles overlap at {a1})"
                        )
            if not rows.client and not rows.server:
                continue  # nothing computes it: fine unless something needs it (compile)
        for name, ranks in self.ranks.items():
            rows = self.nodes.get(name)
            if rows is None:
                raise PlanError(f"plan {self.name!r} ranks {name!r}, not a node of the plan")
            count = len(rows.client) + len(rows.server)
            if len(ranks) != count:
                raise PlanError(f"plan {self.name!r}: {len(ranks)} ranks for node {name}, "
                                f"which has {count} tiles")
        for name, edges in self.input_edges.items():
            if name not in graph.inputs:
                raise PlanError(f"plan {self.name!r} streams {name!r}, not an input")
            if list(edges) != sorted(set(edges)) or len(edges) < 2 or edges[0] != 0:
                raise PlanError(f"plan {self.name!r}: bad input edges for {name}: {edges}")

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": "lopinfer.plan",
            "version": 1,
            "name": self.name,
            "kind": self.kind,
            "info": self.info,
            "tiles": self.tiles,
            "cut": self.cut,
            "split": None if self.split is None else vars_of(self.split),
            "planner": self.planner,
            "candidates": self.candidates,
            "search_s": self.search_s,
            "input_edges": {k: list(v) for k, v in self.input_edges.items()},
            "nodes": {
                k: {"client": [list(t) for t in v.client], "server": [list(t) for t in v.server]}
                for k, v in self.nodes.items()
            },
        }
        if self.ranks:  # absent when none: a plan without them reads as it always did
            d["ranks"] = {k: list(v) for k, v in self.ranks.items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes | Mapping[str, Any]) -> Plan:
        """Parse a plan (validated for form here, against a graph by ``check_shape``)."""
        try:
            d = json.loads(text) if isinstance(text, (str, bytes)) else dict(text)
            if d.get("format") != "lopinfer.plan" or d.get("version") != 1:
                raise PlanError("not a lopinfer.plan version 1 document")
            nodes = {
                str(k): NodeRows(_intervals(v.get("client", [])), _intervals(v.get("server", [])))
                for k, v in d["nodes"].items()
            }
            edges = {str(k): tuple(int(e) for e in v) for k, v in d.get("input_edges", {}).items()}
            info = d.get("info", {})
            if not isinstance(info, dict):
                raise PlanError("plan info must be an object")
            split = d.get("split")
            split = None if split is None else Split(
                float(split["fraction"]), int(split["start"]), int(split["stop"]),
                str(split["halo"]))
            tiles, cut = d.get("tiles"), d.get("cut")
            ranks = {str(k): _ranks(v) for k, v in d.get("ranks", {}).items()}
            return cls(str(d["name"]), nodes, edges, str(d.get("kind", "custom")), info,
                       None if tiles is None else int(tiles), None if cut is None else int(cut),
                       split, str(d.get("planner", "")), int(d.get("candidates", 0)),
                       float(d.get("search_s", 0.0)), ranks)
        except PlanError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PlanError(f"malformed plan JSON: {type(exc).__name__}: {exc}") from exc

    # -- display --------------------------------------------------------------------------
    def summary(self) -> dict[str, int]:
        counts = {"client_tiles": 0, "server_tiles": 0, "client_nodes": 0, "server_nodes": 0}
        for rows in self.nodes.values():
            counts["client_tiles"] += len(rows.client)
            counts["server_tiles"] += len(rows.server)
            counts["client_nodes"] += bool(rows.client)
            counts["server_nodes"] += bool(rows.server)
        return counts

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"Plan({self.name!r}, kind={self.kind}, client: {s['client_nodes']} nodes/"
            f"{s['client_tiles']} tiles, server: {s['server_nodes']} nodes/{s['server_tiles']} tiles)"
        )

    def describe(self, graph: Graph | None = None) -> str:
        """One line per node: its tiles on each peer (compact)."""
        lines = [repr(self)]
        order = [n.name for n in graph] if graph is not None else list(self.nodes)
        for name in order:
            rows = self.nodes.get(name, NodeRows())
            lines.append(f"  {name:<28} client {_fmt(rows.client):<24} server {_fmt(rows.server)}")
        return "\n".join(lines)


def vars_of(split: Split) -> dict[str, Any]:
    return {"fraction": split.fraction, "start": split.start, "stop": split.stop,
            "halo": split.halo}


def _intervals(v: Iterable[Any]) -> tuple[Interval, ...]:
    out = []
    for t in v:
        a, b = t
        out.append((int(a), int(b)))
    return tuple(out)


def _ranks(v: Iterable[Any]) -> tuple[float, ...]:
    out = tuple(float(x) for x in v)
    if not all(math.isfinite(x) for x in out):
        raise PlanError("plan ranks must be finite numbers")
    return out


def _fmt(tiles: tuple[Interval, ...]) -> str:
    if not tiles:
        return "-"
    if tiles == (WHOLE,):
        return "whole"
    return f"[{tiles[0][0]}:{tiles[-1][1]}) in {len(tiles)}"
