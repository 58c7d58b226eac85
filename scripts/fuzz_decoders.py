#!/usr/bin/env python3
"""Coverage-guided fuzzing of the decoders a peer's bytes reach first (not run in CI).

Targets: the frame decoder with the server's limits after hello and before it (no
tensor frames, 64 KiB), and the control-message decoder. The only exception allowed
out of them is ``ProtocolError``; anything else is a crash atheris reports.

    pip install atheris
    scripts/fuzz_decoders.py --runs 200000            # a fixed number of inputs
    scripts/fuzz_decoders.py --runs 200000 --target message
"""

from __future__ import annotations

import argparse
import sys

import atheris
import torch

with atheris.instrument_imports(include=["lopinfer"]):
    from lopinfer.errors import ProtocolError
    from lopinfer.runtime.protocol import Deploy, Hello
    from lopinfer.transports import (
        Frame,
        Limits,
        decode_frame,
        decode_message,
        encode_frame,
        encode_message,
    )

AFTER_HELLO = Limits(64 << 20, 64 << 20, 8)  # smaller than the default: fuzz allocations stay small
BEFORE_HELLO = Limits(0, 64 << 10, 8, tensors=False)


def frame_target(data: bytes) -> None:
    for limits in (AFTER_HELLO, BEFORE_HELLO):
        try:
            decode_frame(data, limits=limits)
        except ProtocolError:
            pass


def message_target(data: bytes) -> None:
    try:
        decode_message(data)
    except ProtocolError:
        pass


def seeds(target: str) -> list[bytes]:
    if target == "message":  # msgpack bodies
        return [encode_message(Hello(token="abc", client_name="fuzz")),
                encode_message(Deploy(graph_json="{}", content_hash="0" * 64, weights_parts=1, weights_size=4))]
    return [encode_frame(Frame(tensor=torch.randn(2, 3, 4), dim=1, row_start=0, row_stop=3)),
            encode_frame(Hello(token="abc", client_name="fuzz"))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--target", choices=("frame", "message"), default="frame")
    args, rest = p.parse_known_args()
    target = frame_target if args.target == "frame" else message_target
    import tempfile

    corpus = tempfile.mkdtemp(prefix="lopinfer-fuzz-")
    for i, seed in enumerate(seeds(args.target)):  # valid frames to mutate from
        target(seed)
        with open(f"{corpus}/seed{i}", "wb") as f:
            f.write(seed)
    atheris.Setup([sys.argv[0], f"-runs={args.runs}", *rest, corpus], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
