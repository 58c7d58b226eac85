"""``lopinfer verify MODEL``: run a model plainly and split (tiled, and every plan kind
through a loopback server), and check each result is exact (DESIGN.md invariant 1).

Exit status 1 when a check ran and was not exact, 3 when one crashed on a bug."""

from __future__ import annotations

import argparse

from .common import Usage, add_model_args, int_list, load, print_json, table

__all__ = ["HELP", "add_arguments", "run"]

HELP = "run a model plainly and tiled, and check the results are exact"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--tiles", default="1,4,7", metavar="T,...",
                   help="tile counts to check (default 1,4,7)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="batch size (replaces the input shape's first dim)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and input (default 0)")
    p.add_argument("--loopback", choices=("none", "tcp", "ws", "shm"), default="tcp",
                   help="also run every plan kind through a loopback server over this "
                        "transport (plan:<kind> checks; default tcp, none to skip)")


def run(args: argparse.Namespace) -> int:
    from .. import verify as lib  # looked up at call time: tests replace lib.verify

    tiles = int_list(args.tiles, "--tiles")
    if args.batch is not None and args.batch < 1:
        raise Usage(f"bad --batch {args.batch}: expected a positive integer")
    model, x, name = load(args, batch=args.batch, dtype=args.dtype)
    if args.loopback == "none":
        report = lib.verify(model, (x,), tiles, name=name, tiled_dim=args.tiled_dim)
    else:
        with lib.LoopbackChecks(args.loopback) as plans:
            report = lib.verify(model, (x,), tiles, name=name, tiled_dim=args.tiled_dim,
                                runners=plans.runners())
    report["spec"] = args.model
    if args.json:
        print_json(lib.report_json(report))
    else:
        rows = [(c["name"], f"{c['max_abs_err']:.3g}", f"{c['rel_err']:.3g}",
                 "yes" if c["exact"] else "NO", c["detail"]) for c in report["checks"]]
        table(["check", "max_abs_err", "rel_err", "exact", "detail"], rows, right=(1, 2),
              title=f"{name} on {args.dtype}{list(x.shape)}")
        verdict = "all exact" if report["exact"] else "NOT EXACT"
        print(f"\n{verdict}; {report['local_nodes']}/{report['nodes']} nodes local, "
              f"{report['local_flops_share']:.1%} of FLOPs in local operators")
    if report["internal_errors"]:
        return 3
    return 0 if report["exact"] else 1
