"""The edge lab: namespaces, tbf shaping, device cgroup, cleanup. Needs root; else skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lopinfer.bench import lab as L

ROOT = Path(__file__).resolve().parents[2]
EDGELAB = ROOT / "scripts" / "edgelab"
OK, REASON = L.available()
needs_lab = pytest.mark.skipif(not OK, reason=REASON)
_seq = iter(range(100))


def _unique() -> str:
    return f"lt{os.getpid() % 1_000_000}{next(_seq)}"[:10]


def _assert_gone(name: str) -> None:
    assert L.leftovers(name) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{name}-" not in netns and f"{name}-" not in links
    assert not list(L.CGROUP_ROOT.glob(f"{name}-*"))


@pytest.fixture
def lab():
    name = _unique()
    lab = L.EdgeLab(name, rate_up=2e6, rate_down=1e6, device_share=0.25)
    try:
        yield lab.up()
    finally:
        lab.down()
        L.cleanup(name)


# -- always run ------------------------------------------------------------------------

def test_available_gives_one_line_reason():
    ok, reason = L.available()
    assert isinstance(ok, bool) and reason.startswith("edgelab: ") and "\n" not in reason


def test_available_names_missing_root(monkeypatch):
    monkeypatch.setattr(L.os, "geteuid", lambda: 1000)
    assert L.available() == (False, "edgelab: no root (euid 1000)")


@pytest.mark.parametrize("text, want", [("10MB/s", 1e7), ("150KB/s", 1.5e5), ("2e6", 2e6),
                                        ("1.5 MB/s", 1.5e6), ("7kB", 7e3), (3.0, 3.0),
                                        ("80Mbit/s", 1e7), ("8Mbps", 1e6), ("1KiB/s", 1024)])
def test_parse_rate(text, want):
    # one parser for the lab, the bench's scenarios and `lopinfer plan --bandwidth`
    assert L.parse_rate(text) == want


@pytest.mark.parametrize("text", ["fast", "", "1..2MB/s", "10 MB/h", "0MB/s", -3.0, "1e999"])
def test_parse_rate_rejects(text):
    with pytest.raises(ValueError, match="bad rate"):
        L.parse_rate(text)


def test_cpu_quota_respects_kernel_floor():
    assert L.cpu_quota(0.25) == (10_000, 2500)
    assert L.cpu_quota(1.0) == (10_000, -1)
    period, quota = L.cpu_quota(1 / 18)  # under the floor: stretch the period, keep the share
    assert quota == L.MIN_QUOTA_US and period == 18_000
    with pytest.raises(ValueError):
        L.cpu_quota(0)
    with pytest.raises(ValueError, match="period over 1 s"):
        L.cpu_quota(1e-4)


def test_bad_name_and_rate():
    with pytest.raises(ValueError, match="name"):
        L.EdgeLab("Bad-Name")
    with pytest.raises(ValueError, match="rate"):
        L.EdgeLab("ok", rate_up=10)


def test_cli_check_runs():
    proc = subprocess.run([sys.executable, str(EDGELAB), "check", "--name", _unique()],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == (0 if OK else 1), proc.stderr
    assert proc.stdout.splitlines()[0] == REASON


# -- need the lab ----------------------------------------------------------------------

@needs_lab
@pytest.mark.timeout(60)
def test_lab_shapes_throttles_and_cleans_up(lab):
    name = lab.name
    found = L.leftovers(name)
    assert f"netns {name}-dev" in found and f"netns {name}-srv" in found
    assert f"cgroup {L.CGROUP_ROOT}/{name}-device" in found
    for ns, dev in ((f"{name}-dev", f"{name}-vd"), (f"{name}-srv", f"{name}-vs")):
        out = subprocess.run(["ip", "-n", ns, "-o", "link", "show", dev], capture_output=True, text=True).stdout
        assert "state UP" in out and "tbf" in out
    cg = L.CGROUP_ROOT / f"{name}-device"
    assert (cg / "cpu.cfs_quota_us").read_text().strip() == "2500"
    assert (cg / "cpu.cfs_period_us").read_text().strip() == "10000"

    # the shaped TCP rate holds in both directions and follows set_rate
    assert lab.measure_rate("up") == pytest.approx(2e6, rel=0.25)
    assert lab.measure_rate("down") == pytest.approx(1e6, rel=0.25)
    lab.set_rate(up=500e3)
    assert lab.measure_rate("up") == pytest.approx(500e3, rel=0.25)

    # a bounded CPU loop is clearly slower inside the device cgroup at share 0.25
    loop = "import time; t = time.perf_counter()\nfor i in range(2_000_000): pass\nprint(time.perf_counter() - t)"

    def timed(throttle: bool) -> float:
        cmd = lab.device_command([sys.executable, "-c", loop], throttle=throttle)
        out = subprocess.run(cmd.argv, env=cmd.env, capture_output=True, text=True, timeout=30, check=True)
        return float(out.stdout)

    free = min(timed(False) for _ in range(2))
    slow = min(timed(True) for _ in range(2))
    assert slow / free > 2, (slow, free)

    lab.down()
    _assert_gone(name)
    lab.down()  # idempotent


@needs_lab
@pytest.mark.timeout(60)
def test_processes_pinned_and_in_namespaces(lab):
    probe = "import os; print(sorted(os.sched_getaffinity(0)), os.environ['OMP_NUM_THREADS'], open('/proc/self/cgroup').read())"
    dev = lab.spawn_device([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True)
    srv = lab.spawn_server([sys.executable, "-c", probe], stdout=subprocess.PIPE, text=True)
    dev_out, srv_out = dev.communicate(timeout=30)[0], srv.communicate(timeout=30)[0]
    assert dev_out.startswith("[0] 1") and f":cpu:/{lab.name}-device" in dev_out
    assert srv_out.startswith("[1] 1") and f":cpu:/{lab.name}-device" not in srv_out
    sleeper = lab.spawn_server(["sleep", "30"])
    lab.down()  # terminates what it spawned
    assert sleeper.poll() is not None


@needs_lab
@pytest.mark.timeout(60)
def test_replay_follows_trace(lab):
    steps = []
    trace = [(0.0, 4e6), (1.0, 2e6), (2.0, 6e6)]
    thread = lab.replay(trace, dilation=0.1, down_factor=0.5, on_step=lambda t, r: steps.append((t, r)))
    thread.join(timeout=10)
    assert not thread.is_alive() and lab.replay_error is None
    assert steps == [(0.0, 4e7), (1.0, 2e7), (2.0, 6e7)]  # rate / dilation
    assert (lab.rate_up, lab.rate_down) == (6e7, 3e7)
    lab.replay(trace, dilation=1.0, loop=True)
    lab.stop_replay()  # prompt, even mid-step


@needs_lab
@pytest.mark.timeout(60)
def test_cleanup_after_crash():
    name = _unique()
    # A process brings the lab up, starts a device process, then dies without down().
    crash = textwrap.dedent(f"""
        import os, subprocess
        from lopinfer.bench import lab as L
        lab = L.EdgeLab({name!r}, device_share=0.5).up()
        lab.spawn_device(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(lab.names["cgroup"], flush=True)
        os._exit(0)
    """)
    outsider = None
    try:
        out = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        cg = Path(out.strip())
        assert cg.is_dir() and len(L.leftovers(name)) == 4
        # a task in the cgroup but outside the namespaces is moved out, not killed
        outsider = subprocess.Popen(["sh", "-c", f"echo $$ > {cg}/cgroup.procs && exec sleep 60"])
        for _ in range(100):
            if str(outsider.pid) in (cg / "cgroup.procs").read_text().split():
                break
            time.sleep(0.02)
        with pytest.raises(L.EdgeLabError, match="already exists"):
            L.EdgeLab(name).up()
        L.cleanup(name)
        _assert_gone(name)
        assert outsider.poll() is None
        L.cleanup(name)  # idempotent
    finally:
        if outsider is not None:
            outsider.kill()
            outsider.wait()
        L.cleanup(name)


@needs_lab
@pytest.mark.timeout(60)
def test_sigterm_inside_context_cleans_up():
    name = _unique()
    child = textwrap.dedent(f"""
        import time
        from lopinfer.bench import lab as L
        with L.EdgeLab({name!r}):
            print("up", flush=True)
            time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        assert L.leftovers(name)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        _assert_gone(name)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        L.cleanup(name)


@needs_lab
@pytest.mark.timeout(90)
def test_cli_round_trip():
    name = _unique()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(EDGELAB), *args], capture_output=True,
                              text=True, timeout=60)

    try:
        up = cli("up", "--name", name, "--rate-up", "1MB/s", "--rate-down", "500KB/s",
                 "--device-share", "0.0556")
        assert up.returncode == 0, up.stderr
        assert "1000/17986" in up.stdout  # the quota floor stretches the period
        assert cli("up", "--name", name).returncode == 2  # already up: clear error, no change
        assert cli("rate", "--name", name, "--up", "2MB/s").returncode == 0
        assert L.EdgeLab.attach(name).rate_up == 2e6
        ex = cli("exec", "--name", name, "server", "--", "ip", "-br", "addr")
        assert "10.77.0.2/30" in ex.stdout
        check = cli("check", "--name", name)
        assert check.returncode == 0 and "measured up" in check.stdout
        assert cli("down", "--name", name).returncode == 0
        _assert_gone(name)
    finally:
        L.cleanup(name)
