"""Execution: the row-streaming executor (and, on top of it, client and server)."""

from .executor import Task, TiledExecutor, partition, run_tiled

__all__ = ["TiledExecutor", "Task", "partition", "run_tiled"]
