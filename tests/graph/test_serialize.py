"""Deploy format: JSON + safetensors round trips exactly; a server refuses anything else."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lopinfer
from helpers import assert_exact, reference
from lopinfer.errors import DeployError, ProtocolError, UnsupportedModelError
from lopinfer.graph import Graph, Node, Ref, TensorMeta
from lopinfer.graph.serialize import (
    DEFAULT_ALLOWED_OPS,
    GraphLimits,
    content_hash,
    graph_from_json,
    graph_to_json,
    pack,
    unpack,
    weights_from_safetensors,
    weights_to_safetensors,
)
from lopinfer.runtime import TiledExecutor
from nets import REFERENCE_NETS


@pytest.fixture(scope="module", params=sorted(REFERENCE_NETS))
def captured(request):
    model, x = REFERENCE_NETS[request.param]()
    return model, x, lopinfer.capture(model, (x,))


def _small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 3, 5)).eval()
    return model, torch.randn(1, 2, 8, 6)


@pytest.fixture(scope="module")
def small():
    model, x = _small()
    graph = lopinfer.capture(model, (x,))
    text, weights, digest = pack(graph)
    return model, x, graph, text, weights, digest


# -- round trips -----------------------------------------------------------------------
def test_reference_net_round_trip_is_exact(captured):
    model, x, graph = captured
    text, weights, digest = pack(graph)
    loaded = unpack(text, weights)
    assert_exact(TiledExecutor(loaded, 4)(x), reference(model, x))
    # locality rebuilt here, the same as the client's; the graph re-serialises identically
    assert [(n.name, n.local, n.locality and n.locality.dim) for n in loaded] == [
        (n.name, n.local, n.locality and n.locality.dim) for n in graph]
    assert graph_to_json(loaded) == text
    assert content_hash(loaded) == digest == content_hash(graph)


def test_document_layout(small):
    _, _, graph, text, _, _ = small
    doc = json.loads(text)
    assert doc["format"] == "lopinfer.graph" and doc["version"] == 1
    (x,) = graph.inputs
    assert doc["inputs"] == [{"name": x, "shape": [1, 2, 8, 6], "dtype": "float32"}]
    assert {p["name"] for p in doc["params"]} == set(graph.params)
    conv = next(n for n in doc["nodes"] if n["target"] == "aten.convolution.default")
    assert conv["args"][0] == {"ref": x} and conv["meta"] == {
        "shape": [1, 4, 8, 6], "dtype": "float32"}
    assert "locality" not in conv and conv["module_path"].startswith("0")
    assert doc["outputs"] == graph.outputs and isinstance(doc["out_spec"], str)


def test_special_values_round_trip():
    x = Ref("x")
    nodes = [
        Node("c", "aten.clamp.default", (x, -math.inf, math.inf), {}, TensorMeta((1, 2, 3, 4), torch.float32)),
        Node("f", "aten.full.default", ([1, 2, 3, 4], math.nan),
             {"dtype": torch.float32, "layout": torch.strided, "device": torch.device("cpu"),
              "pin_memory": False}, TensorMeta((1, 2, 3, 4), torch.float32)),
        Node("m", "aten.nan_to_num.default", (Ref("f"), 0.5, 1e300, -1e300), {},
             TensorMeta((1, 2, 3, 4), torch.float32)),
        Node("p", "aten.permute.default", (Ref("c"), (0, 2, 1, 3)), {}, TensorMeta((1, 3, 2, 4), torch.float32)),
        Node("k", "aten._to_copy.default", (Ref("p"),),
             {"dtype": torch.float64, "memory_format": torch.channels_last},
             TensorMeta((1, 3, 2, 4), torch.float64)),
        Node("s", "aten.add.Tensor", (Ref("k"), Ref("w")), {"alpha": 2},
             TensorMeta((1, 3, 2, 4), torch.float64)),
    ]
    graph = Graph({"x": TensorMeta((1, 2, 3, 4), torch.float32)},
                  {"w": torch.arange(4, dtype=torch.float64)}, nodes, ["s", "m"])
    text, weights, digest = pack(graph)
    loaded = unpack(text, weights)
    args = {n.name: (n.args, n.kwargs) for n in loaded}
    assert args["c"][0][1:] == (-math.inf, math.inf)
    assert math.isnan(args["f"][0][1]) and args["f"][1]["device"] == torch.device("cpu")
    assert args["f"][1]["layout"] is torch.strided
    assert args["p"][0][1] == (0, 2, 1, 3) and isinstance(args["p"][0][1], tuple)
    assert args["k"][1] == {"dtype": torch.float64, "memory_format": torch.channels_last}
    assert content_hash(loaded) == digest
    x_val = torch.randn(1, 2, 3, 4)
    for a, b in zip(TiledExecutor(loaded, 1)(x_val), TiledExecutor(graph, 1)(x_val)):
        torch.testing.assert_close(a, b, equal_nan=True)


def test_unserialisable_argument_is_a_clear_error():
    node = Node("y", "aten.mul.Scalar", (Ref("x"), object()), {}, TensorMeta((1, 2, 3), torch.float32))
    graph = Graph({"x": TensorMeta((1, 2, 3), torch.float32)}, {}, [node], ["y"])
    with pytest.raises(UnsupportedModelError, match=r"node y \(aten.mul.Scalar\): argument <object"):
        graph_to_json(graph)


def test_pack_refuses_ops_outside_the_allow_list(small):
    graph = small[2]
    with pytest.raises(UnsupportedModelError, match="aten.convolution.default"):
        pack(graph, allowed_ops=DEFAULT_ALLOWED_OPS - {"aten.convolution.default"})


# -- weights and hash -------------------------------------------------------------------
def test_weights_with_shared_and_strided_storage():
    base = torch.randn(4, 6)
    params = {"a": base, "tied": base, "half": base[:2], "t": base.t(), "empty": torch.empty(0, 3),
              "flag": torch.tensor(True), "h": torch.randn(3).to(torch.bfloat16)}
    graph = Graph({"x": TensorMeta((1, 6), torch.float32)}, params, [], ["x"])
    loaded = weights_from_safetensors(weights_to_safetensors(graph))
    assert loaded.keys() == params.keys()
    for k, v in params.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)


def test_hash_is_stable_and_tracks_weights(small):
    model, x, graph, _, _, digest = small
    again = lopinfer.capture(_small()[0], (x,))
    assert content_hash(again) == digest
    name = next(iter(graph.params))
    changed = dict(graph.params)
    changed[name] = changed[name].clone()
    changed[name].view(-1)[0] += 1e-3
    other = Graph(graph.inputs, changed, graph.nodes, graph.outputs, out_spec=graph.out_spec,
                  name=graph.name)
    assert content_hash(other) != digest


_HASH_SCRIPT = textwrap.dedent("""
    import torch
    from lopinfer.graph import Graph, Node, Ref, TensorMeta
    from lopinfer.graph.serialize import content_hash
    g = torch.Generator().manual_seed(3)
    w = {"w": torch.randn(4, 2, 3, 3, generator=g), "b": torch.randn(4, generator=g)}
    node = Node("y", "aten.convolution.default",
                (Ref("x"), Ref("w"), Ref("b"), [1, 1], [1, 1], [1, 1], False, [0, 0], 1), {},
                TensorMeta((1, 4, 5, 5), torch.float32))
    print(content_hash(Graph({"x": TensorMeta((1, 2, 5, 5), torch.float32)}, w, [node], ["y"])))
""")


def test_hash_is_the_same_in_another_process():
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    runs = [subprocess.run([sys.executable, "-c", _HASH_SCRIPT], capture_output=True, text=True,
                           env=env, timeout=120, check=True).stdout.strip()]
    exec(compile(_HASH_SCRIPT.replace("print(", "runs.append("), "<hash>", "exec"), {"runs": runs})
    assert len(runs[0]) == 64 and runs[0] == runs[1]


# -- the allow-list --------------------------------------------------------------------
def test_allow_list_contents():
    for op in ["aten.convolution.default", "aten.mean.dim", "aten.addmm.default", "aten.t.default",
               "aten._adaptive_avg_pool2d.default", "aten.full.default", "aten.arange.start_step",
               "aten.scalar_tensor.default", "aten.native_layer_norm.default",
               "aten._scaled_dot_product_flash_attention_for_cpu.default",
               "aten.native_group_norm.default", "aten.index.Tensor", "aten.embedding.default",
               "aten.var.correction", "aten.sum.dim_IntList", "aten.split.Tensor", "aten.squeeze.dims",
               "aten.max_pool2d_with_indices.default", "aten.upsample_bilinear2d.vec",
               "aten.as_strided.default", "aten.slice_scatter.default", "aten.where.self"]:
        assert op in DEFAULT_ALLOWED_OPS, op
    for op in ["aten.add_.Tensor", "aten.add.out", "aten.copy_.default", "aten.empty.memory_format",
               "aten.empty_like.default", "aten.rand.default", "aten.bernoulli.default",
               "aten.where.default", "aten.add.str", "aten.index.list_int", "aten.nonzero.default",
               "aten._local_scalar_dense.default"]:
        assert op not in DEFAULT_ALLOWED_OPS, op
    for name in DEFAULT_ALLOWED_OPS:
        schema = Node("n", name, (), {}, TensorMeta((), torch.float32)).op._schema
        assert not schema.is_mutable and not any(a.is_out for a in schema.arguments), name
        assert all(str(r.type) in ("Tensor", "List[Tensor]") for r in schema.returns), name


# -- rejections: each a DeployError (a ProtocolError) in one line ------------------------
def _doc(text):
    return json.loads(text)


def _rejects(text, weights, match, **kw):
    if not isinstance(text, (str, bytes)):
        text = json.dumps(text)
    with pytest.raises(DeployError, match=match) as info:
        unpack(text, weights, **kw)
    assert isinstance(info.value, ProtocolError)
    assert "\n" not in str(info.value)
    return str(info.value)


def _conv(doc):
    return next(n for n in doc["nodes"] if n["target"] == "aten.convolution.default")


@pytest.mark.parametrize("target", ["aten.system.default", "builtins.eval", "aten.__class__.__init__",
                                    "aten.add_.Tensor", "aten.empty.memory_format", 7])
def test_rejects_ops_outside_the_allow_list(small, target):
    doc = _doc(small[3])
    _conv(doc)["target"] = target
    _rejects(doc, small[4], r"node 'convolution': op .* is not in the allow-list")


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(version=2), "unsupported graph format version 2"),
    (lambda d: d.update(version="1"), "unsupported graph format version '1'"),
    (lambda d: d.update(version=True), "unsupported graph format version True"),
    (lambda d: d.update(format="pickle"), "not a LOPInfer graph"),
    (lambda d: d.update(extra=1), "graph: unknown field"),
    (lambda d: d.pop("outputs"), "graph: missing field"),
    (lambda d: d["inputs"][0].update(dtype="complex64"), "input input: dtype 'complex64' is not one of"),
    (lambda d: d["nodes"][0]["meta"].update(dtype="object"), "dtype 'object' is not one of"),
    (lambda d: _conv(d)["kwargs"].update(dtype={"dtype": "float128"}), "dtype value 'float128'"),
    (lambda d: _conv(d)["args"].append({"device": "cuda; rm -rf /"}), "device value"),
    (lambda d: _conv(d)["args"].append({"pickle": "x"}), "pickle value"),
    (lambda d: _conv(d)["args"].append({"a": 1, "b": 2}), "unsupported argument value"),
    (lambda d: _conv(d).update(locality={"dim": 2}), "unknown field"),
    (lambda d: _conv(d).update(index=-1), "index -1"),
    (lambda d: _conv(d)["args"].__setitem__(0, {"ref": d["nodes"][-1]["name"]}), "before it is defined"),
    (lambda d: _conv(d)["args"].__setitem__(0, {"ref": "convolution"}), "before it is defined"),
    (lambda d: _conv(d)["args"].__setitem__(0, {"ref": "nowhere"}), "reads 'nowhere' before"),
    (lambda d: d["params"][0].update(shape=[9, 9]), r"weights hold .*, the graph declares float32\[9,9\]"),
    (lambda d: d["params"][0].update(dtype="float64"), "the graph declares float64"),
    (lambda d: d["params"].pop(0), "reads 'p_0_weight' before it is defined"),
    (lambda d: d["params"].append({"name": "ghost", "shape": [1], "dtype": "float32"}),
     "weights do not match the graph's params: missing ghost"),
    (lambda d: d["nodes"][1].update(name=d["nodes"][0]["name"]), "defined twice"),
    (lambda d: d["nodes"][0].update(name="a.b"), "not an identifier"),
    (lambda d: d["nodes"][0].update(name="n" * 300), "not an identifier"),
    (lambda d: d["outputs"].append("ghost"), "output 'ghost' is not a defined value"),
    (lambda d: d.update(outputs=[]), "no outputs"),
    (lambda d: d.update(name="evil\nname"), "control characters"),
    (lambda d: _conv(d)["meta"].update(shape=[1, 4, 8, 7]), r"declared float32\[1,4,8,7\], the op gives"),
    (lambda d: _conv(d)["args"].__setitem__(3, [0, 0]), "invalid arguments"),
    (lambda d: d.update(out_spec='[1, {"type": "collections.defaultdict", "context": "{}", '
                                  '"children_spec": []}]'), "collections.defaultdict.* not allowed"),
    (lambda d: d.update(out_spec='[1, {"type": "builtins.dict", "context": "[{\\"__enum__\\": 1, '
                                  '\\"fqn\\": \\"os:system\\", \\"name\\": \\"x\\"}]", "children_spec": '
                                  '[{"type": null, "context": null, "children_spec": []}]}]'),
     "keys of builtins.dict must be a list of plain values"),
    (lambda d: d.update(out_spec="[1, 2"), "out_spec does not parse"),
    (lambda d: d.update(out_spec='[1, {"type": "builtins.tuple", "context": "null", "children_spec": []}]'),
     "0 leaves for 1 outputs"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_rejects_invalid_documents(small, edit, match):
    doc = _doc(small[3])
    edit(doc)
    _rejects(doc, small[4], match)


@pytest.mark.parametrize("text, match", [
    ("{", "does not parse"), ("", "does not parse"), (b"\xff\xfe", "not UTF-8"),
    ('{"format": NaN}', "does not parse"), ('{"a": 1, "a": 2}', "duplicate key"),
    ("[" * 100_000 + "]" * 100_000, "does not parse"),
    ("[]", "must be an object, got list"), ("1", "got int"), ("null", "got NoneType"),
    ('"graph"', "got str"),
])
def test_rejects_garbage_json(small, text, match):
    _rejects(text, small[4], match)


@pytest.mark.parametrize("limits, match", [
    (GraphLimits(max_nodes=3), "nodes: .* over the limit of 3"),
    (GraphLimits(max_params=2), "params: .* over the limit of 2"),
    (GraphLimits(max_json_bytes=100), "over the limit of 100"),
    (GraphLimits(max_weight_bytes=100), "weights are .* bytes, over the limit of 100"),
    (GraphLimits(max_rank=3), "shape: 4 entries, over the limit of 3"),
    (GraphLimits(max_tensor_elements=50), "over the limit of 50"),
    (GraphLimits(max_total_elements=500), "exceed 500 elements in total"),
    (GraphLimits(max_seq_len=1), "list argument: 2 entries, over the limit of 1"),
    (GraphLimits(max_args=3), "over the limit of 3"),
    (GraphLimits(max_depth=0), "nested deeper than 0"),
])
def test_rejects_oversized_graphs(small, limits, match):
    _rejects(small[3], small[4], match, limits=limits)


def test_rejects_weights_that_do_not_match(small):
    from safetensors.torch import save

    tensors = weights_from_safetensors(small[4])
    first = next(iter(tensors))
    fewer = save({k: v for k, v in tensors.items() if k != first})
    _rejects(small[3], fewer, f"weights do not match the graph's params: missing {first}")
    more = save({**tensors, "extra": torch.ones(1)})
    _rejects(small[3], more, "weights do not match the graph's params: unexpected extra")
    wrong = save({**tensors, first: tensors[first].double()})
    _rejects(small[3], wrong, f"parameter {first}: weights hold float64")


def test_rejects_bad_weights(small):
    _rejects(small[3], b"not safetensors at all", "weights are not")
    _rejects(small[3], small[4][:-10], "weights are not a valid safetensors blob")
    _rejects(small[3], "text", "weights must be bytes")
    bad = Graph({"x": TensorMeta((1,), torch.float32)}, {"c": torch.ones(2, dtype=torch.complex64)},
                [], ["x"])
    with pytest.raises(UnsupportedModelError, match="complex64"):
        weights_to_safetensors(bad)


def test_shape_check_runs_factories_on_meta():
    meta = TensorMeta((4, 5), torch.float32)
    nodes = [Node("f", "aten.full.default", ([4, 5], 1.0), {}, meta),
             Node("y", "aten.add.Tensor", (Ref("x"), Ref("f")), {}, meta)]
    graph = Graph({"x": meta}, {}, nodes, ["y"])
    text, weights, _ = pack(graph)
    assert unpack(text, weights)["f"].meta == meta
    doc = _doc(text)
    doc["nodes"][0]["args"][0] = [2**40]  # would be 4 TiB if it ran on the CPU
    _rejects(doc, weights, r"node f \(aten.full.default\): declared float32\[4,5\], the op gives "
                           r"float32\[1099511627776\]")
    doc["nodes"][0]["kwargs"].update(dtype={"dtype": "float32"}, device={"device": "cpu"})
    _rejects(doc, weights, r"the op gives float32\[1099511627776\]")


def test_graph_from_json_checks_params(small):
    _, _, graph, text, _, _ = small
    loaded = graph_from_json(text, graph.params)
    assert [n.name for n in loaded] == [n.name for n in graph]
    with pytest.raises(DeployError, match="is a str, not a tensor"):
        graph_from_json(text, {k: "w" for k in graph.params})


# -- fuzzing -------------------------------------------------------------------------------
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.sampled_from(["x", "float32", "aten.relu.default", "inf"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["ref", "tuple", "dtype", "float", "device", "name", "shape"]) | st.text(max_size=4),
        inner, max_size=2),
    max_leaves=8)


def _unpack_or_deploy_error(text, weights):
    try:
        unpack(text, weights)
    except DeployError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(data=st.data())
def test_fuzz_text_mutations_only_raise_deploy_error(small, data):
    text, weights = small[3], small[4]
    cut = data.draw(st.integers(0, len(text)))
    kind = data.draw(st.sampled_from(["truncate", "replace", "insert", "delete"]))
    if kind == "truncate":
        text = text[:cut]
    else:
        junk = data.draw(st.text(min_size=1, max_size=4) | st.sampled_from(list('{}[]",:0-e.')))
        text = {"replace": text[:cut] + junk + text[cut + len(junk):],
                "insert": text[:cut] + junk + text[cut:],
                "delete": text[:cut] + text[cut + len(junk):]}[kind]
    _unpack_or_deploy_error(text, weights)


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


@FUZZ
@given(data=st.data())
def test_fuzz_structure_mutations_only_raise_deploy_error(small, data):
    doc = _doc(small[3])
    paths = [p for p in _paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, (dict, list)):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_JSON)
    _unpack_or_deploy_error(json.dumps(doc), small[4])


# -- torchvision (tox -e vision): the allow-list covers what torch captures today ----------------
VISION = {"resnet18": 64, "mobilenet_v3_small": 64, "efficientnet_b0": 64, "shufflenet_v2_x0_5": 64,
          "convnext_tiny": 64, "lraspp_mobilenet_v3_large": 128, "vit_b_16": 224, "swin_v2_t": 224,
          "maxvit_t": 224}


@pytest.mark.vision
@pytest.mark.parametrize("name", sorted(VISION))
def test_torchvision_round_trip(name):
    pytest.importorskip("torchvision", reason="needs torchvision: tox -e vision")
    from lopinfer.models import load_model

    model = load_model(f"torchvision:{name}").module
    x = torch.randn(1, 3, VISION[name], VISION[name])
    graph = lopinfer.capture(model, (x,))
    text, weights, digest = pack(graph)
    loaded = unpack(text, weights)
    assert content_hash(loaded) == digest
    assert [n.local for n in loaded] == [n.local for n in graph]
    if VISION[name] <= 128:
        assert_exact(TiledExecutor(loaded, 4)(x), reference(model, x))


def test_weights_blob_is_safetensors_read_by_safetensors_itself():
    """The writer is ours (one buffer); the reader, on the untrusted side, is safetensors':
    every dtype of the format's table, empty and 0-d tensors, and the library's own save
    read back the same."""
    import safetensors.torch

    from lopinfer.graph.format import DTYPES
    from lopinfer.graph.serialize import weights_blob

    model, x = REFERENCE_NETS["vgg"]()
    g = lopinfer.capture(model, (x,))
    extra = {}
    for i, dt in enumerate(DTYPES.values()):
        t = (torch.arange(7 + i) % 3).to(dt).reshape(-1) if dt != torch.bool else (
            torch.arange(5) % 2 == 0)
        extra[f"extra_{i}"] = t
    extra["empty"] = torch.zeros(0, 3)
    extra["scalar"] = torch.tensor(2.5, dtype=torch.float64)
    g.params.update(extra)
    blob = weights_blob(g)
    back = safetensors.torch.load(blob.numpy().tobytes())
    assert set(back) == set(g.params)
    for name, t in g.params.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert torch.equal(back[name], t.detach()), name
    ours = safetensors.torch.load(safetensors.torch.save(dict(g.params)))
    assert all(torch.equal(ours[k], back[k]) for k in back)


# -- weights as parts (an upload) -----------------------------------------------------------
def test_parts_round_trip_every_dtype_as_views_of_what_arrived():
    """Each parameter travels as 1-d parts of its own dtype; the loader keeps a one-part
    parameter as a view of that part (nothing copied) and joins a split one."""
    from lopinfer.graph.format import DTYPES
    from lopinfer.graph.serialize import pack_parts, unpack_parts
    from lopinfer.transports import Frame, decode_frame, encode_frame

    model, x = REFERENCE_NETS["vgg"]()
    g = lopinfer.capture(model, (x,))
    for i, dt in enumerate(DTYPES.values()):
        g.params[f"extra_{i}"] = (torch.arange(7 + i) % 3).to(dt) if dt != torch.bool else (
            torch.arange(5) % 2 == 0)
    g.params["empty"] = torch.zeros(0, 3)
    g.params["scalar"] = torch.tensor(2.5, dtype=torch.float64)
    for max_bytes in (1 << 30, 64):  # whole, and split into parts of 64 bytes
        text, parts, digest = pack_parts(g, max_bytes=max_bytes)
        assert all(p.dim() == 1 and p.numel() * p.element_size() <= max(max_bytes, 8)
                   for p in parts)
        received = [decode_frame(encode_frame(Frame(tensor=p, kind=3, tensor_id=i))).tensor
                    for i, p in enumerate(parts)]  # as a server receives them
        back = unpack_parts(text, received, check_shapes=False)
        assert content_hash(back) == digest
        for name, t in g.params.items():
            assert back.params[name].dtype == t.dtype and back.params[name].shape == t.shape
            assert torch.equal(back.params[name], t.detach()), name
        if max_bytes == 1 << 30:
            ptrs = {p.data_ptr() for p in received}
            assert all(t.data_ptr() in ptrs for t in back.params.values() if t.numel())


def test_parts_that_do_not_match_the_graph_are_refused(small):
    from lopinfer.graph.serialize import pack_parts, unpack_parts

    graph = small[2]
    text, parts, _ = pack_parts(graph)
    first = next(iter(graph.params))
    cases = [
        (parts[:-1], "weights end after 0 of its"),
        (parts + [torch.ones(1)], "1 parts more than the graph's"),
        ([parts[0].double()] + parts[1:], f"parameter {first}: weights part 0 is .*float64"),
        ([parts[0].reshape(1, -1)] + parts[1:], f"parameter {first}: weights part 0 is"),
        ([parts[0][:-1]] + parts[1:], f"parameter {first}: weights hold"),
        ([torch.cat([parts[0], parts[1]])] + parts[2:], f"parameter {first}: weights hold"),
    ]
    for bad, match in cases:
        with pytest.raises(DeployError, match=match):
            unpack_parts(text, bad)
    with pytest.raises(DeployError, match="over the limit"):
        unpack_parts(text, parts, limits=GraphLimits(max_weight_bytes=10))
