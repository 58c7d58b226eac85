"""The op catalogue (lopinfer.graph.ops) is the one table every stage reads: the sets
capture, the locality analysis, the loader and the FLOP counts derive from it are
consistent, and equal the hand-written tables they replaced (frozen here once)."""

from __future__ import annotations

import logging

import torch

import lopinfer
from lopinfer.graph import (
    DEFAULT_ALLOWED_OPS,
    Graph,
    Node,
    Ref,
    TensorMeta,
    allowlist,
    flops,
    locality,
)
from lopinfer.graph.capture import PRESERVED_OPS
from lopinfer.graph.ops import ALLOWED_PACKETS, CATALOGUE, PRESERVED_OVERLOADS, lookup

# -- the tables as they were before the catalogue ------------------------------------------
OLD_POINTWISE = set(
    """abs neg relu relu6 gelu sigmoid tanh hardswish hardsigmoid silu mish elu celu selu
    leaky_relu hardtanh softplus exp exp2 expm1 log log1p log2 log10 sqrt rsqrt reciprocal
    sin cos tan asin acos atan sinh cosh erf erfc erfinv sign sgn floor ceil round trunc frac
    clamp clamp_min clamp_max logical_not bitwise_not isnan isinf isfinite nan_to_num
    _to_copy clone alias lift_fresh_copy detach square logit threshold add sub rsub mul div
    pow maximum minimum fmax fmin remainder fmod atan2 eq ne lt le gt ge logical_and
    logical_or logical_xor bitwise_and bitwise_or bitwise_xor where masked_fill lerp
    addcmul addcdiv copy hypot xlogy fill native_dropout""".split())
OLD_RULES = {name: "pointwise" for name in OLD_POINTWISE} | {
    "_native_batch_norm_legit_no_training": "per_channel", "native_batch_norm": "per_channel",
    "_prelu_kernel": "per_channel", "convolution": "convolution",
    "max_pool2d_with_indices": "max_pool", "max_pool3d_with_indices": "max_pool",
    "avg_pool2d": "avg_pool", "avg_pool3d": "avg_pool",
    "_adaptive_avg_pool2d": "adaptive_pool", "_adaptive_avg_pool3d": "adaptive_pool",
    "adaptive_max_pool2d": "adaptive_pool", "adaptive_max_pool3d": "adaptive_pool",
    "constant_pad_nd": "pad", "reflection_pad1d": "pad", "reflection_pad2d": "pad",
    "reflection_pad3d": "pad", "replication_pad1d": "pad", "replication_pad2d": "pad",
    "replication_pad3d": "pad", "cat": "cat", "slice": "slice", "split_with_sizes": "split",
    "split": "split", "select": "select", "permute": "permute", "unsqueeze": "unsqueeze",
    "squeeze": "squeeze", "expand": "expand", "view": "view", "_unsafe_view": "view",
    "reshape": "view", "view_copy": "view", "layer_norm": "layer_norm",
    "native_layer_norm": "layer_norm", "_softmax": "softmax", "_log_softmax": "softmax",
    "sum": "reduce", "mean": "reduce", "amax": "reduce", "amin": "reduce", "var": "var",
    "linear": "linear", "mm": "matmul", "addmm": "matmul", "bmm": "matmul",
} | {name: "upsample" for name in (
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
    "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d",
    "upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d")}
OLD_PRESERVED = {
    "linear.default", "layer_norm.default", "hardswish.default", "hardsigmoid.default",
    "silu.default", "mish.default", "relu6.default", "reflection_pad1d.default",
    "reflection_pad2d.default", "reflection_pad3d.default", "replication_pad1d.default",
    "replication_pad2d.default", "replication_pad3d.default", "upsample_nearest1d.vec",
    "upsample_nearest2d.vec", "upsample_nearest3d.vec", "upsample_nearest1d.default",
    "upsample_nearest2d.default", "upsample_nearest3d.default",
    "_upsample_nearest_exact1d.vec", "_upsample_nearest_exact2d.vec",
    "_upsample_nearest_exact3d.vec", "upsample_linear1d.vec", "upsample_linear1d.default",
    "upsample_trilinear3d.vec", "upsample_bicubic2d.vec", "_upsample_bilinear2d_aa.vec",
    "_upsample_bicubic2d_aa.vec",
}
OLD_GLOBAL_OPS = set("""
    addmm mm bmm baddbmm t transpose
    mean sum prod amax amin max min argmax argmin any all var std var_mean std_mean
    linalg_vector_norm norm cumsum logsumexp
    native_layer_norm native_group_norm _native_batch_norm_legit
    _adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool2d adaptive_max_pool3d
    _scaled_dot_product_flash_attention_for_cpu _scaled_dot_product_efficient_attention
    scaled_dot_product_attention
    full full_like zeros zeros_like ones ones_like arange scalar_tensor linspace
    index index_select gather embedding slice_scatter select_scatter index_put scatter
    roll flip repeat unbind stack narrow as_strided
    pixel_shuffle pixel_unshuffle native_channel_shuffle unfold im2col col2im
    upsample_bicubic2d _upsample_bilinear2d_aa _upsample_bicubic2d_aa
    grid_sampler_2d topk sort glu
""".split())
OLD_FREE = set(
    """view _unsafe_view reshape view_copy permute transpose t expand unsqueeze squeeze
    slice slice_copy select split split_with_sizes chunk unbind cat stack clone alias
    detach lift_fresh_copy _to_copy copy contiguous constant_pad_nd reflection_pad1d
    reflection_pad2d reflection_pad3d replication_pad1d replication_pad2d replication_pad3d
    index index_select gather embedding flip roll repeat full full_like zeros zeros_like
    ones ones_like empty empty_like new_zeros new_ones new_empty new_full arange scalar_tensor
    upsample_nearest1d upsample_nearest2d upsample_nearest3d _upsample_nearest_exact1d
    _upsample_nearest_exact2d _upsample_nearest_exact3d native_dropout dropout
    channel_shuffle pixel_shuffle pixel_unshuffle as_strided diagonal narrow fill
    masked_fill where sym_size""".split())
OLD_POINTWISE_COST = {
    "gelu": 8, "silu": 4, "sigmoid": 4, "tanh": 4, "hardswish": 3, "hardsigmoid": 2,
    "mish": 8, "softplus": 4, "elu": 4, "selu": 4, "celu": 4, "erf": 4, "exp": 2,
    "log": 2, "rsqrt": 2, "sqrt": 2, "pow": 2, "addcmul": 2, "addcdiv": 2, "lerp": 2,
}
OLD_REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "var", "std", "prod", "argmax",
                  "argmin", "logsumexp", "norm", "linalg_vector_norm", "_adaptive_avg_pool2d",
                  "_adaptive_avg_pool3d", "adaptive_avg_pool1d", "adaptive_max_pool2d",
                  "adaptive_max_pool3d", "_adaptive_avg_pool1d"}
OLD_CONV = {"convolution", "_convolution", "conv2d", "conv1d", "conv3d"}
OLD_MATMUL = {"linear", "mm", "bmm", "addmm", "baddbmm", "addbmm", "mv", "addmv", "matmul",
              "dot"}
OLD_SOFTMAX = {"_softmax", "_log_softmax", "softmax", "log_softmax"}
OLD_BATCH_NORM = {"_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
                  "native_batch_norm", "batch_norm"}
OLD_NORM = {"native_layer_norm", "layer_norm", "native_group_norm", "group_norm",
            "instance_norm"}


def old_cost_class(op: str) -> str:
    """flops.node_flops' order of tests before the catalogue."""
    if op in OLD_CONV:
        return "conv"
    if op in OLD_MATMUL:
        return "matmul"
    if op in OLD_FREE:
        return "free"
    if op.startswith(("max_pool", "avg_pool")):
        return "pool"
    if op in OLD_REDUCTIONS:
        return "reduction"
    if op in OLD_SOFTMAX:
        return "softmax"
    if op in OLD_BATCH_NORM:
        return "batch_norm"
    if op in OLD_NORM:
        return "norm"
    if op.startswith(("upsample_", "_upsample_")):
        return "resize"
    return "pointwise"


# -- derived sets equal the old tables ---------------------------------------------------------
def test_locality_rules_are_the_old_table():
    assert {name: op.rule for name, op in CATALOGUE.items() if op.rule} == OLD_RULES
    assert set(locality.RULES) == set(OLD_RULES)
    assert all(locality.RULES[name] is locality.FAMILIES[family]
               for name, family in OLD_RULES.items())
    assert locality.POINTWISE == OLD_POINTWISE


def test_capture_preserves_the_old_ops():
    assert set(PRESERVED_OPS) == OLD_PRESERVED
    assert len(PRESERVED_OPS) == len(OLD_PRESERVED)


def test_the_loader_allows_the_old_ops():
    assert ALLOWED_PACKETS == set(OLD_RULES) | OLD_GLOBAL_OPS
    expected: set[str] = set()
    for name in sorted(set(OLD_RULES) | OLD_GLOBAL_OPS):
        expected.update(allowlist._functional_overloads(name))
    assert DEFAULT_ALLOWED_OPS == frozenset(expected - {"aten.where.default"})


def test_flop_cost_classes_are_the_old_ones():
    # every catalogued op and every ATen packet torch has: the catalogue for the first,
    # the fallback by name for the rest
    names = set(CATALOGUE) | {n for n in dir(torch.ops.aten) if not n.startswith("__")}
    wrong = {}
    for name in sorted(names):
        entry = CATALOGUE.get(name)
        cost = entry.flops if entry is not None else flops._cost_by_name(name)
        per_element = entry.per_element if entry is not None else 1
        if cost != "pointwise":
            per_element = 0
        expected = old_cost_class(name)
        expected_per_element = OLD_POINTWISE_COST.get(name, 1) if expected == "pointwise" else 0
        if (cost, per_element) != (expected, expected_per_element):
            wrong[name] = ((cost, per_element), (expected, expected_per_element))
    assert not wrong
    assert len(names) > 500


# -- consistency -------------------------------------------------------------------------------
def test_every_op_with_a_rule_is_allowed_and_its_family_exists():
    for name, op in CATALOGUE.items():
        if op.rule is not None:
            assert op.allowed, name
            assert op.rule in locality.FAMILIES, (name, op.rule)
    assert set(locality.FAMILIES) == {op.rule for op in CATALOGUE.values() if op.rule}


def test_every_allowed_overload_has_a_catalogue_entry():
    for target in DEFAULT_ALLOWED_OPS:
        entry = lookup(target)
        assert entry is not None and entry.allowed, target


def test_preserved_ops_are_catalogued_and_exist():
    for name in PRESERVED_OVERLOADS:
        packet, overload = name.rsplit(".", 1)
        assert packet in CATALOGUE and overload in CATALOGUE[packet].preserved
        assert isinstance(getattr(getattr(torch.ops.aten, packet), overload),
                          torch._ops.OpOverload), name


def test_global_means_no_rule():
    assert all(op.is_global == (op.rule is None) for op in CATALOGUE.values())
    assert lookup("aten.convolution.default") is CATALOGUE["convolution"]
    assert lookup("aten.no_such_op.default") is None


# -- a rule that raises makes its node global, and says so at debug level -------------------------
def test_a_rule_that_raises_is_logged_before_the_node_becomes_global(caplog):
    # a permute whose dims are not a list: the rule trips on it (TypeError)
    x = TensorMeta((1, 3, 8, 8), torch.float32)
    node = Node(name="p", target="aten.permute.default", args=(Ref("x"), 5), kwargs={},
                meta=x)
    graph = Graph({"x": x}, {}, [node], ["p"])
    with caplog.at_level(logging.DEBUG, logger="lopinfer.graph.locality"):
        lopinfer.graph.analyse(graph)
    assert graph["p"].locality is None
    (record,) = [r for r in caplog.records if r.name == "lopinfer.graph.locality"]
    assert record.levelno == logging.DEBUG
    message = record.getMessage()
    assert "aten.permute.default" in message and "TypeError" in message
