"""``lopinfer bench``: every method measured side by side in one run.

The run stands for the research testbed, time-dilated to this machine:

1. calibrate: the server's vgg19_bn time here (one thread) over the testbed's GPU time
   (4.8 ms) is the dilation ``D``; link rates are divided by ``D``; the device gets
   1/18 of a core (the testbed's robot was 18x slower than its server);
2. lab: the edge lab (namespaces, ``tbf``, a cgroup; see :mod:`lopinfer.bench.lab`)
   when root allows, else a user-space shaped link with an unthrottled device (said
   in the output);
3. a server process and a device process (:mod:`lopinfer.bench.device`) run every
   model, scenario and method interleaved; the device asks for rate changes;
4. records go to ``DIR/records.jsonl``; :func:`lopinfer.bench.report.write_all` makes
   the CSV, JSON, plots and the table.

Scenarios: ``fixed:RATE`` (seed-equivalent, e.g. ``fixed:11MB/s``), ``seed-indoor`` and
``seed-outdoor`` (the committed traces, one trace sample per repetition, evenly spaced
over the trace; the session adapts from its own measurements, it is not told).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..scheduler.registry import default_methods
from ..scheduler.registry import methods as registered_methods

SEED_GPU_VGG19_BN_S = 4.8e-3  # the research testbed's server, vgg19_bn, batch 1
SEED_DEVICE_SLOWDOWN = 18.0  # its robot: 87 ms for the same model
SEED_MODEL = "torchvision:vgg19_bn"
# A Jetson Xavier NX Carmel core against a desktop x86 core, single-thread (public
# single-core benchmark scores differ by about this much): how much slower the device's
# CPU-side work (frame codec, LZ4) is than the server's, beyond the dilation.
SEED_DEVICE_CPU_SLOWDOWN = 4.0
TRACE_DIR = Path(__file__).resolve().parent / "data"  # shipped with the package

__all__ = ["add_arguments", "run_args", "calibrate", "scenarios"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="torchvision:vgg19_bn",
                   help="comma-separated MODEL specs (torchvision:NAME, timm:NAME, module:factory, file.py:factory)")
    p.add_argument("--methods", default=",".join(default_methods()),
                   help="comma-separated, of: " + ",".join(registered_methods()))
    p.add_argument("--scenario", default="fixed:11MB/s",
                   help="comma-separated: fixed:RATE (seed-equivalent), seed-indoor, seed-outdoor")
    p.add_argument("--repeats", type=int, default=3, help="inferences per method and scenario")
    p.add_argument("--out", default="bench-out", help="output folder")
    p.add_argument("--lab", choices=("auto", "edgelab", "userspace"), default="auto",
                   help="kernel-shaped namespaces (root) or a user-space shaped link")
    p.add_argument("--dilation", default="auto",
                   help="time dilation: 'auto' (measure vgg19_bn here) or a number")
    p.add_argument("--device-slowdown", type=float, default=SEED_DEVICE_SLOWDOWN,
                   help="how much slower the device is than the server (edge lab only)")
    p.add_argument("--calibrate", choices=("per-model", "vgg19_bn"), default="per-model",
                   help="edge lab: calibrate the device for each model (default), or "
                        "once on vgg19_bn for all")
    p.add_argument("--device-model", choices=("stretch", "cfs"), default="stretch",
                   help="edge lab: stretch each device task to k x its CPU time (steady, the "
                        "default; lopinfer.steady) or throttle the device by a CFS quota")
    p.add_argument("--device-cpu-slowdown", type=float, default=SEED_DEVICE_CPU_SLOWDOWN,
                   help="stretch: the device's codec/LZ4 work is this much slower than the "
                        "server's, both dilated")
    p.add_argument("--device-profile", default="jetson-xavier-nx", help="device power model")
    p.add_argument("--input-shape", default=None, help="input shape for every model, e.g. 1,3,224,224")
    p.add_argument("--no-plots", action="store_true", help="CSV, JSON and table only")


_TIMER = """\
import os, sys, time, torch
from lopinfer.models import load_model
torch.set_num_threads(1)
loaded = load_model({model!r})
m = loaded.module; x = loaded.example_input({shape!r})
if {executor!r}:  # as the runtime runs it: the local plan, one tile per node
    import lopinfer
    from lopinfer.runtime import TiledExecutor
    m = TiledExecutor(lopinfer.capture(m, (x,)), 1)
print("ready", os.getpid(), flush=True)
sys.stdin.readline()  # the orchestrator may throttle this process first
with torch.inference_mode():
    m(x); ts = []; cs = []
    while len(ts) < {runs} or (sum(ts) < 2.0 and len(ts) < 25):  # fast models: more runs
        s, c = time.perf_counter(), time.thread_time(); m(x)
        ts.append(time.perf_counter() - s); cs.append(time.thread_time() - c)
print(sorted(ts)[len(ts) // 2], min(cs), flush=True)  # min: as lopinfer.steady's references
"""


def calibrate(cpu: int | None = None, *, lab: Any = None, runs: int = 3,
              model: str = SEED_MODEL, input_shape: list[int] | None = None,
              cpu_time: bool = False, executor: bool = False) -> float:
    """Median seconds of one inference of ``model`` on one thread of this machine
    (pinned to ``cpu``; in the device cgroup of ``lab`` when given: the model is built
    unthrottled, then timed); with ``cpu_time``, the least CPU seconds of the thread
    (what a steady device's stretch is a multiple of) instead of the median wall seconds; with ``executor``, run by the tiled executor (the local plan) rather
    than as a plain module. At least ``runs`` runs, more for fast models."""
    argv = [sys.executable, "-c", _TIMER.format(runs=runs, model=model, shape=input_shape,
                                                executor=executor)]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdin is not None
    first = proc.stdout.readline().split()
    if first[:1] == ["ready"] and lab is not None:
        lab.throttle(int(first[1]), True)
    out, err = proc.communicate("go\n", timeout=900)
    if proc.returncode != 0 or first[:1] != ["ready"]:
        raise SystemExit(f"bench: timing {model} failed: {err.strip()[-300:]}")
    wall, cpu_s = out.strip().splitlines()[-1].split()
    return float(cpu_s if cpu_time else wall)


def calibrate_device(lab: Any, server_s: float, slowdown: float, rounds: int = 4, *,
                     model: str = SEED_MODEL, input_shape: list[int] | None = None,
                     ) -> tuple[float, float]:
    """Set the device's share of its core so that it is ``slowdown`` times slower than
    the server on ``model`` (``server_s``: the server's time for it), measured.
    Throttling is far from linear and hits models differently (a share of 1/18 made
    vgg19_bn 39x to 72x slower here, and a share tuned on vgg19_bn made
    mobilenet_v3_large far slower still: caches go cold every period and small kernels
    suffer most), so the share is searched per model: a secant step in log-log space
    after the first guess, until within 10%. Returns (share, measured ratio)."""
    share, alpha = 1.0 / slowdown, 1.0
    seen: list[tuple[float, float]] = []
    for _ in range(rounds):
        lab.set_device_share(share)
        ratio = calibrate(lab.device_cpu, lab=lab, runs=3, model=model,
                          input_shape=input_shape) / server_s
        print(f"bench: {model}: device share {share:.4f} -> {ratio:.1f}x slower than the server",
              file=sys.stderr)
        seen.append((share, ratio))
        if abs(ratio / slowdown - 1) < 0.1:
            break
        if len(seen) >= 2:
            (s1, r1), (s2, r2) = seen[-2], seen[-1]
            if s1 != s2 and r1 != r2:
                alpha = min(4.0, max(0.5, -math.log(r2 / r1) / math.log(s2 / s1)))
        share = min(1.0, max(0.01, share * (ratio / slowdown) ** (1 / alpha)))
    # timings under throttling are noisy: keep the closest share seen, not the last
    share, ratio = min(seen, key=lambda sr: abs(math.log(sr[1] / slowdown)))
    lab.set_device_share(share)
    return share, ratio


def scenarios(text: str, repeats: int) -> list[dict[str, Any]]:
    """Scenario specs: name, kind and the seed-equivalent rate of each repetition."""
    from .lab import parse_rate
    from .traces import load

    out = []
    for name in [s.strip() for s in text.split(",") if s.strip()]:
        if name.startswith("fixed:"):
            out.append({"name": name, "kind": "fixed", "rates": [parse_rate(name[6:])]})
        elif name in ("seed-indoor", "seed-outdoor"):
            trace = load(TRACE_DIR / f"{name}.csv")
            step = max(1, len(trace) // max(repeats, 1))
            out.append({"name": name, "kind": "trace",
                        "rates": [trace[(k * step) % len(trace)][1] for k in range(repeats)]})
        else:
            raise SystemExit(f"bench: unknown scenario {name!r} (fixed:RATE, seed-indoor, seed-outdoor)")
    return out


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="bench", unit="inference")
    except ImportError:
        return None


def run_args(args: argparse.Namespace) -> int:
    from . import lab as edgelab
    from .report import summarise, table, write_all

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "records.jsonl"
    records_path.unlink(missing_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in registered_methods()]
    if unknown:
        raise SystemExit(f"bench: unknown method {', '.join(unknown)} "
                         f"(known: {', '.join(registered_methods())})")
    scens = scenarios(args.scenario, args.repeats)
    ok, why = edgelab.available()
    use_lab = args.lab == "edgelab" or (args.lab == "auto" and ok)
    if args.lab == "edgelab" and not ok:
        raise SystemExit(f"bench: {why}")
    if not use_lab:
        print(f"bench: {why if not ok else 'asked for'}: using the user-space shaped link; "
              "the device is not throttled", file=sys.stderr)
    # vgg19_bn's server time: the dilation, and the cfs device's reference (stretch and a
    # given dilation need it not, nor torchvision)
    need_vgg = args.dilation == "auto" or (use_lab and args.device_model == "cfs")
    server_s = calibrate(1 if use_lab else None) if need_vgg else None
    dilation = server_s / SEED_GPU_VGG19_BN_S if args.dilation == "auto" and server_s \
        else float(args.dilation)
    print(f"bench: dilation {dilation:.1f} (server vgg19_bn here / {SEED_GPU_VGG19_BN_S * 1e3} ms)",
          file=sys.stderr)
    cache = out / "cache"
    spec = {"models": [{"spec": m, "input_shape": _shape(args.input_shape)} for m in models],
            "methods": methods, "scenarios": scens, "repeats": args.repeats,
            "dilation": dilation, "control": "pipe" if use_lab else "userspace",
            "out": str(records_path.resolve()), "device_profile": args.device_profile}
    meta = {"command": " ".join(sys.argv), "models": models, "methods": methods,
            "scenarios": [s["name"] for s in scens], "dilation": dilation,
            "lab": "edgelab" if use_lab else "userspace",
            "repeats": args.repeats, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    total = len(models) * len(methods) * len(scens) * args.repeats
    if use_lab:
        rate0 = scens[0]["rates"][0] / dilation
        stretch = args.device_model == "stretch"
        spec["device_model"] = meta["device_model"] = args.device_model
        # the server's CPU-side work is dilated like its compute; the device's is also slower
        server_env = _env(cache / "server")
        if stretch:
            spec["cpu_stretch"] = meta["device_cpu_stretch"] = dilation * args.device_cpu_slowdown
            server_env["LOPINFER_STRETCH_CPU"] = str(dilation)
            meta["server_cpu_stretch"] = dilation
        with edgelab.EdgeLab(name="lopb", rate_up=rate0, rate_down=rate0,
                             device_share=1.0 if stretch else 1 / args.device_slowdown) as lab:
            meta["server_vgg19_bn_s"] = server_s
            meta["calibration"] = (_calibrate_stretch(lab, spec["models"], args) if stretch
                                   else _calibrate_models(lab, spec["models"], server_s or 0.0, args))
            server = lab.spawn_server(_serve_argv("tcp://10.77.0.2:7700"),
                                      env=server_env, stdout=subprocess.PIPE, text=True)
            _wait_listening(server)
            spec["server"] = "tcp://10.77.0.2:7700"
            spec["server_pid"] = server.pid  # its namespace's TCP counters (bench.tcpstats)
            _drive(lab, spec, out, cache, total)
    else:
        server = subprocess.Popen(_serve_argv("tcp://127.0.0.1:0"), env=_env(cache / "server"),
                                  stdout=subprocess.PIPE, text=True)
        try:
            spec["server"] = _wait_listening(server)
            _drive(None, spec, out, cache, total)
        finally:
            server.terminate()
            server.wait(timeout=30)
    records = [json.loads(line) for line in records_path.read_text().splitlines() if line]
    if not records:
        raise SystemExit("bench: no inference was recorded")
    wrote = write_all(records, meta, out, plots=not args.no_plots)
    print(table(summarise(records)))
    print(f"\nwrote {', '.join(str(p) for p in wrote.values())}", file=sys.stderr)
    return 0


def _calibrate_models(lab: Any, models: list[dict], server_vgg_s: float,
                      args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The device share of each model (written into its spec entry): searched on that
    model against the server's time for it, or once on vgg19_bn (``--calibrate
    vgg19_bn``) for every model."""
    out: dict[str, dict[str, Any]] = {}
    if args.calibrate == "vgg19_bn":
        share, ratio = calibrate_device(lab, server_vgg_s, args.device_slowdown)
        for m in models:
            m["device_share"] = share
            out[m["spec"]] = {"share": share, "slowdown": ratio, "on": SEED_MODEL}
        return out
    for m in models:
        server_s = server_vgg_s if m["spec"] == SEED_MODEL and not m["input_shape"] else \
            calibrate(lab.server_cpu, model=m["spec"], input_shape=m["input_shape"])
        share, ratio = calibrate_device(lab, server_s, args.device_slowdown,
                                        model=m["spec"], input_shape=m["input_shape"])
        m["device_share"] = share
        out[m["spec"]] = {"share": share, "slowdown": ratio, "server_s": server_s}
    return out


def _calibrate_stretch(lab: Any, models: list[dict],
                       args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The stretch factor of each model (written into its spec entry): the server's
    wall time for it over the device core's CPU time for it (both unthrottled, one
    thread), times the slowdown: stretched to k x its CPU time, the device then takes
    ``slowdown`` x the server's time however loaded the machine is."""
    out: dict[str, dict[str, Any]] = {}
    for m in models:
        if args.calibrate == "vgg19_bn":
            spec, shape = SEED_MODEL, None
        else:
            spec, shape = m["spec"], m["input_shape"]
        # both as the runtime runs them (the executor packs weights once: ~0.8x a plain run)
        server_s = calibrate(lab.server_cpu, model=spec, input_shape=shape, executor=True)
        device_cpu_s = calibrate(lab.device_cpu, model=spec, input_shape=shape, cpu_time=True,
                                 executor=True)
        k = max(1.0, args.device_slowdown * server_s / device_cpu_s)
        print(f"bench: {m['spec']}: server {server_s * 1e3:.0f} ms, device CPU "
              f"{device_cpu_s * 1e3:.0f} ms -> stretch {k:.2f}", file=sys.stderr)
        m["stretch"] = k
        m["target_s"] = args.device_slowdown * server_s  # the device corrects k to it
        out[m["spec"]] = {"stretch": k, "server_s": server_s, "device_cpu_s": device_cpu_s,
                          "on": spec}
    return out


def _shape(text: str | None) -> list[int] | None:
    return None if not text else [int(v) for v in text.split(",")]


def _serve_argv(url: str) -> list[str]:
    # a fresh server per run: a model store would only write to disk while it is timed
    return [sys.executable, "-m", "lopinfer.runtime.serve", "--listen", url, "--store-bytes", "0"]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            "LOPINFER_CACHE": str(cache)}


def _wait_listening(proc: subprocess.Popen) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("LOPINFER_LISTENING "):
        raise SystemExit(f"bench: the server did not start: {line!r}")
    return line.split(" ", 1)[1]


def _drive(lab: Any, spec: dict, out: Path, cache: Path, total: int) -> None:
    """Run the device process; apply the rate changes it asks for."""
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    argv = [sys.executable, "-m", "lopinfer.bench.device", str(spec_path.resolve())]
    kw: dict[str, Any] = dict(env=_env(cache / "device"), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    proc = lab.spawn_device(argv, throttle=False, **kw) if lab is not None \
        else subprocess.Popen(argv, **kw)
    bar = _progress(total)
    assert proc.stdout is not None and proc.stdin is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith("@@"):
            msg = json.loads(line[2:])
            if lab is not None and msg["op"] == "rate":
                lab.set_rate(up=msg["up"], down=msg["down"])
            elif lab is not None and msg["op"] == "share":
                lab.set_device_share(msg["share"])
            elif lab is not None and msg["op"] == "throttle":
                lab.throttle(msg["pid"], msg["on"])
            proc.stdin.write("ok\n")
            proc.stdin.flush()
        elif bar is not None and " rep " in line:
            bar.update(1)
            bar.set_postfix_str(line[:60])
        else:
            print(line, file=sys.stderr)
    if bar is not None:
        bar.close()
    if proc.wait() != 0:
        raise SystemExit(f"bench: the device process failed (exit {proc.returncode})")
