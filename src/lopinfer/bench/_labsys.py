"""The edge lab's plumbing: running ``ip``/``tc``, naming, finding and removing what a
lab left behind (namespaces, links, cgroups, processes), and the cfs quota arithmetic.
:mod:`lopinfer.bench.lab` builds the lab on these. Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from lopinfer.errors import LopInferError

CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
STATE_DIR = Path(os.environ.get("LOPINFER_EDGELAB_STATE_DIR", "/run"))
# The kernel rejects cfs quotas and periods under 1 ms (EINVAL) and periods over 1 s;
# verified on 6.18. Shares whose quota would fall under the floor stretch the period.
MIN_QUOTA_US, MAX_PERIOD_US = 1000, 1_000_000
MIN_RATE = 1000  # bytes/s; below this tbf's buffer arithmetic stops making sense
MTU = 1500
QUEUE_FLOOR = 256 * 1024  # bytes a tbf queue may hold at least (see _shape)
WIRE_FACTOR = 1514 / 1448  # frame bytes per TCP payload byte at MSS 1448
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # keeps "<name>-vd" within IFNAMSIZ


class EdgeLabError(LopInferError):
    """A lab command failed; the message names the command and its stderr."""


class Command(NamedTuple):
    """A full argv to run in the lab, and the environment to run it with."""

    argv: list[str]
    env: dict[str, str]


def run_cmd(argv: Sequence[str], check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EdgeLabError(f"edgelab: `{' '.join(argv)}` failed: {exc}") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().replace("\n", "; ")
        raise EdgeLabError(f"edgelab: `{' '.join(argv)}` failed (rc {proc.returncode}): {err}")
    return proc


def lab_names(name: str) -> dict[str, str]:
    if not _NAME_RE.match(name):
        raise ValueError(f"edgelab: name {name!r} must match {_NAME_RE.pattern}")
    return {"dev": f"{name}-dev", "srv": f"{name}-srv", "vd": f"{name}-vd", "vs": f"{name}-vs",
            "cgroup": str(CGROUP_ROOT / f"{name}-device")}


def state_path(name: str) -> Path:
    """Where an up lab records its settings, so later commands can :meth:`EdgeLab.attach`."""
    return STATE_DIR / f"lopinfer-edgelab-{name}.json"


def available() -> tuple[bool, str]:
    """Whether the lab can run here, and a one-line reason naming what is missing.

    Probes with a throwaway namespace (veth and tbf inside it), touching nothing else.
    Callers that get ``False`` fall back to the user-space shaped link, e.g.
    ``log.warning("%s: falling back to the user-space shaped link", reason)``.
    """
    if not sys.platform.startswith("linux"):
        return False, f"edgelab: needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return False, f"edgelab: no root (euid {os.geteuid()})"
    missing = [tool for tool in ("ip", "tc", "taskset") if shutil.which(tool) is None]
    if missing:
        return False, f"edgelab: missing commands: {', '.join(missing)}"
    if not (CGROUP_ROOT / "cpu.cfs_quota_us").exists():
        return False, f"edgelab: no cgroup v1 cpu controller at {CGROUP_ROOT}"
    probe = f"lopprobe{os.getpid()}"
    try:
        run_cmd(["ip", "netns", "add", probe])
    except EdgeLabError as exc:
        return False, f"edgelab: cannot create network namespaces ({exc})"
    try:
        run_cmd(["ip", "-n", probe, "link", "add", "pa", "type", "veth", "peer", "name", "pb"])
        run_cmd(["tc", "-n", probe, "qdisc", "add", "dev", "pa", "root", "tbf", "rate", "1mbit",
              "burst", "3000", "latency", "50ms"])
    except EdgeLabError as exc:
        return False, f"edgelab: veth/tbf unavailable ({exc})"
    finally:
        run_cmd(["ip", "netns", "del", probe], check=False)
    return True, "edgelab: available (root, netns, veth, tbf, cgroup v1 cpu)"


def _ns_pids(ns: str) -> list[int]:
    out = run_cmd(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]


def _kill(pids: list[int], grace_s: float = 2.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
            time.sleep(0.02)
        if not pids:
            return


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _existing_netns() -> set[str]:
    out = run_cmd(["ip", "netns", "list"], check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def leftovers(name: str) -> list[str]:
    """What of lab ``name`` exists now: namespaces, root-namespace links, cgroup, state."""
    n = lab_names(name)
    found = [f"netns {ns}" for ns in (n["dev"], n["srv"]) if ns in _existing_netns()]
    links = run_cmd(["ip", "-o", "link", "show"], check=False).stdout
    found += [f"link {v}" for v in (n["vd"], n["vs"]) if re.search(rf": {v}[@:]", links)]
    if Path(n["cgroup"]).exists():
        found.append(f"cgroup {n['cgroup']}")
    if state_path(name).exists():
        found.append(f"state {state_path(name)}")
    return found


def cleanup(name: str) -> None:
    """Remove every trace of lab ``name``, e.g. after a crash; idempotent.

    Kills processes left in its namespaces, moves other tasks out of its cgroup to the
    root cgroup, then deletes the cgroup, the namespaces (and with them the veth pair),
    stray veth ends in the root namespace, and the state file.

    Raises:
        EdgeLabError: something could not be removed (names it).
    """
    n = lab_names(name)
    present = _existing_netns()
    for ns in (n["dev"], n["srv"]):
        if ns in present:
            _kill(_ns_pids(ns))
    cg = Path(n["cgroup"])
    if cg.exists():
        for _ in range(50):  # tasks may fork while we move them; retry until empty
            tasks = (cg / "cgroup.procs").read_text().split()
            for pid in tasks:
                try:
                    (CGROUP_ROOT / "cgroup.procs").write_text(pid)
                except ProcessLookupError:
                    pass
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.02)
        else:
            raise EdgeLabError(f"edgelab: cannot remove cgroup {cg} (tasks: {tasks})")
    for ns in (n["dev"], n["srv"]):
        if ns in present:
            run_cmd(["ip", "netns", "del", ns])
    for veth in (n["vd"], n["vs"]):
        run_cmd(["ip", "link", "del", veth], check=False)  # only after a crash mid-up
    state_path(name).unlink(missing_ok=True)
    rest = leftovers(name)
    if rest:
        raise EdgeLabError(f"edgelab: cleanup of {name!r} left {', '.join(rest)}")


def cpu_quota(share: float, period_us: int = 10_000) -> tuple[int, int]:
    """``(period_us, quota_us)`` giving ``share`` of a core; quota -1 means unthrottled.

    A quota under the kernel floor (:data:`MIN_QUOTA_US`) stretches the period instead of
    rounding the share up: 1/18 of a core is 1000 us every 18000 us, not 1000 of 10000.

    Raises:
        ValueError: share not in (0, 1] or too small to express (< 0.001).
    """
    if not 0 < share:
        raise ValueError(f"edgelab: device_share must be > 0 (got {share})")
    if share >= 1:
        return period_us, -1
    quota = round(period_us * share)
    if quota < MIN_QUOTA_US:
        period_us, quota = round(MIN_QUOTA_US / share), MIN_QUOTA_US
        if period_us > MAX_PERIOD_US:
            raise ValueError(f"edgelab: device_share {share} needs a period over 1 s")
    return period_us, quota
