"""``lopinfer inspect MODEL``: capture a model and show every node: local or global, its
halo, its rule, its FLOPs."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_model_args, human_bytes, human_count, load, print_json, table

__all__ = ["HELP", "add_arguments", "inspect_graph", "run"]

HELP = "capture a model and show every node: local or global, halo, FLOPs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)


def inspect_graph(graph: Any) -> dict[str, Any]:
    """The ``inspect`` report of a captured graph as a JSON-ready dict."""
    from ..graph.flops import flops

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


def run(args: argparse.Namespace) -> int:
    from ..graph import analyse, capture

    model, x, name = load(args)
    graph = capture(model, (x,), name=name)
    if args.tiled_dim is not None:
        analyse(graph, tiled_dim=args.tiled_dim)
    doc = inspect_graph(graph)
    doc["input_shape"] = list(x.shape)
    if args.json:
        print_json(doc)
        return 0
    rows = [
        (v["name"], _short_op(v["op"], v["index"]),
         f"{v['dtype']}[{','.join(map(str, v['shape']))}]", human_bytes(v["bytes"]),
         "local" if v["local"] else "GLOBAL", v["tiled_dim"], v["halo"], v["rule"],
         human_count(v["flops"]) if v["flops"] else "0", v["module"])
        for v in doc["nodes"]
    ]
    table(["node", "op", "output", "bytes", "kind", "dim", "halo", "rule", "flops", "module"],
          rows, right=(3, 5, 6, 8), title=f"{name} on {list(x.shape)}")
    s = doc["summary"]
    print(
        f"\nnodes: {s['nodes']} total, {s['local']} local, {s['global']} global; "
        f"FLOPs: {human_count(s['flops'])} total, {s['local_flops_share']:.1%} in local "
        f"operators; params: {human_bytes(s['param_bytes'])}"
    )
    return 0
