#!/usr/bin/env python3
"""Do the server's default limits admit every torchvision model at 1x3x1024x1024?

For each classification and segmentation model (random weights): capture at the size
(models that only run at their own size are captured there and said so), then the
peak activation bytes, the largest value, total and per-node FLOPs against
``ServerLimits()``. Needs torchvision (the vision env). Not run in CI.

    scripts/limits_survey.py [--size 1024] [--models resnet50,vgg19_bn] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision

import lopinfer
from lopinfer.graph.flops import node_flops
from lopinfer.runtime.limits import ServerLimits, check_graph, peak_activation_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--models", default="")
    p.add_argument("--json")
    args = p.parse_args()
    names = args.models.split(",") if args.models else sorted(
        torchvision.models.list_models(module=torchvision.models))
    limits, rows = ServerLimits(), []
    for name in names:
        t0 = time.perf_counter()
        model = torchvision.models.get_model(name, weights=None).eval()
        size = args.size
        try:
            graph = lopinfer.capture(model, (torch.randn(1, 3, size, size),))
        except Exception as exc:  # fixed-size models (ViT...): their own size
            size = 224 if "inception" not in name else 299
            try:
                graph = lopinfer.capture(model, (torch.randn(1, 3, size, size),))
            except Exception:
                rows.append({"model": name, "error": str(exc).splitlines()[0][:120]})
                print(rows[-1], flush=True)
                continue
        flops = [node_flops(graph, n) for n in graph.nodes]
        row = {"model": name, "size": size, "peak_gib": peak_activation_bytes(graph) / 2**30,
               "largest_gib": max(n.meta.nbytes for n in graph.nodes) / 2**30,
               "tflops": sum(flops) / 1e12, "max_node_gflops": max(flops) / 1e9}
        try:
            check_graph(graph, limits)
            row["admitted"] = True
        except lopinfer.errors.LopInferError as exc:
            row["admitted"], row["why"] = False, str(exc)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(row, flush=True)
    refused = [r["model"] for r in rows if r.get("admitted") is False]
    print(f"{len(rows)} models, {sum(bool(r.get('admitted')) for r in rows)} admitted, "
          f"refused: {refused}, errors: {[r['model'] for r in rows if 'error' in r]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
