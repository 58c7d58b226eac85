"""A server session's deploy handling: weight uploads counted against the server's
bounds (:class:`Uploads`), a ``Deploy`` turned into a graph whose content hash the server
computed itself (:func:`deployment`), and the graph placed on the server's device."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import TYPE_CHECKING

import torch

from ..errors import DeployError, LopInferError, ProtocolError
from ..graph import Graph
from ..graph.serialize import WeightsDigest
from ..log import logger
from .limits import check_graph
from .protocol import Deploy

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Uploads", "check_devices", "deployment", "to_device"]

log = logger("server")


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


# what one held part costs beyond its bytes (the tensor and frame objects): charged, so
# that a flood of empty parts is bounded in bytes like everything else
PART_OVERHEAD = 512


class Uploads:
    """One session's weight uploads: the parts of its next ``Deploy`` and the bytes
    charged to it (and, while held, to the server's pending uploads)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.weight_parts: list[torch.Tensor] = []  # parts of the next Deploy's weights
        self.weight_bytes = 0  # ... their size (counted in the server's pending uploads)
        self.uploaded = 0  # weight bytes this session uploaded in all
        # the parts hashed as they arrive, in order, off the loop: by the Deploy only the
        # JSON is left to hash (a chain of tasks, each waiting for the one before)
        self._digest = WeightsDigest()
        self._hashing: asyncio.Task | None = None

    def add_chunk(self, t: torch.Tensor) -> None:
        """Hold one weights frame's tensor (a parameter's part) for the next ``Deploy``."""
        if t.dim() != 1:
            raise ProtocolError(f"a weights part must be a 1-d tensor, not {t.dim()}-d")
        n = t.numel() * t.element_size() + PART_OVERHEAD
        if self.weight_bytes + n > self.server.limits.max_model_bytes:
            raise ProtocolError(f"weights over the server's max_model_bytes="
                                f"{self.server.limits.max_model_bytes}")
        self.count(n, pending=True)
        self.weight_parts.append(t)
        self._hashing = asyncio.ensure_future(self._hash_after(self._hashing, self._digest, t))

    @staticmethod
    async def _hash_after(before: asyncio.Task | None, digest: WeightsDigest,
                          t: torch.Tensor) -> None:
        if before is not None:
            await before
        if t.numel() * t.element_size() >= 1 << 20:
            await asyncio.to_thread(digest.update, t)  # hashlib lets go of the GIL
        else:
            digest.update(t)

    def take(self) -> tuple[list[torch.Tensor], asyncio.Task | None, WeightsDigest]:
        """The parts held for the next ``Deploy`` (held no longer here), the task that
        hashes the last of them, and their digest."""
        parts, self.weight_parts = self.weight_parts, []
        hashing, digest = self._hashing, self._digest
        self._hashing, self._digest = None, WeightsDigest()
        return parts, hashing, digest

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
        if self._hashing is not None:  # a closed session's hashing stops (the chain too)
            self._hashing.cancel()
            self._hashing, self._digest = None, WeightsDigest()


async def deployment(srv: Server, msg: Deploy, parts: list[torch.Tensor],
                     hashing: asyncio.Task | None, weights: WeightsDigest
                     ) -> tuple[Graph | None, str, bool]:
    """(graph, its hash, was cached) for a Deploy; the hash is always one this server
    computed from the bytes it received (a client's claim is only a lookup key)."""
    if not msg.graph_json:
        graph = srv.deployments.get(msg.content_hash)
        if graph is None:
            graph = await srv.from_store(msg.content_hash)
        return graph, msg.content_hash, True
    size = sum(p.numel() * p.element_size() for p in parts)
    if len(parts) != msg.weights_parts or size != msg.weights_size:
        raise ProtocolError(f"deploy announces {msg.weights_parts} weight parts of "
                            f"{msg.weights_size} bytes, {len(parts)} of {size} bytes arrived")
    if size > srv.limits.max_model_bytes:
        raise DeployError(f"weights of {size} bytes are over the server's "
                          f"max_model_bytes={srv.limits.max_model_bytes}")
    from ..graph.serialize import graph_to_json, hash_with, remember_hash, unpack_parts

    t0 = time.perf_counter()
    try:  # the parts become the parameters (views): nothing joined or copied
        graph = await asyncio.to_thread(unpack_parts, msg.graph_json, parts)
    except DeployError:
        raise
    except LopInferError as exc:
        raise DeployError(str(exc)) from exc
    parts.clear()
    t1 = time.perf_counter()
    if hashing is not None:
        await hashing  # the weights, hashed as they came
    text = graph_to_json(graph)
    digest = hash_with(text, weights.digest())
    remember_hash(graph, text, digest)  # for the profile cache's key, say: hashed once
    log.info("deploy of %s: %d weight bytes checked in %.2f s, their hash waited for "
             "%.2f s", graph.name, size, t1 - t0, time.perf_counter() - t1)
    if not hmac.compare_digest(digest, msg.content_hash):
        raise DeployError(f"content hash {msg.content_hash[:16]}... does not match the "
                          f"uploaded graph and weights (they hash to {digest[:16]}...)")
    known = srv.deployments.get(digest)
    if known is not None:  # uploaded again (e.g. a race): keep the cached copy
        srv.remember(digest, known)
        return known, digest, True
    check_devices(graph, srv.device)
    check_graph(graph, srv.limits)
    srv.keep(digest, graph, text)  # before to_device: its weights are still on the CPU
    if srv.device.type != "cpu":
        to_device(graph, srv.device)
    srv.remember(digest, graph)
    return graph, digest, False
