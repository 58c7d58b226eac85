"""Deployments kept on the server's disk, so a restarted server needs no upload.

A robot that reconnects to an edge server restarted since (an update, a reboot, a
crash) would otherwise send every weight again: vgg19_bn's 575 MB take 52 s at the
seed's 11 MB/s. The server writes each graph it received, under the content hash it
computed itself, as ``HASH.json`` (the graph) and ``HASH.safetensors`` (its weights),
and a client's hash-only ``Deploy`` that misses the memory cache is looked up here.

Nothing read back is trusted: the JSON is loaded through the op allow-list and shape
checks as an upload is, and the content hash is computed again from what was read; a
file that no longer hashes to its name (a torn write, a bad disk, an edit) is deleted
and the client is asked to upload. The folder is bounded in bytes, least recently
used out. Writes go to a temporary name then are renamed (the JSON last: it marks a
complete entry), so two servers may share one folder.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import LopInferError
from ..graph import Graph
from ..log import logger

__all__ = ["ModelStore", "default_store_dir", "write_safetensors"]

log = logger("server")

_HASH = re.compile(r"[0-9a-f]{64}")
_STALE_TMP_S = 3600.0  # a temporary file this old belongs to a write that died


def default_store_dir() -> Path:
    """``$LOPINFER_CACHE/deployments`` (default ``~/.cache/lopinfer/deployments``)."""
    return Path(os.environ.get("LOPINFER_CACHE", Path.home() / ".cache" / "lopinfer")) / "deployments"


# safetensors' dtype names (its format spec), for the dtypes a graph may hold
_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16",
              torch.bfloat16: "BF16", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
              torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL"}


def write_safetensors(path: Path, params: Mapping[str, torch.Tensor]) -> None:
    """``params`` as a safetensors file, each tensor's bytes written from where they
    are: ``safetensors.torch.save_file`` first copies every tensor into one ``bytes``,
    the model's size again in the server's memory. Read back by safetensors itself."""
    header: dict[str, dict] = {}
    offset = 0
    flat = {}
    for name, t in params.items():
        t = t.detach().cpu().contiguous()
        n = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + n]}
        flat[name] = t
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for t in flat.values():
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().data)
    # no fsync: an entry torn by a power cut no longer hashes to its name, and is deleted


class ModelStore:
    """Graphs by content hash in ``folder``, at most ``max_bytes`` of files in all."""

    def __init__(self, folder: str | Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise LopInferError(f"a model store needs max_bytes > 0, not {max_bytes}")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # saves and evictions of this process, one at a time
        self.folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        # what a write that died left: temporary files, weights without their JSON
        leftovers = [*self.folder.glob(".*.tmp"), *(w for w in self.folder.glob("*.safetensors")
                                                   if not w.with_suffix(".json").exists())]
        for path in leftovers:
            try:
                if now - path.stat().st_mtime > _STALE_TMP_S:
                    path.unlink()
            except OSError:
                pass

    def _paths(self, digest: str) -> tuple[Path, Path] | None:
        if not _HASH.fullmatch(digest):  # a client's claim names a file: hex digits only
            return None
        return self.folder / f"{digest}.json", self.folder / f"{digest}.safetensors"

    def __contains__(self, digest: str) -> bool:
        paths = self._paths(digest)
        return paths is not None and paths[0].exists() and paths[1].exists()

    def load(self, digest: str) -> Graph | None:
        """The graph stored under ``digest``, validated and hashed again; None when there
        is none or it is not what its name says (then it is deleted). Blocking."""
        from safetensors.torch import load_file

        from ..graph.load import graph_from_json
        from ..graph.serialize import content_hash

        paths = self._paths(digest)
        if paths is None:
            return None
        js, weights = paths
        try:
            text = js.read_text()
            params = load_file(str(weights))
        except OSError as exc:  # gone, or the disk failed now: the entry may still be good
            if not isinstance(exc, FileNotFoundError):
                log.warning("model store: %s... not read (%s)", digest[:16], exc)
            return None
        except Exception as exc:  # safetensors' own error types: not a weights file
            log.warning("model store: %s... unreadable (%s); deleted", digest[:16], exc)
            self._delete(digest)
            return None
        try:
            graph = graph_from_json(text, params)
            got = content_hash(graph)
        except LopInferError as exc:  # refused by this version's checks, or not a graph
            log.warning("model store: %s... refused (%s); deleted", digest[:16], exc)
            self._delete(digest)
            return None
        if got != digest:
            log.warning("model store: %s... hashes to %s... now; deleted", digest[:16], got[:16])
            self._delete(digest)
            return None
        for p in paths:  # used: the last to be evicted
            try:
                os.utime(p)
            except OSError:
                pass
        return graph

    def save(self, digest: str, text: str, params: Mapping[str, torch.Tensor]) -> bool:
        """Keep the graph whose canonical JSON is ``text`` and whose parameters are
        ``params`` under ``digest``, a hash this server computed; older entries go when
        over ``max_bytes``. False when it was not kept (too big, or the disk refused).
        Blocking."""
        paths = self._paths(digest)
        if paths is None:
            return False
        js, weights = paths
        size = len(text) + sum(t.numel() * t.element_size() for t in params.values())
        if size > self.max_bytes:
            return False
        with self._lock:
            if digest in self:
                return True
            self._evict(self.max_bytes - size)
            tag = f"{os.getpid()}.{threading.get_ident()}.tmp"
            tmp_w, tmp_j = self.folder / f".{weights.name}.{tag}", self.folder / f".{js.name}.{tag}"
            try:
                write_safetensors(tmp_w, params)
                os.replace(tmp_w, weights)
                tmp_j.write_text(text)
                os.replace(tmp_j, js)  # last: a complete entry from here on
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning("model store: could not keep %s... (%s)", digest[:16], exc)
                for p in (tmp_w, tmp_j, weights):
                    p.unlink(missing_ok=True)
                return False
        return True

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, hash) of every complete entry, oldest first."""
        out = []
        for js in self.folder.glob("*.json"):
            digest = js.stem
            paths = self._paths(digest)
            if paths is None:
                continue
            try:
                st_j, st_w = paths[0].stat(), paths[1].stat()
            except OSError:
                continue
            out.append((max(st_j.st_mtime, st_w.st_mtime), st_j.st_size + st_w.st_size, digest))
        return sorted(out)

    def _evict(self, room: int) -> None:
        """Delete least recently used entries until at most ``room`` bytes remain."""
        entries = self.entries()
        used = sum(e[1] for e in entries)
        for _, size, digest in entries:
            if used <= room:
                break
            self._delete(digest)
            used -= size

    def _delete(self, digest: str) -> None:
        paths = self._paths(digest)
        for p in paths or ():
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<ModelStore {str(self.folder)!r} max_bytes={self.max_bytes}>"
