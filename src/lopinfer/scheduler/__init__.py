"""Plans (data) and the builders, planners and cost models that make them."""

from .builders import (
    TileSpec,
    cut_plan,
    local_plan,
    local_segments,
    node_tiles,
    offload_plan,
    partition,
    split_plan,
)
from .plan import PEERS, WHOLE, NodeRows, Plan

__all__ = [
    "Plan",
    "NodeRows",
    "PEERS",
    "WHOLE",
    "TileSpec",
    "partition",
    "node_tiles",
    "local_plan",
    "offload_plan",
    "cut_plan",
    "split_plan",
    "local_segments",
]
