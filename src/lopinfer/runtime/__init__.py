"""Execution: plans compiled into tasks, the row-streaming executor."""

from .executor import TiledExecutor, check_inputs, pack_outputs, partition, run_tiled
from .program import Program, Task, compile_plan

__all__ = ["TiledExecutor", "Task", "Program", "compile_plan", "partition", "run_tiled",
           "check_inputs", "pack_outputs"]
