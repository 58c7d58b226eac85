"""The edge lab: a slow robot and a fast edge server on one Linux machine.

Two network namespaces (``<name>-dev``, ``<name>-srv``) joined by a veth pair
(``<name>-vd`` in the device, ``<name>-vs`` in the server), each end shaped on egress with
``tbf`` (netem is not available here), so device->server runs at ``rate_up`` and
server->device at ``rate_down``. The device process is pinned to its own core and
throttled by a cgroup v1 cpu controller (``/sys/fs/cgroup/cpu/<name>-device``) to a
fraction of that core; the server gets the other core. Standard library only: the work is
done by ``ip``, ``tc`` and ``taskset``. Needs root; :func:`available` says what is missing
so callers can fall back to the user-space shaped link of ``lopinfer.transports``.

Rates are TCP payload bytes/s at full-size segments: ``tbf`` counts whole frames, so it
is given ``rate * 1514/1448`` (Ethernet + IP + TCP-with-timestamps headers).
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lopinfer.units import parse_rate  # re-exported: scripts/edgelab takes rates

from ..log import logger
from ._labsys import (  # the plumbing; the public names are re-exported
    CGROUP_ROOT,
    MIN_QUOTA_US,
    MIN_RATE,
    MTU,
    QUEUE_FLOOR,
    WIRE_FACTOR,
    Command,
    EdgeLabError,
    available,
    cleanup,
    cpu_quota,
    lab_names,
    leftovers,
    run_cmd,
    state_path,
)

__all__ = ["EdgeLab", "EdgeLabError", "Command", "available", "cleanup", "leftovers",
           "cpu_quota", "parse_rate", "state_path", "CGROUP_ROOT", "MIN_QUOTA_US", "MIN_RATE"]

log = logger("bench.lab")


class EdgeLab:
    """A shaped two-namespace link plus a throttled device core; see the module doc.

    Args:
        name: short prefix (``[a-z][a-z0-9]{0,9}``) of every object the lab creates.
        rate_up: device->server payload bytes/s (default 11 MB/s, the indoor median).
        rate_down: server->device payload bytes/s.
        device_share: fraction of one core for the device (1/18 ~ the reference robot vs
            server; 1.0 = unthrottled).
        device_cpu, server_cpu: core indices the two sides are pinned to.
        subnet: a /30 (or larger); the device gets the first host, the server the second.
        queue_s: how much data, in seconds at the current rate, a tbf queue may hold
            (at least 256 KiB, so one TCP flow is not dropped at low rates).
    """

    def __init__(self, name: str = "lop", rate_up: float = 11e6, rate_down: float = 11e6,
                 device_share: float = 1.0, device_cpu: int = 0, server_cpu: int = 1,
                 subnet: str = "10.77.0.0/30", queue_s: float = 0.1) -> None:
        self.names = lab_names(name)
        self.name = name
        hosts = list(ipaddress.IPv4Network(subnet).hosts())
        self.device_ip, self.server_ip = str(hosts[0]), str(hosts[1])
        self.subnet = subnet
        self.rate_up, self.rate_down = self._check_rate(rate_up), self._check_rate(rate_down)
        self.device_share = device_share
        self.cpu_period_us, self.cpu_quota_us = cpu_quota(device_share)
        self.device_cpu, self.server_cpu = device_cpu, server_cpu
        self.queue_s = queue_s
        self.is_up = False
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._replay: threading.Thread | None = None
        self._replay_stop = threading.Event()
        self.replay_error: BaseException | None = None
        self._prev_sigterm: Any = None

    def __repr__(self) -> str:
        state = "up" if self.is_up else "down"
        return (f"<EdgeLab {self.name} {state} up={self.rate_up / 1e6:g}MB/s "
                f"down={self.rate_down / 1e6:g}MB/s device_share={self.device_share:g} "
                f"cfs={self.cpu_quota_us}/{self.cpu_period_us}us cpus={self.device_cpu}/{self.server_cpu}>")

    # -- lifecycle ---------------------------------------------------------------------

    def up(self) -> EdgeLab:
        """Create namespaces, veth, tbf on both ends and the device cgroup.

        Raises:
            EdgeLabError: a lab of this name exists, or a command failed (partial state
                is removed before raising).
        """
        if self.is_up:
            return self
        rest = leftovers(self.name)
        if rest:
            raise EdgeLabError(f"edgelab: lab {self.name!r} already exists ({', '.join(rest)}); "
                               f"run `edgelab down --name {self.name}` first")
        n = self.names
        try:
            for ns in (n["dev"], n["srv"]):
                run_cmd(["ip", "netns", "add", ns])
            run_cmd(["ip", "link", "add", n["vd"], "netns", n["dev"], "type", "veth",
                  "peer", "name", n["vs"], "netns", n["srv"]])
            prefix = ipaddress.IPv4Network(self.subnet).prefixlen
            for ns, dev, ip in ((n["dev"], n["vd"], self.device_ip), (n["srv"], n["vs"], self.server_ip)):
                run_cmd(["ip", "-n", ns, "addr", "add", f"{ip}/{prefix}", "dev", dev])
                run_cmd(["ip", "-n", ns, "link", "set", dev, "up"])
                run_cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
            self.is_up = True
            self._shape(n["dev"], n["vd"], self.rate_up)
            self._shape(n["srv"], n["vs"], self.rate_down)
            Path(n["cgroup"]).mkdir()
            self._write_cpu()
        except BaseException:
            self.is_up = False
            try:
                cleanup(self.name)
            except EdgeLabError as exc:  # keep the original error; report the leftovers
                log.error("%s", exc)
            raise
        self._save_state()
        log.info("edgelab up: %r", self)
        return self

    def down(self) -> None:
        """Stop replay and spawned processes, remove everything; idempotent."""
        self.stop_replay()
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=2)
        self._procs.clear()
        cleanup(self.name)
        self.is_up = False

    def __enter__(self) -> EdgeLab:
        self.up()
        atexit.register(self.down)
        if threading.current_thread() is threading.main_thread():
            self._prev_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.down()
        finally:
            atexit.unregister(self.down)
            if self._prev_sigterm is not None:
                signal.signal(signal.SIGTERM, self._prev_sigterm)
                self._prev_sigterm = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        prev, self._prev_sigterm = self._prev_sigterm, None
        signal.signal(signal.SIGTERM, prev if prev is not None else signal.SIG_DFL)
        self.down()
        if callable(prev):
            prev(signum, frame)
        raise SystemExit(128 + signum)

    @classmethod
    def attach(cls, name: str = "lop") -> EdgeLab:
        """An :class:`EdgeLab` for a lab another process brought up (reads its state file).

        Raises:
            EdgeLabError: no such lab is up.
        """
        try:
            state = json.loads(state_path(name).read_text())
        except (OSError, ValueError) as exc:
            raise EdgeLabError(f"edgelab: no lab {name!r} is up ({state_path(name)}: {exc})") from exc
        lab = cls(name, state["rate_up"], state["rate_down"], state["device_share"],
                  state["device_cpu"], state["server_cpu"], state["subnet"], state["queue_s"])
        lab.is_up = True
        return lab

    def _save_state(self) -> None:
        keys = ("rate_up", "rate_down", "device_share", "device_cpu", "server_cpu", "subnet",
                "queue_s", "device_ip", "server_ip", "cpu_period_us", "cpu_quota_us")
        state = {k: getattr(self, k) for k in keys} | {"name": self.name, "names": self.names}
        state_path(self.name).write_text(json.dumps(state, indent=1) + "\n")

    # -- shaping -----------------------------------------------------------------------

    @staticmethod
    def _check_rate(rate: float) -> float:
        if not rate >= MIN_RATE:
            raise ValueError(f"edgelab: rate must be >= {MIN_RATE} bytes/s (got {rate})")
        return float(rate)

    def _shape(self, ns: str, dev: str, rate: float) -> None:
        wire = int(rate * WIRE_FACTOR)
        # Burst: two full frames or 5 ms of data, whichever is larger: small enough that a
        # few KB/s still holds its rate over a 10 ms window, large enough not to starve
        # tbf's timer at tens of MB/s. Limit (bounded queue): queue_s of data, but at least
        # 256 KiB, which one TCP flow keeps in the qdisc (TSO bursts + small queues);
        # less made tbf drop segments (measured: 0.5 MB/s, 128 KiB, 10% of skbs), and
        # the retransmission stalls are not what a WiFi AP's deep buffer does.
        burst = max(2 * (MTU + 14), int(wire * 0.005))
        limit = max(2 * burst, int(wire * self.queue_s), QUEUE_FLOOR)
        run_cmd(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf",
              "rate", f"{wire}bps", "burst", str(burst), "limit", str(limit)])

    def set_rate(self, up: float | None = None, down: float | None = None) -> None:
        """Change the shaped payload rates (bytes/s) live; ``None`` keeps a direction.

        Raises:
            EdgeLabError: the lab is down or ``tc`` failed. ValueError: rate too small.
        """
        if not self.is_up:
            raise EdgeLabError(f"edgelab: lab {self.name!r} is not up")
        with self._lock:
            if up is not None:
                self.rate_up = self._check_rate(up)
                self._shape(self.names["dev"], self.names["vd"], self.rate_up)
            if down is not None:
                self.rate_down = self._check_rate(down)
                self._shape(self.names["srv"], self.names["vs"], self.rate_down)
            self._save_state()

    def set_device_share(self, share: float) -> None:
        """Change the device's fraction of its core live (see :func:`cpu_quota`)."""
        self.cpu_period_us, self.cpu_quota_us = cpu_quota(share)
        self.device_share = share
        if self.is_up:
            self._write_cpu()
            self._save_state()

    def _write_cpu(self) -> None:
        cg = Path(self.names["cgroup"])
        try:
            # Unthrottle first: the kernel checks quota against the period being set.
            (cg / "cpu.cfs_quota_us").write_text("-1")
            (cg / "cpu.cfs_period_us").write_text(str(self.cpu_period_us))
            (cg / "cpu.cfs_quota_us").write_text(str(self.cpu_quota_us))
        except OSError as exc:
            raise EdgeLabError(f"edgelab: cannot set cfs {self.cpu_quota_us}/{self.cpu_period_us}us "
                               f"on {cg}: {exc}") from exc

    # -- replay ------------------------------------------------------------------------

    def replay(self, trace: Sequence[tuple[float, float]], dilation: float = 1.0,
               down_factor: float = 1.0, loop: bool = False,
               on_step: Callable[[float, float], None] | None = None) -> threading.Thread:
        """Follow ``trace`` (``[(t_s, bytes_per_s), ...]``) in a background thread.

        Time stretches by ``dilation`` and rates shrink by it, so a dilated run moves the
        same bytes per trace step (use it when the device is slowed by the same factor).
        Up gets ``rate/dilation``, down ``rate*down_factor/dilation``, both clamped to
        :data:`MIN_RATE`. The last sample lasts one step, then the replay ends (rates stay)
        or, with ``loop``, starts over. ``on_step(t, up_rate)`` is called after each
        change. An error in the thread ends it and is kept in ``replay_error``.
        """
        if dilation <= 0 or not trace:
            raise ValueError("edgelab: replay needs a non-empty trace and dilation > 0")
        self.stop_replay()
        self._replay_stop.clear()
        self.replay_error = None
        samples = list(trace)
        gap = (samples[-1][0] - samples[-2][0]) if len(samples) > 1 else 1.0

        def run() -> None:
            try:
                while True:
                    start = time.monotonic()
                    for t, rate in samples:
                        delay = start + (t - samples[0][0]) * dilation - time.monotonic()
                        if self._replay_stop.wait(max(0.0, delay)):
                            return
                        up = max(MIN_RATE, rate / dilation)
                        self.set_rate(up=up, down=max(MIN_RATE, rate * down_factor / dilation))
                        if on_step is not None:
                            on_step(t, up)
                    # the last sample lasts one step too, so a replay spans the trace
                    if self._replay_stop.wait(gap * dilation) or not loop:
                        return
            except BaseException as exc:  # kept for the caller; the thread must not die loud
                self.replay_error = exc
                log.error("edgelab replay stopped: %s", exc)

        self._replay = threading.Thread(target=run, name=f"edgelab-replay-{self.name}", daemon=True)
        self._replay.start()
        return self._replay

    def stop_replay(self) -> None:
        """Stop a running replay (rates stay where they are)."""
        self._replay_stop.set()
        if self._replay is not None and self._replay is not threading.current_thread():
            self._replay.join(timeout=5)
        self._replay = None

    # -- processes ---------------------------------------------------------------------

    @staticmethod
    def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if extra is None else extra)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        return env

    def device_command(self, argv: Sequence[str], throttle: bool = True) -> Command:
        """Argv running ``argv`` as the device: its namespace, core, and cgroup.

        The cgroup is joined first (``ip netns exec`` remounts /sys, hiding the cgroup
        tree), then the namespace, then the core pin; children inherit all three.
        """
        inner = ["ip", "netns", "exec", self.names["dev"], "taskset", "-c", str(self.device_cpu),
                 "env", "OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", *argv]
        if not throttle:
            return Command(inner, self._env())
        procs = Path(self.names["cgroup"]) / "cgroup.procs"
        return Command(["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *inner], self._env())

    def server_command(self, argv: Sequence[str]) -> Command:
        """Argv running ``argv`` as the server: its namespace and core, unthrottled."""
        return Command(["ip", "netns", "exec", self.names["srv"], "taskset", "-c", str(self.server_cpu),
                        "env", "OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", *argv], self._env())

    def _spawn(self, cmd: Command, popen_kw: dict[str, Any]) -> subprocess.Popen:
        if not self.is_up:
            raise EdgeLabError(f"edgelab: lab {self.name!r} is not up")
        popen_kw["env"] = self._env(popen_kw.get("env"))
        proc = subprocess.Popen(cmd.argv, **popen_kw)
        self._procs.append(proc)  # terminated by down()
        return proc

    def throttle(self, pid: int, on: bool = True) -> None:
        """Move process ``pid`` (every thread of it) into the device cgroup, or out of
        it back to the root cgroup (deploy-time work such as planning runs unthrottled)."""
        target = Path(self.names["cgroup"]) if on else CGROUP_ROOT
        try:
            (target / "cgroup.procs").write_text(str(int(pid)))
        except OSError as exc:
            raise EdgeLabError(f"edgelab: moving pid {pid} to {target} failed: {exc}") from None

    def spawn_device(self, argv: Sequence[str], throttle: bool = True, **popen_kw: Any) -> subprocess.Popen:
        """Start ``argv`` as the device (see :meth:`device_command`); stopped by :meth:`down`."""
        return self._spawn(self.device_command(argv, throttle), popen_kw)

    def spawn_server(self, argv: Sequence[str], **popen_kw: Any) -> subprocess.Popen:
        """Start ``argv`` as the server (see :meth:`server_command`); stopped by :meth:`down`."""
        return self._spawn(self.server_command(argv), popen_kw)

    # -- measuring ---------------------------------------------------------------------

    def measure_rate(self, direction: str = "up", nbytes: int | None = None,
                     timeout: float = 60.0) -> float:
        """Push ``nbytes`` over TCP across the link; return the receiver's payload bytes/s.

        Both ends run unthrottled (this measures the link, not the device CPU). The clock
        starts at the first byte received, so the tbf burst does not inflate the result.
        ``nbytes`` defaults to 1.5 s worth at the configured rate.

        Raises:
            EdgeLabError: the lab is down or a side failed or timed out.
        """
        if direction not in ("up", "down"):
            raise ValueError(f"edgelab: direction must be 'up' or 'down' (got {direction!r})")
        if not self.is_up:
            raise EdgeLabError(f"edgelab: lab {self.name!r} is not up")
        rate = self.rate_up if direction == "up" else self.rate_down
        nbytes = nbytes or int(min(max(rate * 1.5, 200_000), 50e6))
        recv_ns, send_ns, recv_ip = ((self.names["srv"], self.names["dev"], self.server_ip)
                                     if direction == "up" else
                                     (self.names["dev"], self.names["srv"], self.device_ip))
        ns = ["ip", "netns", "exec"]
        with subprocess.Popen([*ns, recv_ns, sys.executable, "-c", _RECEIVER, recv_ip],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as receiver:
            try:
                port = receiver.stdout.readline().strip() if receiver.stdout else ""
                if not port.isdigit():
                    receiver.kill()
                    last = (receiver.stderr.read() if receiver.stderr else "").strip().splitlines()
                    raise EdgeLabError(f"edgelab: rate receiver did not start in {recv_ns}: "
                                       f"{last[-1] if last else port}")
                run_cmd([*ns, send_ns, sys.executable, "-c", _SENDER, recv_ip, port, str(nbytes)],
                     timeout=timeout)
                out, err = receiver.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise EdgeLabError(f"edgelab: rate measurement timed out after {timeout} s") from exc
            finally:
                if receiver.poll() is None:
                    receiver.kill()
        try:
            got, bps = out.split()
        except ValueError as exc:
            raise EdgeLabError(f"edgelab: rate receiver failed: {err.strip() or out.strip()}") from exc
        if int(got) != nbytes:
            raise EdgeLabError(f"edgelab: rate receiver got {got} of {nbytes} bytes")
        return float(bps)


_RECEIVER = """
import socket, sys, time
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(1); s.settimeout(30)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.settimeout(30)
first = c.recv(1 << 16); n = len(first); t0 = t1 = time.monotonic(); late = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    late += len(b); t1 = time.monotonic()
print(n + late, late / max(t1 - t0, 1e-9))
"""

_SENDER = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
left = int(sys.argv[3]); buf = bytes(1 << 16)
while left > 0:
    k = min(left, len(buf)); c.sendall(buf[:k]); left -= k
c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
"""
