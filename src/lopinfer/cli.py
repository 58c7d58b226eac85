"""The ``lopinfer`` command line.

Each subcommand is one ``(name, help, add_arguments, run)`` entry in :data:`COMMANDS`;
``run(args) -> int`` returns the exit status. Exit statuses: 0 success, 1 a check ran
and was not exact (``verify``), 2 bad input or a model capture refuses (a one-line
``error: ...`` on stderr), 3 an internal error (a bug: the traceback on stderr),
130 interrupted.
Every subcommand takes ``--json`` for one machine-readable JSON document on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .errors import InputError, LopInferError
from .log import logger

__all__ = ["main", "build_parser", "COMMANDS"]

log = logger("cli")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error: ...`` line and exit status 2, like every bad input."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


class _Usage(LopInferError):
    """A bad command-line value caught after parsing."""


# -- shared options and helpers ------------------------------------------------------------
def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="torchvision:NAME, timm:NAME, package.module:factory or "
                        "path/to/file.py:factory")
    p.add_argument("--input-shape", metavar="SHAPE", default=None,
                   help="example input shape, e.g. 1,3,224,224 (default: the model's own, "
                        "else 1,3,224,224)")
    p.add_argument("--tiled-dim", type=int, default=None, metavar="N",
                   help="dim of the input to tile (default 2: the first spatial dim)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise _Usage(f"bad {what} {text!r}: expected integers like 1,4,7") from None
    if not values or any(v < 1 for v in values):
        raise _Usage(f"bad {what} {text!r}: expected positive integers like 1,4,7")
    return values


def _load(args: argparse.Namespace, *, batch: int | None = None, dtype: str = "float32") -> tuple[Any, Any, str]:
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


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[int] = (),
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
            table = Table(title=title, show_lines=False, header_style="bold")
            for i, h in enumerate(headers):
                table.add_column(h, justify="right" if i in right else "left", no_wrap=True)
            for row in cells:
                table.add_row(*row)
            Console().print(table)
            return
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(out).rstrip()

    if title:
        print(title)
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))


def _human_count(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def _human_bytes(n: int) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n} B"


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, allow_nan=False))


# -- inspect ---------------------------------------------------------------------------
def _inspect_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)


def inspect_graph(graph: Any) -> dict[str, Any]:
    """The ``inspect`` report of a captured graph as a JSON-ready dict."""
    from .graph.flops import flops

    counts = flops(graph)
    nodes = []
    for n in graph.nodes:
        loc = n.locality
        nodes.append({
            "name": n.name,
            "op": n.target,
            "index": n.index,
            "shape": list(n.meta.shape),
            "dtype": str(n.meta.dtype).removeprefix("torch."),
            "bytes": n.meta.nbytes,
            "local": loc is not None,
            "tiled_dim": loc.dim if loc is not None else None,
            "halo": loc.halo() if loc is not None else None,
            "rule": loc.rule if loc is not None else None,
            "module": n.module_path,
            "flops": counts[n.name],
        })
    total = sum(counts.values())
    local = sum(v["flops"] for v in nodes if v["local"])
    n_local = sum(1 for v in nodes if v["local"])
    return {
        "model": graph.name,
        "inputs": {k: {"shape": list(m.shape), "dtype": str(m.dtype).removeprefix("torch.")}
                   for k, m in graph.inputs.items()},
        "nodes": nodes,
        "summary": {
            "nodes": len(nodes),
            "local": n_local,
            "global": len(nodes) - n_local,
            "flops": total,
            "local_flops": local,
            "local_flops_share": local / total if total else 0.0,
            "activation_bytes": sum(v["bytes"] for v in nodes),
            "params": len(graph.params),
            "param_bytes": sum(p.numel() * p.element_size() for p in graph.params.values()),
        },
    }


def _short_op(target: str, index: int | None) -> str:
    op = target.removeprefix("aten.").removesuffix(".default")
    return f"{op}[{index}]" if index is not None else op


def _run_inspect(args: argparse.Namespace) -> int:
    from .graph import analyse, capture

    model, x, name = _load(args)
    graph = capture(model, (x,), name=name)
    if args.tiled_dim is not None:
        analyse(graph, tiled_dim=args.tiled_dim)
    doc = inspect_graph(graph)
    doc["input_shape"] = list(x.shape)
    if args.json:
        _print_json(doc)
        return 0
    rows = [
        (v["name"], _short_op(v["op"], v["index"]),
         f"{v['dtype']}[{','.join(map(str, v['shape']))}]", _human_bytes(v["bytes"]),
         "local" if v["local"] else "GLOBAL", v["tiled_dim"], v["halo"], v["rule"],
         _human_count(v["flops"]) if v["flops"] else "0", v["module"])
        for v in doc["nodes"]
    ]
    _table(["node", "op", "output", "bytes", "kind", "dim", "halo", "rule", "flops", "module"],
           rows, right=(3, 5, 6, 8), title=f"{name} on {list(x.shape)}")
    s = doc["summary"]
    print(
        f"\nnodes: {s['nodes']} total, {s['local']} local, {s['global']} global; "
        f"FLOPs: {_human_count(s['flops'])} total, {s['local_flops_share']:.1%} in local "
        f"operators; params: {_human_bytes(s['param_bytes'])}"
    )
    return 0


# -- verify ----------------------------------------------------------------------------
def _verify_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--tiles", default="1,4,7", metavar="T,...",
                   help="tile counts to check (default 1,4,7)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="batch size (replaces the input shape's first dim)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and input (default 0)")
    p.add_argument("--loopback", choices=("none", "tcp", "ws", "shm"), default="tcp",
                   help="also run every plan kind through a loopback server over this "
                        "transport (plan:<kind> checks; default tcp, none to skip)")


def _run_verify(args: argparse.Namespace) -> int:
    from .verify import report_json, verify

    tiles = _int_list(args.tiles, "--tiles")
    if args.batch is not None and args.batch < 1:
        raise _Usage(f"bad --batch {args.batch}: expected a positive integer")
    model, x, name = _load(args, batch=args.batch, dtype=args.dtype)
    if args.loopback == "none":
        report = verify(model, (x,), tiles, name=name, tiled_dim=args.tiled_dim)
    else:
        from .verify import LoopbackChecks

        with LoopbackChecks(args.loopback) as plans:
            report = verify(model, (x,), tiles, name=name, tiled_dim=args.tiled_dim,
                            runners=plans.runners())
    report["spec"] = args.model
    if args.json:
        _print_json(report_json(report))
    else:
        rows = [(c["name"], f"{c['max_abs_err']:.3g}", f"{c['rel_err']:.3g}",
                 "yes" if c["exact"] else "NO", c["detail"]) for c in report["checks"]]
        _table(["check", "max_abs_err", "rel_err", "exact", "detail"], rows, right=(1, 2),
               title=f"{name} on {args.dtype}{list(x.shape)}")
        verdict = "all exact" if report["exact"] else "NOT EXACT"
        print(f"\n{verdict}; {report['local_nodes']}/{report['nodes']} nodes local, "
              f"{report['local_flops_share']:.1%} of FLOPs in local operators")
    if report["internal_errors"]:
        return 3
    return 0 if report["exact"] else 1


# -- the parser ------------------------------------------------------------------------
Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

def _serve_args(p: argparse.ArgumentParser) -> None:
    from .runtime.serve import add_arguments

    add_arguments(p)


def _run_serve(args: argparse.Namespace) -> int:
    from .runtime.serve import run_args

    sys.stderr = sys.__stderr__  # the server logs for as long as it runs
    return run_args(args)


def parse_rate(text: str) -> float:
    """"10MB/s", "500kB/s", "80Mbit/s", "1e7" -> bytes per second."""
    from .units import parse_rate as parse

    try:
        return parse(text)
    except InputError as exc:
        raise _Usage(str(exc)) from None


def _plan_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--bandwidth", default=None,
                   help="link rate, e.g. 10MB/s (both directions); or measure it with --server")
    p.add_argument("--server", metavar="URL", default=None,
                   help="plan for this server: the link probed and the server's own profile "
                        "(this machine is the client)")
    _add_token_args(p)
    p.add_argument("--rtt", type=float, default=2.0, help="round-trip time in ms (default 2)")
    p.add_argument("--client-speed", type=float, default=None, metavar="X",
                   help="the device is X times slower than this machine (default 18, the "
                        "seed's robot vs server, with this machine profiled as the server; "
                        "with --server: 1, this machine is the client)")
    p.add_argument("--device-profile", default="jetson-xavier-nx",
                   help="power model of the device for the energy column")
    p.add_argument("--objective", choices=("latency", "energy"), default="latency")


def _run_plan(args: argparse.Namespace) -> int:
    from .graph import capture
    from .runtime.profiler import profile
    from .scheduler.cost import CostModel, Link
    from .scheduler.energy import DEVICE_PROFILES, Objective
    from .scheduler.planners import plan_all

    if (args.bandwidth is None) == (args.server is None):
        raise _Usage("give --bandwidth RATE, or --server URL to measure the link")
    if args.device_profile not in DEVICE_PROFILES:
        raise _Usage(f"unknown --device-profile {args.device_profile!r}; known: "
                     f"{', '.join(DEVICE_PROFILES)}")
    model, x, name = _load(args)
    graph = capture(model, (x,), name=name)
    if args.server is not None:
        from .runtime.survey import measured_cost_model
        from .transports import run as run_async

        speed = args.client_speed or 1.0
        mine = profile(graph, (x,), name="client").scaled(speed, "client") if speed != 1 else None
        cm = run_async(measured_cost_model(args.server, graph, token=_token(args),
                                           client_costs=mine))
        bw = cm.up.bandwidth
        args.client_speed = speed
        args.bandwidth = f"measured {bw / 1e6:.3g} MB/s"
    else:
        bw = parse_rate(args.bandwidth)
        args.client_speed = 18.0 if args.client_speed is None else args.client_speed
        server = profile(graph, (x,), name="server(here)")
        client = server.scaled(args.client_speed, "client")
        link = Link(bw, args.rtt / 2000)
        cm = CostModel(client, server, link, Link(bw, args.rtt / 2000))
    obj = Objective(args.objective, None, DEVICE_PROFILES[args.device_profile])
    res = plan_all(graph, cm, obj)
    from .scheduler.limit import physical_limit

    # the best bound over every plan family (and the planners' own plans)
    limit = physical_limit(graph, cm, also=[v.plan for v in res.values()])
    rows: list[dict[str, Any]] = [{"planner": k, "plan": v.plan.name, "latency_ms": 1e3 * v.latency_s,
             "energy_mj": 1e3 * v.energy_j, "bound_ms": 1e3 * v.bound_s,
             "bytes_up": v.prediction.bytes_up, "bytes_down": v.prediction.bytes_down,
             "x_limit": v.latency_s / limit.seconds if limit.seconds else None}
            for k, v in res.items()]
    if args.json:
        _print_json({"model": name, "bandwidth": bw, "server": args.server, "client_speed": args.client_speed,
                     "objective": args.objective, "limit_ms": 1e3 * limit.seconds,
                     "limit_plan": limit.best.plan, "plans": rows,
                     "lopinfer_plan": res["lopinfer"].plan.to_dict()})
    else:
        _table(["planner", "plan", "latency ms", "energy mJ", "bound ms", "up KB", "down KB"],
               [(r["planner"], r["plan"], f"{r['latency_ms']:.2f}", f"{r['energy_mj']:.1f}",
                 f"{r['bound_ms']:.2f}", f"{r['bytes_up'] / 1024:.0f}",
                 f"{r['bytes_down'] / 1024:.0f}") for r in rows], right=(2, 3, 4, 5, 6),
               title=f"{name}: {args.bandwidth} link, device {args.client_speed:g}x slower")
        print(f"limit {1e3 * limit.seconds:.2f} ms ({limit.best.plan}): the best pipeline "
              f"bound over {limit.plans} plans")
    return 0


def _add_token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-file", metavar="F", default=None,
                   help="file holding the server's token (or set LOPINFER_TOKEN)")


def _token(args: argparse.Namespace) -> str:
    if getattr(args, "token_file", None):
        try:
            with open(args.token_file) as f:
                return f.read().strip()
        except OSError as exc:
            raise _Usage(f"--token-file {args.token_file}: {exc.strerror or exc}") from None
    return os.environ.get("LOPINFER_TOKEN", "")


def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="URL", help="the server, e.g. tcp://192.168.50.1:7700")
    _add_token_args(p)
    p.add_argument("--timeout", type=float, default=10.0, help="connect timeout, seconds")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="longest time the probe may take (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def _run_probe(args: argparse.Namespace) -> int:
    from .runtime.survey import probe_report, probe_server
    from .transports import run as run_async

    probe, welcome = run_async(probe_server(args.url, token=_token(args), timeout=args.timeout,
                                            max_seconds=args.seconds))
    doc = probe_report(args.url, probe, welcome)
    if args.json:
        _print_json(doc)
        return 0
    print(f"server {doc['server'] or '?'} ({doc['device']}) at {args.url}")
    print(f"  rtt        {doc['rtt_ms']:.2f} ms")
    print(f"  up         {doc['up_bytes_per_s'] / 1e6:.3g} MB/s")
    print(f"  down       {doc['down_bytes_per_s'] / 1e6:.3g} MB/s")
    print(f"  per frame  {doc['up_frame_us']:.0f} us up, {doc['down_frame_us']:.0f} us down")
    print(f"  measured in {doc['seconds']:.2f} s; plan with: lopinfer plan MODEL "
          f"--server {args.url}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transport", choices=("tcp", "ws", "shm"), default="tcp")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per plan (median)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.transport, args.repeats, args.json)


def _bench_args(p: argparse.ArgumentParser) -> None:
    from .bench.runner import add_arguments

    add_arguments(p)


def _run_bench(args: argparse.Namespace) -> int:
    from .bench.runner import run_args

    sys.stderr = sys.__stderr__  # progress and the lab's messages, as they happen
    return run_args(args)


COMMANDS: list[Command] = [
    ("serve", "serve LOPInfer sessions (graceful stop on SIGINT/SIGTERM)", _serve_args, _run_serve),
    ("demo", "run every plan kind of a built-in model in loopback and print a table",
     _demo_args, _run_demo),
    ("plan", "every planner's plan for a model at a bandwidth: latency, energy, bound",
     _plan_args, _run_plan),
    ("probe", "measure the link to a server: RTT, up/down rate, per-frame cost",
     _probe_args, _run_probe),
    ("inspect", "capture a model and show every node: local or global, halo, FLOPs",
     _inspect_args, _run_inspect),
    ("verify", "run a model plainly and tiled, and check the results are exact",
     _verify_args, _run_verify),
    ("bench", "every method side by side in the edge lab (or a user-space shaped link)",
     _bench_args, _run_bench),
]


def build_parser() -> argparse.ArgumentParser:
    """The ``lopinfer`` parser, one subparser per entry of :data:`COMMANDS`."""
    from . import __version__

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
            _print_json({"error": msg, "type": type(exc).__name__})
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


if __name__ == "__main__":
    sys.exit(main())
