"""``lopinfer serve``: every flag the deployment files (docs/guide.md, deploy/) use
exists and parses."""

from __future__ import annotations

import re
import shlex

import pytest
from cli_helpers import ROOT

from lopinfer.cli import build_parser


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
