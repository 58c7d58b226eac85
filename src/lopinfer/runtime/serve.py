"""Running a server process: ``lopinfer serve`` and the loopback child process.

Prints one ``LOPINFER_LISTENING <url>`` line per bound URL (port 0 resolved) so a
parent process can find it (and ``LOPINFER_HTTP <url>`` for ``--http``); stops
gracefully on SIGINT/SIGTERM (a drain): ``/readyz`` turns 503 and no new session is
accepted, in-flight sessions get ``--grace`` seconds, then everything closes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import LopInferError
from ..log import logger
from .limits import GiB, ServerLimits
from .model_store import ModelStore, default_store_dir
from .server import Server

__all__ = ["serve", "main", "add_arguments", "run_args", "load_models", "save_model"]

log = logger("server")


def save_model(graph, folder: str | Path, name: str) -> Path:
    """Write ``graph`` as ``NAME.json`` + ``NAME.safetensors`` for ``--models``."""
    from ..graph.serialize import pack

    text, weights, _ = pack(graph)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.safetensors").write_bytes(weights)
    path = folder / f"{name}.json"
    path.write_text(text)
    return path


def load_models(folder: str | Path) -> dict:
    """Pre-deployed graphs: every ``NAME.json`` with a ``NAME.safetensors`` beside it
    (as written by :func:`save_model`), by content hash."""
    from ..graph.serialize import content_hash, unpack

    out = {}
    for js in sorted(Path(folder).glob("*.json")):
        weights = js.with_suffix(".safetensors")
        if not weights.exists():
            continue
        graph = unpack(js.read_text(), weights.read_bytes())
        out[content_hash(graph)] = graph
        log.info("pre-deployed %s (%s)", js.stem, graph)
    return out


async def serve(urls: list[str], *, device: str = "cpu", token: str | None = None,
                models: dict | None = None, grace: float = 10.0, name: str = "lopinfer",
                ready: asyncio.Event | None = None, http: str | None = None,
                limits: ServerLimits | None = None, ssl: Any = None,
                announce: Callable[[str], None] | None = None,
                store: ModelStore | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or until the task is cancelled); ``http`` is a
    HOST:PORT for ``/healthz``, ``/readyz`` and ``/metrics``; ``announce`` is told
    ``LOPINFER_LISTENING URL`` and ``LOPINFER_HTTP URL`` (the command prints them: a
    parent process reads its server's ports from them); ``store`` keeps deployments
    on disk across restarts."""
    from .http import HttpEndpoint

    server = Server(device=device, token=token, models=models, name=name, limits=limits,
                    store=store)
    endpoint = HttpEndpoint(server) if http else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform
            pass
    try:
        for url in await server.start(*urls, **({"ssl": ssl} if ssl is not None else {})):
            log.info("listening on %s", url, extra={"event": "listen", "url": url})
            if announce is not None:
                announce(f"LOPINFER_LISTENING {url}")
        if endpoint is not None and http:
            url = await endpoint.start(http)
            log.info("health and metrics on %s/healthz /readyz /metrics", url,
                     extra={"event": "listen", "url": url})
            if announce is not None:
                announce(f"LOPINFER_HTTP {url}")
        if ready is not None:
            ready.set()
        from ..graph.checks import warm_up

        warming = asyncio.ensure_future(asyncio.to_thread(warm_up))  # a first deploy's imports
        await stop.wait()
        await warming
        log.info("draining: no new sessions, %g s for in-flight ones", grace,
                 extra={"event": "drain", "grace_s": grace,
                        "sessions": server.stats.sessions_open})
    finally:
        await server.aclose(timeout=grace)  # /readyz says 503 from its first line on
        if endpoint is not None:
            await endpoint.aclose()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``serve`` options (shared by ``lopinfer serve`` and ``python -m``)."""
    p.add_argument("--listen", action="append", default=[], metavar="URL",
                   help="tcp://0.0.0.0:7700, ws://0.0.0.0:7701/lopinfer, shm://name (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--token-file", help="file holding the token clients must present")
    p.add_argument("--models", help="folder of pre-deployed models (NAME.json + NAME.safetensors)")
    p.add_argument("--store", default=None, metavar="DIR",
                   help="keep every deployment here, so a restarted server needs no upload "
                        "(default: $LOPINFER_CACHE/deployments, ~/.cache/lopinfer/deployments)")
    p.add_argument("--store-bytes", type=int, default=8 * GiB,
                   help="bytes the --store folder may hold, least recently used out "
                        "(0: keep nothing on disk)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds in-flight work may finish")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--http", metavar="HOST:PORT", default=None,
                   help="serve /healthz, /readyz and Prometheus /metrics here (e.g. 0.0.0.0:9090)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="server log lines on stderr: text or one JSON object a line")
    p.add_argument("--cert", help="TLS certificate chain (PEM) for tls:// and wss:// listeners")
    p.add_argument("--key", help="the certificate's private key (PEM)")
    d = ServerLimits()
    lim = p.add_argument_group("limits (bytes and seconds; every client is held to them)")
    lim.add_argument("--cache-bytes", type=int, default=d.cache_bytes,
                     help="weights kept in the deployment cache (LRU)")
    lim.add_argument("--max-model-bytes", type=int, default=d.max_model_bytes,
                     help="weights one deployment may upload")
    lim.add_argument("--max-session-upload-bytes", type=int, default=d.max_session_upload_bytes,
                     help="weights one session may upload in all")
    lim.add_argument("--max-pending-upload-bytes", type=int, default=d.max_pending_upload_bytes,
                     help="weights held while being uploaded, all sessions together")
    lim.add_argument("--max-activation-bytes", type=int, default=d.max_activation_bytes,
                     help="a graph's peak activation memory")
    lim.add_argument("--max-tensor-bytes", type=int, default=d.max_tensor_bytes,
                     help="one value of a graph")
    lim.add_argument("--max-flops", type=float, default=d.max_flops,
                     help="FLOPs of one inference")
    lim.add_argument("--max-node-flops", type=float, default=d.max_node_flops,
                     help="FLOPs of one node (one task on the device)")
    lim.add_argument("--max-inflight", type=int, default=d.max_inflight,
                     help="inferences in flight per session")
    lim.add_argument("--max-plan-tiles", type=int, default=d.max_plan_tiles,
                     help="tiles of one plan")
    lim.add_argument("--compile-timeout", type=float, default=d.compile_timeout,
                     help="seconds one plan may take to compile")
    lim.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                     help="seconds a session may stay silent")
    lim.add_argument("--hello-timeout", type=float, default=d.hello_timeout,
                     help="seconds a new connection has to say hello")
    lim.add_argument("--max-unauthenticated", type=int, default=d.max_unauthenticated,
                     help="connections waiting for their hello (the oldest is dropped)")
    lim.add_argument("--min-recv-rate", type=float, default=d.min_recv_rate,
                     help="bytes/s below which an arriving frame is cut off")


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    """The :class:`ServerLimits` the ``serve`` options name."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(ServerLimits)}
    return ServerLimits(**{k: v for k, v in vars(args).items() if k in names})


def _read_token(path: str) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise LopInferError(f"--token-file {path}: the file is empty (a token is needed)")
    return token


def _ssl_from_args(args: argparse.Namespace) -> Any:
    secure = [u for u in args.listen if u.startswith(("tls://", "wss://"))]
    if not args.cert and not args.key:
        if secure:
            raise LopInferError(f"{secure[0]} needs --cert and --key")
        return None
    if not (args.cert and args.key):
        raise LopInferError("--cert and --key go together")
    from ..transports import server_ssl_context

    return server_ssl_context(args.cert, args.key)


def run_args(args: argparse.Namespace) -> int:
    """Serve with parsed ``serve`` options until stopped; the exit status."""
    from .logs import configure

    configure(getattr(args, "log_format", "text"),
              logging.DEBUG if getattr(args, "verbose", 0) >= 2 else logging.INFO)
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise LopInferError("--device cuda: no CUDA device is available")
        if args.http:
            from .http import parse_hostport

            parse_hostport(args.http)  # a typo fails before anything is bound
        token = _read_token(args.token_file) if args.token_file else None
        ssl = _ssl_from_args(args)
        limits = limits_from_args(args)
        models = load_models(args.models) if args.models else None
        store = (ModelStore(args.store or default_store_dir(), args.store_bytes)
                 if args.store_bytes > 0 else None)
        from ..transports import run

        run(serve(args.listen or ["tcp://0.0.0.0:7700"], device=args.device, token=token,
                  models=models, grace=args.grace, http=args.http, limits=limits, ssl=ssl,
                  announce=_stdout_line, store=store))
    except (LopInferError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


def _stdout_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lopinfer serve", description="Serve LOPInfer sessions.")
    add_arguments(p)
    return run_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
