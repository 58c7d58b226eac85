"""What one shared server admits, in bytes and seconds (DESIGN.md invariant 7).

A server is shared by a fleet; every resource one client can make it spend has a
bound here: the deployment cache and uploads in bytes, a graph's peak activation
memory and FLOPs, a plan's size and its compile time, in-flight inferences, idle and
unauthenticated connections. :func:`check_graph` applies the per-graph ones at deploy.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DeployError
from ..graph import Graph
from ..graph.flops import node_flops

__all__ = ["ServerLimits", "check_graph", "peak_activation_bytes", "graph_bytes"]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """Bounds a server enforces on every client (``lopinfer serve --help`` names them).

    Args:
        cache_bytes: weights kept in the deployment cache (least recently used out).
        max_model_bytes: weights one deployment may upload.
        max_session_upload_bytes: weights one session may upload in all.
        max_pending_upload_bytes: weight chunks held in memory by all sessions at once.
        max_activation_bytes: a graph's peak live activation memory (unsplit), declared
            by its shapes; the defaults admit every torchvision model at 1x3x1024x1024.
        max_tensor_bytes: one value's bytes (a value must fit in a transport frame).
        max_flops: FLOPs of one inference of a graph.
        max_node_flops: FLOPs of one node (one task can hold the device this long).
        max_inflight: inferences in flight per session.
        max_plan_tiles: row ranges (tiles) of one plan, counted before compiling it.
        compile_timeout: seconds one plan may take to compile.
        idle_timeout: seconds a session may send nothing (with no inference running).
        hello_timeout: seconds a new connection has to say hello.
        max_unauthenticated: connections waiting for their hello at once; when full,
            the oldest is dropped, so idle connections never lock robots out.
        pre_auth_message_bytes: largest frame accepted before the hello (tensors: none).
        min_recv_rate: bytes/s below which a frame that is arriving is cut off.
    """

    cache_bytes: int = 8 * GiB
    max_model_bytes: int = 2 * GiB
    max_session_upload_bytes: int = 8 * GiB
    max_pending_upload_bytes: int = 4 * GiB
    max_activation_bytes: int = 3 * GiB
    max_tensor_bytes: int = 1 * GiB
    max_flops: float = 20e12
    max_node_flops: float = 1e12
    max_inflight: int = 4
    max_plan_tiles: int = 100_000
    compile_timeout: float = 20.0
    idle_timeout: float = 600.0
    hello_timeout: float = 5.0
    max_unauthenticated: int = 64
    pre_auth_message_bytes: int = 64 * KiB
    min_recv_rate: float = 1024.0


def graph_bytes(graph: Graph) -> int:
    """Bytes of a graph's weights (what it costs to keep it cached)."""
    return sum(t.numel() * t.element_size() for t in graph.params.values())


def peak_activation_bytes(graph: Graph) -> int:
    """Peak bytes of live values when the graph runs unsplit in node order: each node's
    output lives from its node to its last reader (outputs and inputs to the end)."""
    last: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for ref in node.refs():
            last[ref] = i
    end = len(graph.nodes)
    for name in graph.outputs:
        last[name] = end
    frees: dict[int, int] = {}
    live = sum(m.nbytes for m in graph.inputs.values())
    peak = live
    for i, node in enumerate(graph.nodes):
        live += node.meta.nbytes
        peak = max(peak, live)
        frees[last.get(node.name, i)] = frees.get(last.get(node.name, i), 0) + node.meta.nbytes
        live -= frees.pop(i, 0)
    return peak


def check_graph(graph: Graph, limits: ServerLimits) -> None:
    """Refuse a deployed graph that would exceed the server's per-graph limits.

    Raises:
        DeployError: naming the limit (and the node, for a per-node limit).
    """
    for node in graph.nodes:
        if node.meta.nbytes > limits.max_tensor_bytes:
            raise DeployError(f"node {node.name} ({node.target}) makes a {node.meta!r} value of "
                              f"{node.meta.nbytes} bytes, over the server's "
                              f"max_tensor_bytes={limits.max_tensor_bytes}")
    peak = peak_activation_bytes(graph)
    if peak > limits.max_activation_bytes:
        raise DeployError(f"graph {graph.name!r} needs {peak} bytes of activations, over the "
                          f"server's max_activation_bytes={limits.max_activation_bytes}")
    total = 0.0
    for node in graph.nodes:
        f = node_flops(graph, node)
        if f > limits.max_node_flops:
            raise DeployError(f"node {node.name} ({node.target}) costs {f:.3g} FLOPs, over the "
                              f"server's max_node_flops={limits.max_node_flops:.3g}")
        total += f
    if total > limits.max_flops:
        raise DeployError(f"graph {graph.name!r} costs {total:.3g} FLOPs per inference, over the "
                          f"server's max_flops={limits.max_flops:.3g}")
