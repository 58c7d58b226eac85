"""``lopinfer probe URL``: measure the link to a server (RTT, up/down rate, per-frame
cost) with the same active probe a deploy runs."""

from __future__ import annotations

import argparse

from .common import add_json_arg, add_token_args, print_json, token

__all__ = ["HELP", "add_arguments", "run"]

HELP = "measure the link to a server: RTT, up/down rate, per-frame cost"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="URL", help="the server, e.g. tcp://192.168.50.1:7700")
    add_token_args(p)
    p.add_argument("--timeout", type=float, default=10.0, help="connect timeout, seconds")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="longest time the probe may take (default 2)")
    add_json_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..runtime.survey import probe_report, probe_server
    from ..transports import run as run_async

    probe, welcome = run_async(probe_server(args.url, token=token(args), timeout=args.timeout,
                                            max_seconds=args.seconds))
    doc = probe_report(args.url, probe, welcome)
    if args.json:
        print_json(doc)
        return 0
    print(f"server {doc['server'] or '?'} ({doc['device']}) at {args.url}")
    print(f"  rtt        {doc['rtt_ms']:.2f} ms")
    print(f"  up         {doc['up_bytes_per_s'] / 1e6:.3g} MB/s")
    print(f"  down       {doc['down_bytes_per_s'] / 1e6:.3g} MB/s")
    print(f"  per frame  {doc['up_frame_us']:.0f} us up, {doc['down_frame_us']:.0f} us down")
    print(f"  measured in {doc['seconds']:.2f} s; plan with: lopinfer plan MODEL "
          f"--server {args.url}")
    return 0
