"""What the subcommands share: the MODEL options and loading, value parsing, tokens, and
output (aligned tables, JSON, human units)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import InputError, LopInferError

__all__ = [
    "Usage",
    "add_json_arg",
    "add_model_args",
    "add_token_args",
    "human_bytes",
    "human_count",
    "int_list",
    "load",
    "parse_rate",
    "print_json",
    "table",
    "token",
]


class Usage(LopInferError):
    """A bad command-line value caught after parsing."""


# -- options ---------------------------------------------------------------------------
def add_json_arg(p: argparse.ArgumentParser, help_text: str = "print one JSON document") -> None:
    p.add_argument("--json", action="store_true", help=help_text)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``MODEL``, ``--input-shape``, ``--tiled-dim`` and ``--json``."""
    p.add_argument("model", metavar="MODEL",
                   help="torchvision:NAME, timm:NAME, package.module:factory or "
                        "path/to/file.py:factory")
    p.add_argument("--input-shape", metavar="SHAPE", default=None,
                   help="example input shape, e.g. 1,3,224,224 (default: the model's own, "
                        "else 1,3,224,224)")
    p.add_argument("--tiled-dim", type=int, default=None, metavar="N",
                   help="dim of the input to tile (default 2: the first spatial dim)")
    add_json_arg(p)


def add_token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-file", metavar="F", default=None,
                   help="file holding the server's token (or set LOPINFER_TOKEN)")


# -- values ----------------------------------------------------------------------------
def int_list(text: str, what: str) -> list[int]:
    """``"1,4,7"`` -> ``[1, 4, 7]``; :class:`Usage` unless positive integers."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise Usage(f"bad {what} {text!r}: expected integers like 1,4,7") from None
    if not values or any(v < 1 for v in values):
        raise Usage(f"bad {what} {text!r}: expected positive integers like 1,4,7")
    return values


def parse_rate(text: str) -> float:
    """"10MB/s", "500kB/s", "80Mbit/s", "1e7" -> bytes per second."""
    from ..units import parse_rate as parse

    try:
        return parse(text)
    except InputError as exc:
        raise Usage(str(exc)) from None


def token(args: argparse.Namespace) -> str:
    """The token from ``--token-file``, else ``$LOPINFER_TOKEN``, else ``""``."""
    if getattr(args, "token_file", None):
        try:
            with open(args.token_file) as f:
                return f.read().strip()
        except OSError as exc:
            raise Usage(f"--token-file {args.token_file}: {exc.strerror or exc}") from None
    return os.environ.get("LOPINFER_TOKEN", "")


def load(args: argparse.Namespace, *, batch: int | None = None,
         dtype: str = "float32") -> tuple[Any, Any, str]:
    """(model, example input, name) from the common options; seeds torch first."""
    import torch

    from .models import load_model, parse_shape

    torch.manual_seed(getattr(args, "seed", 0))
    loaded = load_model(args.model)
    shape = loaded.example_shape(parse_shape(args.input_shape) if args.input_shape else None)
    if batch is not None:
        shape = (batch, *shape[1:])
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    model = loaded.module.to(torch_dtype)
    if loaded.example is not None and tuple(shape) == loaded.input_shape and dtype == "float32":
        return model, loaded.example_input(), loaded.name  # a real frame or grid (lopinfer:)
    x = torch.randn(shape, dtype=torch_dtype)
    return model, x, loaded.name


# -- output ----------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = (),
          title: str | None = None) -> None:
    """Print an aligned table: with rich on a terminal, else as plain text."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            t = Table(title=title, show_lines=False, header_style="bold")
            for i, h in enumerate(headers):
                t.add_column(h, justify="right" if i in right else "left", no_wrap=True)
            for row in cells:
                t.add_row(*row)
            Console().print(t)
            return
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if i in right else v.ljust(w)
               for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(out).rstrip()

    if title:
        print(title)
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))


def human_count(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def human_bytes(n: int) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n} B"


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, allow_nan=False))
