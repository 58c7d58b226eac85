"""``lopinfer demo``: every plan kind of a built-in model in loopback, as a table (the
work is :func:`lopinfer.demo.run_demo`; this module only prints it)."""

from __future__ import annotations

import argparse
import asyncio
import json

from .common import add_json_arg

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run every plan kind of a built-in model in loopback and print a table"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transport", choices=("tcp", "ws", "shm"), default="tcp")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per plan (median)")
    add_json_arg(p, "print JSON")


def run(args: argparse.Namespace) -> int:
    from ..demo import format_table, run_demo

    result = asyncio.run(run_demo(transport=args.transport, repeats=args.repeats))
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0 if all(r["exact"] for r in result["rows"]) else 1
