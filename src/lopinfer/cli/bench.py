"""``lopinfer bench``: every method side by side in the edge lab (its options and its run
live in :mod:`lopinfer.bench.runner`; this module wires them in)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["HELP", "add_arguments", "run"]

HELP = "every method side by side in the edge lab (or a user-space shaped link)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..bench.runner import add_arguments as add

    add(p)


def run(args: argparse.Namespace) -> int:
    from ..bench.runner import run_args

    sys.stderr = sys.__stderr__  # progress and the lab's messages, as they happen
    return run_args(args)
