"""The ``lopinfer`` command line: ``serve``, ``demo``, ``plan``, ``probe``, ``inspect``,
``verify``, ``bench``, one module each; :mod:`.main` assembles the parser and runs it;
:mod:`.models` loads a model from a ``MODEL`` string.

Nothing heavy is imported here: torch and the runtime load when a command runs.
"""

from .common import parse_rate
from .inspect import inspect_graph
from .main import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "inspect_graph", "main", "parse_rate"]
