"""The command line: ``lopinfer inspect`` and ``lopinfer verify`` on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lopinfer import TiledExecutor
from lopinfer.cli import build_parser, main
from lopinfer.models import ModelSpecError, load_model, parse_shape
from lopinfer.verify import verify

HERE = Path(__file__).resolve().parent
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


# -- inspect ---------------------------------------------------------------------------
def test_inspect_json_schema(capsys):
    code, doc = run_json(capsys, "inspect", CNN)
    assert code == 0
    assert doc["model"] == "make_cnn"
    assert doc["input_shape"] == [1, 3, 20, 16]  # the module's example_input_shape
    node_keys = {"name", "op", "index", "shape", "dtype", "bytes", "local", "tiled_dim",
                 "halo", "rule", "module", "flops"}
    assert doc["nodes"] and all(set(n) == node_keys for n in doc["nodes"])
    s = doc["summary"]
    assert s["nodes"] == len(doc["nodes"]) == s["local"] + s["global"]
    assert s["local"] == sum(n["local"] for n in doc["nodes"]) > 0
    assert s["global"] >= 2  # the mean over H, W and the linear head
    assert s["flops"] == sum(n["flops"] for n in doc["nodes"])
    assert 0.9 < s["local_flops_share"] < 1.0
    convs = [n for n in doc["nodes"] if n["op"] == "aten.convolution.default"]
    assert len(convs) == 3
    first = convs[0]
    assert first["local"] and first["tiled_dim"] == 2 and first["rule"] and first["halo"] == 2
    assert first["shape"] == [1, 8, 20, 16] and first["bytes"] == 8 * 20 * 16 * 4
    assert first["module"].startswith("stem.0")
    # 3x3 conv, 3 -> 8 channels, with bias: 2 * 3*3*3 MACs per output element + bias
    assert first["flops"] == 2 * 27 * 8 * 20 * 16 + 8 * 20 * 16
    for n in doc["nodes"]:
        if not n["local"]:
            assert n["tiled_dim"] is None and n["halo"] is None and n["rule"] is None


def test_inspect_table(capsys):
    code, out, err = run(capsys, "inspect", CNN, "--input-shape", "1,3,12,10")
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("node"))
    for col in ("op", "output", "bytes", "kind", "dim", "halo", "rule", "flops", "module"):
        assert col in header
    assert any("convolution" in line and "local" in line and "window" in line for line in lines)
    assert any("GLOBAL" in line and "linear" in line for line in lines)
    assert "float32[1,8,12,10]" in out
    assert "in local operators" in lines[-1] and "global" in lines[-1]


def test_inspect_tiled_dim(capsys):
    _, doc = run_json(capsys, "inspect", CNN, "--tiled-dim", "3")
    convs = [n for n in doc["nodes"] if n["op"] == "aten.convolution.default"]
    assert convs[0]["tiled_dim"] == 3


# -- verify ----------------------------------------------------------------------------
def test_verify_json_schema(capsys):
    code, doc = run_json(capsys, "verify", CNN)
    assert code == 0
    assert doc["model"] == "make_cnn"
    assert [c["name"] for c in doc["checks"]] == ["tiled:1", "tiled:4", "tiled:7"]
    for c in doc["checks"]:
        assert {"name", "max_abs_err", "rel_err", "exact"} <= set(c)
        assert c["exact"] is True
        assert isinstance(c["max_abs_err"], float) and isinstance(c["rel_err"], float)
        assert c["rel_err"] < 1e-5
    assert doc["exact"] is True
    assert 0.9 < doc["local_flops_share"] < 1.0


def test_verify_plan_checks_in_loopback(capsys):
    code, doc = run_json(capsys, "verify", CNN, "--tiles", "3", "--loopback", "tcp")
    assert code == 0
    names = [c["name"] for c in doc["checks"]]
    assert names == ["tiled:3", "plan:local", "plan:offload", "plan:offload-tiled", "plan:cut",
                     "plan:split"]
    assert all(c["exact"] for c in doc["checks"]) and doc["exact"] is True


def test_verify_options(capsys):
    code, doc = run_json(capsys, "verify", CNN, "--tiles", "2,3", "--dtype", "float64",
                         "--batch", "2", "--input-shape", "1,3,14,9")
    assert code == 0
    assert [c["name"] for c in doc["checks"]] == ["tiled:2", "tiled:3"]
    assert doc["input_shapes"] == [[2, 3, 14, 9]] and doc["dtype"] == "float64"
    assert all(c["rel_err"] < 1e-12 for c in doc["checks"])


def test_verify_table(capsys):
    code, out, _ = run(capsys, "verify", CNN, "--tiles", "1,4")
    assert code == 0
    assert any(line.startswith("tiled:4") and "yes" in line for line in out.splitlines())
    assert "all exact" in out


def _perturbed_call(self, *inputs):
    out = _real_call(self, *inputs)
    return out + 1e-2 * out.abs().max()


_real_call = TiledExecutor.__call__


def test_verify_not_exact_exits_1(capsys, monkeypatch):
    monkeypatch.setattr(TiledExecutor, "__call__", _perturbed_call)
    code, doc = run_json(capsys, "verify", CNN, "--tiles", "1,3")
    assert code == 1
    assert doc["exact"] is False
    assert [c["exact"] for c in doc["checks"]] == [False, False]
    assert all(c["max_abs_err"] > 0 and "beyond" in c["detail"] for c in doc["checks"])
    code, out, _ = run(capsys, "verify", CNN, "--tiles", "2")
    assert code == 1 and "NOT EXACT" in out and "NO" in out


def test_verify_crashing_check_is_an_internal_error(capsys, monkeypatch):
    def boom(self, *inputs):
        raise RuntimeError("tile kernel exploded")

    monkeypatch.setattr(TiledExecutor, "__call__", boom)
    code, doc = run_json(capsys, "verify", CNN, "--tiles", "4")
    assert code == 3  # a bug, told apart from "ran, not exact" (1) and bad input (2)
    (check,) = doc["checks"]
    assert check["exact"] is False and check["max_abs_err"] is None  # inf -> null in JSON
    assert "RuntimeError: tile kernel exploded" in check["detail"]
    assert doc["internal_errors"] == ["tiled:4"]


def test_internal_error_exits_3_with_the_traceback(capsys, monkeypatch):
    import lopinfer.verify

    def broken(*args, **kwargs):
        raise KeyError("b_relative_position_index")

    monkeypatch.setattr(lopinfer.verify, "verify", broken)
    code, out, err = run(capsys, "verify", CNN, "--tiles", "1")
    assert code == 3
    assert "Traceback" in err and "KeyError" in err


def test_verify_library_function():
    torch.manual_seed(0)
    model = load_model(CNN).module
    x = torch.randn(1, 3, 10, 6)
    report = verify(model, x, tiles=(1, 5))
    assert report["exact"] and [c["name"] for c in report["checks"]] == ["tiled:1", "tiled:5"]
    extra = ("double", lambda graph, inputs: 2 * model(*inputs))
    report = verify(model, (x,), tiles=(), runners=[extra])
    assert not report["exact"] and report["checks"][0]["name"] == "double"


# -- bad input: exit 2 with one line ----------------------------------------------------
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


# -- MODEL strings ---------------------------------------------------------------------
def test_module_factory_form(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    loaded = load_model("_cli_models:make_training_cnn")
    assert not loaded.module.training  # put in eval mode
    assert loaded.input_shape == (1, 3, 20, 16)
    assert loaded.name == "make_training_cnn"


def test_factory_shape_wins_over_module_shape():
    loaded = load_model(f"{MODELS}:make_wide")
    assert loaded.input_shape == (2, 2, 9, 12)
    assert loaded.example_shape() == (2, 2, 9, 12)
    assert loaded.example_shape((1, 2, 5, 5)) == (1, 2, 5, 5)


def test_bad_model_errors_are_model_spec_errors():
    with pytest.raises(ModelSpecError, match="no such file"):
        load_model("nowhere/model.py:make")
    with pytest.raises(ModelSpecError, match="not an nn.Module"):
        load_model(f"{MODELS}:make_not_a_module")


def test_parse_shape():
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape("1x3x8x8") == (1, 3, 8, 8)
    with pytest.raises(ValueError):
        parse_shape("")


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


def test_plan_command_lists_every_planner(capsys):
    code, doc = run_json(capsys, "plan", CNN, "--bandwidth", "20MB/s", "--input-shape", "1,3,32,32")
    assert code == 0
    names = [p["planner"] for p in doc["plans"]]
    assert names[-1] == "lopinfer" and {"local", "offload", "neurosurgeon"} <= set(names)
    best = min(p["latency_ms"] for p in doc["plans"] if p["planner"] != "lopinfer")
    assert doc["plans"][-1]["latency_ms"] <= best + 1e-9
    assert all(p["bound_ms"] <= p["latency_ms"] + 1e-9 for p in doc["plans"])
    # the physical limit: no planner's own bound is below it, each latency a multiple of it
    assert 0 < doc["limit_ms"] <= min(p["bound_ms"] for p in doc["plans"]) * (1 + 1e-6)
    assert all(p["x_limit"] >= 1 - 1e-6 for p in doc["plans"])


def test_parse_rate():
    from lopinfer.cli import parse_rate

    assert parse_rate("10MB/s") == 10e6
    assert parse_rate("80Mbit/s") == 10e6
    assert parse_rate("1KiB/s") == 1024
    assert parse_rate("2e6") == 2e6
