"""The command line as a whole: bad input exits 2 with one line, the parser, the real
entry points in a fresh process, and the README's install and links."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from cli_helpers import CNN, HERE, MODELS, ROOT, run

from lopinfer.cli import build_parser

BAD_MODELS = [
    "nocolon",
    ":make_cnn",
    f"{MODELS}:",
    "no_such_module_xyz:make",
    f"{MODELS}:no_such_factory",
    f"{MODELS}:make_cnn.not.there",
    f"{HERE / 'missing.py'}:make",
    f"{HERE / 'test_cli.txt'}:make",
    f"{MODELS}:make_failing",
    f"{MODELS}:make_not_a_module",
    f"{MODELS}:example_input_shape",
    f"{MODELS}:make_uncapturable",  # torch.export cannot capture it
]


@pytest.mark.parametrize("spec", BAD_MODELS)
@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_bad_model_exits_2(capsys, command, spec):
    code, out, err = run(capsys, command, spec)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_uncapturable_names_the_cause(capsys):
    code, out, err = run(capsys, "verify", f"{MODELS}:make_uncapturable", "--json")
    assert code == 2
    doc = json.loads(out)
    assert doc["type"] == "CaptureError" and "torch.export failed" in doc["error"]
    assert err == f"error: {doc['error']}\n"  # torch's partial-graph dump held back


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", CNN, "--tiles", "0"],
        ["verify", CNN, "--tiles", "a,b"],
        ["verify", CNN, "--batch", "0"],
        ["verify", CNN, "--dtype", "float16"],
        ["verify", CNN, "--input-shape", "1,3,x"],
        ["verify", CNN, "--input-shape", "1,3,0,4"],
        ["verify", CNN, "--input-shape", "1,4,20,16"],  # wrong channel count for the model
        ["inspect"],
        ["frobnicate", CNN],
        [],
    ],
)
def test_bad_arguments_exit_2(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err


def test_torchvision_without_torchvision(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import raises ImportError
    code, _, err = run(capsys, "verify", "torchvision:resnet18")
    assert code == 2
    assert "torchvision" in err and "lopinfer[vision]" in err


def test_parser_has_one_subparser_per_command():
    parser = build_parser()
    args = parser.parse_args(["verify", CNN, "--tiles", "3"])
    assert args.command == "verify" and args.tiles == "3"


def test_console_entry_point_subprocess(tmp_path):
    """The real entry (`python -m lopinfer.cli`), in a fresh process: JSON on stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "lopinfer.cli", "verify", CNN, "--tiles", "1,4", "--json",
         "--input-shape", "1,3,8,8", "--loopback", "none"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["exact"] is True and len(doc["checks"]) == 2


def test_readme_stands_alone():
    text = (ROOT / "README.md").read_text()
    assert "../" not in text  # nothing outside the repository
    assert 'pip install "lopinfer[all]" "torch==' in text
    assert "[docs/guide.md](docs/guide.md)" in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_python_dash_m_lopinfer(tmp_path):
    """`python -m lopinfer` is the same command."""
    proc = subprocess.run([sys.executable, "-m", "lopinfer", "--version"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("lopinfer ")


def test_console_script_target_resolves():
    from importlib.metadata import entry_points

    from lopinfer.cli import main

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "lopinfer"] or [None]
    if ep is None:
        pytest.skip("lopinfer is not installed (no console script)")
    assert ep.load() is main


def test_every_subcommand_is_wired():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == ["serve", "demo", "plan", "probe", "inspect", "verify", "bench"]
