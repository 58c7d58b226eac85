"""Execution: plans compiled into tasks, the row-streaming executor, client and server."""

from .client import Client, Session, connect
from .executor import TiledExecutor, check_inputs, pack_outputs, partition, run_tiled
from .facade import LOPInfer
from .loopback import loopback
from .program import Bound, Program, Task, bind, compile_plan
from .report import Report
from .server import Server

__all__ = ["TiledExecutor", "Task", "Program", "Bound", "bind", "compile_plan", "partition", "run_tiled",
           "check_inputs", "pack_outputs", "Client", "Session", "connect", "Server",
           "LOPInfer", "loopback", "Report"]
