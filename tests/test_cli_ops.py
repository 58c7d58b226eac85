"""The operator's commands: ``lopinfer probe``, ``plan --server``, ``timm:NAME`` and the
closest-name suggestions, and that every ``lopinfer serve`` flag the deployment files
(docs/guide.md, deploy/) use exists."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lopinfer.cli import build_parser, main
from lopinfer.models import ModelSpecError, load_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CNN = f"{HERE / '_cli_models.py'}:make_cnn"


@pytest.fixture(scope="module")
def server_url():
    """A real ``lopinfer serve`` child process on 127.0.0.1 (stopped with SIGTERM)."""
    proc = subprocess.Popen([sys.executable, "-m", "lopinfer.cli", "serve", "--listen",
                             "tcp://127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = proc.stdout.readline().strip()
    assert line.startswith("LOPINFER_LISTENING "), line
    yield line.split(" ", 1)[1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    proc.stdout.close()


def test_probe_json_and_text(capsys, server_url):
    assert main(["probe", server_url, "--json", "--seconds", "0.5"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["url"] == server_url and doc["device"] == "cpu"
    assert doc["rtt_ms"] > 0 and doc["up_bytes_per_s"] > 0 and doc["down_bytes_per_s"] > 0
    assert doc["up_frame_us"] >= 0 and doc["up_samples"] > 0
    assert main(["probe", server_url, "--seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"server lopinfer (cpu) at {server_url}\n")
    assert re.search(r"rtt +[\d.]+ ms", out) and "MB/s" in out and "per frame" in out


def test_probe_refused_is_one_line(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["probe", f"tcp://127.0.0.1:{port}", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: connection refused by 127.0.0.1:{port}") and err.count("\n") == 1


def test_plan_with_a_measured_server(capsys, server_url):
    assert main(["plan", CNN, "--server", server_url, "--input-shape", "1,3,32,32",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["server"] == server_url and doc["bandwidth"] > 0 and doc["client_speed"] == 1
    assert [p["planner"] for p in doc["plans"]][-1] == "lopinfer"


def test_plan_needs_a_bandwidth_or_a_server(capsys):
    assert main(["plan", CNN]) == 2
    assert "give --bandwidth RATE, or --server URL" in capsys.readouterr().err


# -- timm: and suggestions ------------------------------------------------------------------
def fake_timm(calls: list) -> types.ModuleType:
    from torch import nn

    mod = types.ModuleType("timm")
    mod.list_models = lambda: ["resnet18", "resnet50", "convnext_tiny"]

    def create_model(name, pretrained=True):
        calls.append((name, pretrained))
        model = nn.Sequential(nn.Conv2d(3, 4, 3))
        model.pretrained_cfg = {"input_size": (3, 160, 160)}
        return model

    mod.create_model = create_model
    return mod


def test_timm_models_have_random_weights(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "timm", fake_timm(calls))
    loaded = load_model("timm:resnet18")
    assert calls == [("resnet18", False)]  # pretrained=False: nothing downloaded
    assert loaded.name == "resnet18" and loaded.input_shape == (1, 3, 160, 160)
    assert not loaded.module.training


def test_unknown_timm_name_suggests_the_closest(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", fake_timm([]))
    with pytest.raises(ModelSpecError, match=r"unknown timm model 'resnet19'; did you mean "
                                             r"resnet18, resnet50\?"):
        load_model("timm:resnet19")


def test_unknown_torchvision_name_suggests_the_closest(monkeypatch):
    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(list_models=lambda: ["vgg19_bn", "vgg19", "resnet18"])
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    with pytest.raises(ModelSpecError, match=r"unknown torchvision model 'vgg19bn'; did you "
                                             r"mean vgg19_bn, vgg19\?"):
        load_model("torchvision:vgg19bn")


def test_timm_without_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'lopinfer\[timm\]'"):
        load_model("timm:resnet18")


@pytest.mark.vision
def test_real_timm_model_is_exact():
    pytest.importorskip("timm", reason="timm: pip install 'lopinfer[timm]'")
    from lopinfer.verify import verify

    loaded = load_model("timm:resnet18")
    import torch

    x = torch.randn(1, 3, 64, 64)
    report = verify(loaded.module, (x,), [1, 4], name="resnet18")
    assert report["exact"]


# -- the deployment files use only flags that exist -----------------------------------------
def serve_flags() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    serve = sub.choices["serve"]
    return {opt for a in serve._actions for opt in a.option_strings}


def serve_commands() -> list[tuple[str, list[str]]]:
    """(file, argv after `serve`) of every `lopinfer serve ...` in the guide and deploy/."""
    found = []
    files = [ROOT / "docs" / "guide.md", *sorted((ROOT / "deploy").rglob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        text = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
        if path.suffix in (".yaml", ".yml"):  # args: ["serve", "--listen", ...] lists
            for m in re.finditer(r'\[\s*"serve"\s*,([^\]]*)\]', text):
                found.append((path.name, re.findall(r'"([^"]*)"', m.group(1))))
        if path.name.startswith("Dockerfile"):  # CMD ["serve", ...] in exec form
            for m in re.finditer(r'(?:CMD|ENTRYPOINT)\s*\[([^\]]*"serve"[^\]]*)\]', text):
                argv = re.findall(r'"([^"]*)"', m.group(1))
                found.append((path.name, argv[argv.index("serve") + 1:]))
        for m in re.finditer(r"lopinfer serve ([^\n`|&;]*)", text):
            found.append((path.name, shlex.split(m.group(1), comments=True)))
    return found


def test_deploy_files_exist_and_parse():
    yaml = pytest.importorskip("yaml", reason="parsing the manifests needs PyYAML")
    manifests = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
    kinds = {doc["kind"] for m in manifests for doc in yaml.safe_load_all(m.read_text()) if doc}
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= kinds


def test_every_serve_flag_in_the_guide_and_deploy_files_exists():
    flags = serve_flags()
    commands = serve_commands()
    files = {f for f, _ in commands}
    assert {"guide.md", "lopinfer.service", "Dockerfile", "Dockerfile.cuda",
            "deployment.yaml"} <= files, files
    for name, argv in commands:
        used = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
        assert used, (name, argv)
        assert used <= flags, (name, sorted(used - flags))
        ns = build_parser().parse_args(["serve", *[a for a in argv if "$" not in a]])
        assert ns.command == "serve"


def test_systemd_exec_start_is_a_serve_command():
    unit = (ROOT / "deploy" / "systemd" / "lopinfer.service").read_text()
    (line,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0].endswith("lopinfer") and argv[1] == "serve"
    assert {a for a in argv if a.startswith("--")} <= serve_flags()


def test_readme_stands_alone():
    text = (ROOT / "README.md").read_text()
    assert "../" not in text  # nothing outside the repository
    assert 'pip install "lopinfer[all]" "torch==' in text
    assert "[docs/guide.md](docs/guide.md)" in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target
