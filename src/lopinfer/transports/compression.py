"""The transport's LZ4 rule, public: when a frame is sent compressed, and the speeds
assumed before any is measured. The planner prices frames by the same rule
(:meth:`lopinfer.scheduler.cost.CostModel.transfer`), so a plan pays what a send pays."""

from ._compress import (
    DECOMPRESS_SPEED_PRIOR,
    DEFAULT_MIN_SIZE,
    HAVE_LZ4,
    MARGIN,
    MIN_GAIN,
    SPEED_PRIOR,
)

__all__ = ["HAVE_LZ4", "DEFAULT_MIN_SIZE", "MIN_GAIN", "MARGIN", "SPEED_PRIOR",
           "DECOMPRESS_SPEED_PRIOR"]
