"""The ``lopinfer`` command line: the parser, assembled from one module per subcommand,
and :func:`main`.

Each subcommand module has ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
:data:`COMMANDS` lists them as ``(name, help, add_arguments, run)``. Exit statuses:
0 success, 1 a check ran and was not exact (``verify``), 2 bad input or a model capture
refuses (a one-line ``error: ...`` on stderr), 3 an internal error (a bug: the traceback
on stderr), 130 interrupted.
Every subcommand takes ``--json`` for one machine-readable JSON document on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, NoReturn

from ..errors import LopInferError
from . import bench, demo, inspect, plan, probe, serve, verify
from .common import print_json

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None],
                Callable[[argparse.Namespace], int]]


def _command(name: str, module: ModuleType) -> Command:
    return (name, module.HELP, module.add_arguments, module.run)


COMMANDS: list[Command] = [
    _command("serve", serve),
    _command("demo", demo),
    _command("plan", plan),
    _command("probe", probe),
    _command("inspect", inspect),
    _command("verify", verify),
    _command("bench", bench),
]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error: ...`` line and exit status 2, like every bad input."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The ``lopinfer`` parser, one subparser per entry of :data:`COMMANDS`."""
    from .. import __version__

    parser = _Parser(prog="lopinfer", description="Exact cooperative inference with local operators.")
    parser.add_argument("--version", action="version", version=f"lopinfer {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


@contextlib.contextmanager
def _quiet_torch_logs() -> Any:
    """Raise torch's loggers to ERROR for the duration (torch.export logs graphs and
    guard warnings when a capture fails; the one-line error says why)."""
    saved = []
    for name, lg in list(logging.root.manager.loggerDict.items()):
        if (name == "torch" or name.startswith("torch.")) and isinstance(lg, logging.Logger):
            saved.append((lg, lg.level))
            lg.setLevel(logging.ERROR)
    if not any(lg.name == "torch" for lg, _ in saved):
        root = logging.getLogger("torch")
        saved.append((root, root.level))
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lopinfer`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    noise = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.ExitStack() as stack:
            if args.verbose == 0:
                warnings.simplefilter("ignore")  # library deprecation chatter
            if args.verbose < 2:
                # torch.export prints partial graphs to stderr when a capture fails
                stack.enter_context(contextlib.redirect_stderr(noise))
                stack.enter_context(_quiet_torch_logs())
            return args._run(args)
    except LopInferError as exc:
        msg = " ".join(str(exc).split())  # one line, whatever the message holds
        sys.stderr.write(f"error: {msg}\n")
        if getattr(args, "json", False):
            print_json({"error": msg, "type": type(exc).__name__})
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except BrokenPipeError:  # e.g. `lopinfer inspect ... | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception:  # a bug, not bad input: show what was held back, then the traceback
        sys.stderr.write(noise.getvalue())
        traceback.print_exc()
        return 3
