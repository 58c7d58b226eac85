"""``lopinfer verify`` on a tiny model: tiled and plan checks, options, the table, and
the exit statuses of a result that is not exact (1) and of a crashing check (3)."""

from __future__ import annotations

from cli_helpers import CNN, run, run_json

from lopinfer import TiledExecutor


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
