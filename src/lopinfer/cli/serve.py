"""``lopinfer serve``: the server (its options and its run live in
:mod:`lopinfer.runtime.serve`; this module wires them in)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["HELP", "add_arguments", "run"]

HELP = "serve LOPInfer sessions (graceful stop on SIGINT/SIGTERM)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..runtime.serve import add_arguments as add

    add(p)


def run(args: argparse.Namespace) -> int:
    from ..runtime.serve import run_args

    sys.stderr = sys.__stderr__  # the server logs for as long as it runs
    return run_args(args)
