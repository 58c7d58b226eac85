#!/usr/bin/env python3
"""How steady is the emulated device? The CV of a local plan over N repetitions, per
model, for each device model of the edge lab (stretch, cfs), side by side.

  scripts/device_cv.py --models lopinfer:kapao,lopinfer:agrnav --repeats 10 [--json out.json]

Per model: the server core's time for it (one thread) and the device core's CPU time;
``stretch`` runs the device unthrottled with every task stretched to k x its CPU time
(k = slowdown x server / device CPU, lopinfer.steady); ``cfs`` puts it in the edge lab's
cgroup at a share searched to give the same slowdown (lopinfer.bench.runner). Then a
warm-up and N timed runs of the local plan (``TiledExecutor(graph, 1)``, what the bench's
``local`` method runs), pinned to the device core. Needs root (the cgroup); the link is
not used.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from lopinfer.bench import lab as L  # noqa: E402
from lopinfer.bench.runner import calibrate, calibrate_device  # noqa: E402

_RUN = """\
import json, os, sys, time, torch, lopinfer
from lopinfer import steady
from lopinfer.models import load_model
from lopinfer.runtime import TiledExecutor
torch.set_num_threads(1)
loaded = load_model({model!r}); x = loaded.example_input()
ex = TiledExecutor(lopinfer.capture(loaded.module, (x,)), 1)
print("ready", os.getpid(), flush=True)
sys.stdin.readline()  # the orchestrator may throttle this process first
for _ in range(steady.FREEZE):  # warm-up: oneDNN packing; the references settle
    ex(x)
if {target!r}:  # stretched: correct k once, as the bench's device does
    s = time.perf_counter(); ex(x)
    steady.set_stretch(compute=steady.factor() * {target!r} / (time.perf_counter() - s))
ts = []
for _ in range({repeats}):
    s = time.perf_counter(); ex(x); ts.append(time.perf_counter() - s)
print(json.dumps(ts), flush=True)
"""


def _runs(model: str, cpu: int, repeats: int, env: dict, lab=None,
          target: float = 0.0) -> list[float]:
    argv = ["taskset", "-c", str(cpu), sys.executable, "-c",
            _RUN.format(model=model, repeats=repeats, target=target)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    if first[:1] == ["ready"] and lab is not None:
        lab.throttle(int(first[1]), True)
    out, err = proc.communicate("go\n", timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"device_cv: {model} failed: {err.strip()[-400:]}")
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", required=True)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--slowdown", type=float, default=18.0)
    p.add_argument("--device-models", default="stretch,cfs")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    rows = []
    with L.EdgeLab(name="lopcv", device_share=1.0, subnet="10.78.0.0/30") as lab:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            server_s = calibrate(lab.server_cpu, model=model, executor=True)
            for dm in args.device_models.split(","):
                if dm == "stretch":
                    lab.set_device_share(1.0)
                    cpu_s = calibrate(lab.device_cpu, model=model, cpu_time=True, executor=True)
                    k = args.slowdown * server_s / cpu_s
                    ts = _runs(model, lab.device_cpu, args.repeats,
                               {**env, "LOPINFER_STRETCH_COMPUTE": str(k)},
                               target=args.slowdown * server_s)
                    knob = {"stretch": k}
                else:
                    share, _ = calibrate_device(lab, server_s, args.slowdown, rounds=2, model=model)
                    ts = _runs(model, lab.device_cpu, args.repeats, env, lab)
                    knob = {"share": share}
                med = statistics.median(ts)
                row = {"model": model, "device_model": dm, "server_s": server_s, **knob,
                       "median_s": med, "slowdown": med / server_s,
                       "cv": statistics.pstdev(ts) / statistics.mean(ts),
                       "max_over_min": max(ts) / min(ts), "runs_s": ts,
                       "load": os.getloadavg()[0]}
                rows.append(row)
                print(f"{model:28s} {dm:8s} median {med:7.2f} s = {row['slowdown']:5.1f}x server, "
                      f"CV {100 * row['cv']:5.1f}%  max/min {row['max_over_min']:.2f}  "
                      f"load {row['load']:.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
