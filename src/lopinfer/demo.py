"""The demo behind ``lopinfer demo``: the main job on the embedded default.

:func:`run_demo` starts a loopback server (a child process on 127.0.0.1), deploys a
built-in model (torchvision's vgg19_bn with random weights when torchvision is installed,
else a VGG-style CNN), runs it under every plan kind and returns, per plan: median
latency, bytes sent each way, the overlap share and whether the result is exact.
:func:`format_table` renders that as text; the command (:mod:`lopinfer.cli.demo`) prints it.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from .testing import compare

__all__ = ["DemoCNN", "demo_model", "demo_plans", "fastest_exact", "format_table", "run_demo"]


class DemoCNN(nn.Module):
    """A VGG-style CNN (conv-BN-ReLU stacks, max pooling, a linear head)."""

    def __init__(self, classes: int = 100) -> None:
        super().__init__()
        cfg: list[int | str] = [32, 32, "M", 64, 64, "M", 128, 128, "M", 256, 256, "M"]
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c * 16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def demo_model(name: str | None = None) -> tuple[str, nn.Module, torch.Tensor]:
    """(name, model in eval mode, example input): vgg19_bn if torchvision is there."""
    torch.manual_seed(0)
    if name in (None, "vgg19_bn"):
        try:
            import torchvision

            model = torchvision.models.vgg19_bn(weights=None).eval()
            return "torchvision:vgg19_bn", model, torch.randn(1, 3, 224, 224)
        except ImportError:
            if name == "vgg19_bn":
                raise
    return "builtin:DemoCNN", DemoCNN().eval(), torch.randn(1, 3, 160, 160)


def demo_plans(graph: Any, tiles: int = 4) -> list[Any]:
    """One plan of each kind: local, offload, tiled offload, single cut, intra-layer split."""
    from .scheduler import cut_plan, local_plan, local_segments, offload_plan, split_plan

    seg = max(local_segments(graph), key=lambda s: s[1] - s[0])
    first_pool = next((i for i, n in enumerate(graph) if "max_pool" in n.target), len(graph) // 4)
    return [
        local_plan(graph),
        offload_plan(graph, 1),
        offload_plan(graph, tiles),
        cut_plan(graph, first_pool + 1, tiles),
        split_plan(graph, 0.5, seg[0], seg[1], tiles, halo="send"),
    ]


async def run_demo(*, transport: str = "tcp", repeats: int = 3, tiles: int = 4,
                   model: str | None = None) -> dict[str, Any]:
    """Run every plan kind in loopback; returns the rows of the table."""
    from .runtime import loopback

    name, net, x = demo_model(model)
    with torch.no_grad():
        ref = net(x)
    rows = []
    async with loopback(transport, peer_timeout=120) as client:
        session = await client.deploy(net, (x,))
        for plan in demo_plans(session.graph, tiles):
            await session.use_plan(plan)
            await session.infer(x)  # warm-up
            lat, exact, report = [], True, None
            for _ in range(repeats):
                out = await session.infer(x)
                report = session.last_report
                assert report is not None  # infer() always sets it
                lat.append(report.latency_s)
                exact &= compare(plan.name, out, ref).exact and not report.fell_back
            assert report is not None  # repeats >= 1
            rows.append({
                "plan": plan.name, "kind": plan.kind,
                "latency_ms": 1000 * statistics.median(lat),
                "bytes_up": report.bytes_up, "bytes_down": report.bytes_down,
                "overlap": report.overlap, "exact": bool(exact),
            })
    return {"model": name, "input": list(x.shape), "transport": transport, "rows": rows,
            "fastest_exact": fastest_exact(rows)}


# what each plan kind's name means, printed under the table
LEGEND = {
    "local": "local: every node on the client, no server",
    "offload": "offload/tN: every node on the server, the input streamed up in N tiles",
    "cut": "cut@k/tN: nodes [0, k) on the client, the rest on the server",
    "split": "split[a:b]@f/send|recompute/tN: both peers compute nodes [a, b) at once, the "
             "client the first f of each node's rows; halo rows sent or recomputed",
}


def fastest_exact(rows: list[dict[str, Any]]) -> str | None:
    """The plan with the least latency among the exact ones (None if none is)."""
    exact = [r for r in rows if r["exact"]]
    return min(exact, key=lambda r: r["latency_ms"])["plan"] if exact else None


def format_table(result: dict[str, Any]) -> str:
    """The result of :func:`run_demo` as a text table, the fastest exact plan starred."""
    head = f"  {'plan':<34} {'latency ms':>10} {'up KB':>9} {'down KB':>8} {'overlap':>8}  exact"
    lines = [f"model {result['model']} input {result['input']} over {result['transport']} loopback",
             head, "-" * len(head)]
    best = fastest_exact(result["rows"])
    for r in result["rows"]:
        mark = "* " if r["plan"] == best else "  "
        lines.append(f"{mark}{r['plan']:<34} {r['latency_ms']:>10.1f} {r['bytes_up'] / 1024:>9.1f} "
                     f"{r['bytes_down'] / 1024:>8.1f} {r['overlap']:>8.0%}  "
                     f"{'yes' if r['exact'] else 'NO'}")
    lines.append("")
    if best is not None:
        lines.append(f"* fastest exact plan: {best}")
    kinds = []
    for r in result["rows"]:
        if r["kind"] not in kinds:
            kinds.append(r["kind"])
    lines += [f"  {LEGEND.get(k, k)}" for k in kinds]
    lines.append("  /tN: N tiles of rows per node; overlap: share of the shorter peer's "
                 "busy time hidden under the other's")
    return "\n".join(lines)

