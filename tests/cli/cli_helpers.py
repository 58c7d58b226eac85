"""Shared by the command-line tests: the tiny models' MODEL strings and running
``lopinfer`` in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lopinfer.cli import main

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELS = HERE / "_cli_models.py"
CNN = f"{MODELS}:make_cnn"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    if argv and argv[0] == "verify" and "--loopback" not in argv:
        argv = (*argv, "--loopback", "none")  # plan checks have their own test below
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)
