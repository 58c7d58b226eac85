"""A server session's deploy handling: weight uploads counted against the server's
bounds (:class:`Uploads`), a ``Deploy`` turned into a graph whose content hash the server
computed itself (:func:`deployment`), and the graph placed on the server's device."""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING

import torch

from ..errors import DeployError, LopInferError, ProtocolError
from ..graph import Graph
from .limits import check_graph
from .protocol import Deploy

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Uploads", "check_devices", "deployment", "to_device"]


def to_device(graph: Graph, device: torch.device) -> None:
    """Weights onto the server's device; ops that create tensors create them there."""
    graph.params = {k: v.to(device) for k, v in graph.params.items()}
    for node in graph.nodes:
        if "device" in node.kwargs:
            node.kwargs = {**node.kwargs, "device": device}


def check_devices(graph: Graph, device: torch.device) -> None:
    """A graph may only name the server's own device type (or the CPU)."""
    for node in graph.nodes:
        d = node.kwargs.get("device")
        if d is not None and torch.device(d).type not in ("cpu", device.type):
            raise DeployError(f"node {node.name} creates a tensor on {d}, which this "
                              f"{device.type} server lacks")


class Uploads:
    """One session's weight uploads: the chunks of its next ``Deploy`` and the bytes
    charged to it (and, while held, to the server's pending uploads)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.weight_parts: list[torch.Tensor] = []  # chunks of the next Deploy's weights
        self.weight_bytes = 0  # ... their size (counted in the server's pending uploads)
        self.uploaded = 0  # weight bytes this session uploaded in all

    def add_chunk(self, t: torch.Tensor) -> None:
        """Hold one weights frame's tensor for the next ``Deploy``."""
        if t.dtype != torch.uint8 or t.dim() != 1:
            raise ProtocolError("a weights chunk must be a 1-d uint8 tensor")
        if self.weight_bytes + t.numel() > self.server.limits.max_model_bytes:
            raise ProtocolError(f"weights over the server's max_model_bytes="
                                f"{self.server.limits.max_model_bytes}")
        self.count(t.numel(), pending=True)
        self.weight_parts.append(t)

    def take(self) -> list[torch.Tensor]:
        """The chunks held for the next ``Deploy`` (held no longer here)."""
        parts, self.weight_parts = self.weight_parts, []
        return parts

    def count(self, n: int, *, pending: bool = False) -> None:
        """Charge ``n`` uploaded bytes to this session (and, while held, to the server)."""
        srv, lim = self.server, self.server.limits
        if self.uploaded + n > lim.max_session_upload_bytes:
            raise DeployError(f"session uploads over the server's max_session_upload_bytes="
                                f"{lim.max_session_upload_bytes}")
        if pending and srv.pending_upload + n > lim.max_pending_upload_bytes:
            raise DeployError(f"the server holds {srv.pending_upload} bytes of uploads already "
                                f"(max_pending_upload_bytes={lim.max_pending_upload_bytes}); "
                                f"deploy again later")
        self.uploaded += n
        if pending:
            self.weight_bytes += n
            srv.pending_upload += n

    def release(self) -> None:
        """Give back the server's pending-upload bytes this session held."""
        self.server.pending_upload -= self.weight_bytes
        self.weight_bytes = 0
        self.weight_parts = []


async def deployment(srv: Server, uploads: Uploads, msg: Deploy, parts: list[torch.Tensor]
                     ) -> tuple[Graph | None, str, bool]:
    """(graph, its hash, was cached) for a Deploy; the hash is always one this server
    computed from the bytes it received (a client's claim is only a lookup key)."""
    if not msg.graph_json:
        return srv.deployments.get(msg.content_hash), msg.content_hash, True
    if len(parts) != msg.weights_chunks or sum(p.numel() for p in parts) != msg.weights_size:
        raise ProtocolError(f"deploy announces {msg.weights_chunks} weight chunks of "
                            f"{msg.weights_size} bytes, {len(parts)} arrived")
    size = msg.weights_size if parts else len(msg.weights)
    if size > srv.limits.max_model_bytes:
        raise DeployError(f"weights of {size} bytes are over the server's "
                          f"max_model_bytes={srv.limits.max_model_bytes}")
    if not parts:
        uploads.count(size)
    from ..graph.serialize import content_hash, unpack

    # one copy, chunks straight into the bytes safetensors reads (not cat, then tobytes)
    weights = msg.weights if not parts else b"".join(p.numpy().data for p in parts)
    parts.clear()
    try:
        graph = await asyncio.to_thread(unpack, msg.graph_json, weights)
    except DeployError:
        raise
    except LopInferError as exc:
        raise DeployError(str(exc)) from exc
    del weights
    digest = await asyncio.to_thread(content_hash, graph)
    if not hmac.compare_digest(digest, msg.content_hash):
        raise DeployError(f"content hash {msg.content_hash[:16]}... does not match the "
                          f"uploaded graph and weights (they hash to {digest[:16]}...)")
    known = srv.deployments.get(digest)
    if known is not None:  # uploaded again (e.g. a race): keep the cached copy
        srv.remember(digest, known)
        return known, digest, True
    check_devices(graph, srv.device)
    check_graph(graph, srv.limits)
    if srv.device.type != "cpu":
        to_device(graph, srv.device)
    srv.remember(digest, graph)
    return graph, digest, False
