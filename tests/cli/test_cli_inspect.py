"""``lopinfer inspect`` on a tiny model: the JSON schema, the table, ``--tiled-dim``."""

from __future__ import annotations

from cli_helpers import CNN, run, run_json


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
