"""The catalogue of ATen ops: everything the project knows of each op, in one table.

One :class:`Op` per ATen op packet ("convolution", not "aten.convolution.default"):

- ``rule``: the locality rule family that tiles it (a key of
  :data:`lopinfer.graph.locality.FAMILIES`); ``None``: the op is *global*, a barrier;
- ``flops``: its FLOP cost class (:mod:`lopinfer.graph.flops`) and, for pointwise maths,
  ``per_element``, the FLOPs per output element;
- ``allowed``: the untrusted loader accepts its functional overloads (every op with a
  rule is; ops catalogued only for their cost are not);
- ``preserved``: the overloads capture keeps whole instead of lowering to core ATen.

Capture, the locality analysis, the loader's allow-list and the FLOP counts all derive
their sets from :data:`CATALOGUE`, so adding an op is one line here. Ops not catalogued
are global, refused by the loader, and cost one FLOP per element (pools and resizes
recognised by name).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Op", "Cost", "CATALOGUE", "lookup", "PRESERVED_OVERLOADS", "ALLOWED_PACKETS"]

Cost = Literal["free", "pointwise", "conv", "matmul", "pool", "reduction", "softmax",
               "batch_norm", "norm", "resize"]


@dataclass(frozen=True, slots=True)
class Op:
    """What the project knows of one ATen op packet (see the module docstring)."""

    name: str
    rule: str | None
    flops: Cost
    per_element: int = 1
    allowed: bool = True
    preserved: tuple[str, ...] = ()

    @property
    def is_global(self) -> bool:
        """No locality rule: the op needs every row of its inputs on one side."""
        return self.rule is None


def _ops(names: str, rule: str | None, flops: Cost, *, per_element: int = 1,
         allowed: bool = True, preserved: tuple[str, ...] = ()) -> list[Op]:
    return [Op(name, rule, flops, per_element, allowed, preserved) for name in names.split()]


def _catalogue(*families: Iterable[Op]) -> dict[str, Op]:
    table: dict[str, Op] = {}
    for family in families:
        for op in family:
            if op.name in table:
                raise ValueError(f"aten.{op.name} is catalogued twice")
            table[op.name] = op
    return table


# Preserved composites are kept whole because each has a locality rule while its
# decomposition would be an index/gather pattern (pads, upsampling) only a global rule
# could take, or many pointwise nodes (activations, linear) costing executor overhead.
_WHOLE = ("default",)

CATALOGUE: dict[str, Op] = _catalogue(
    # -- pointwise maths (with broadcasting), about one FLOP per element
    _ops("""abs neg relu leaky_relu hardtanh exp2 expm1 log1p log2 log10 reciprocal sin cos
         tan asin acos atan sinh cosh erfc erfinv sign sgn floor ceil round trunc frac clamp
         clamp_min clamp_max logical_not bitwise_not isnan isinf isfinite nan_to_num square
         logit threshold add sub rsub mul div maximum minimum fmax fmin remainder fmod atan2
         eq ne lt le gt ge logical_and logical_or logical_xor bitwise_and bitwise_or
         bitwise_xor hypot xlogy""", "pointwise", "pointwise"),
    _ops("relu6", "pointwise", "pointwise", preserved=_WHOLE),
    # costlier elementwise ops (rough weights)
    _ops("gelu", "pointwise", "pointwise", per_element=8),
    _ops("mish", "pointwise", "pointwise", per_element=8, preserved=_WHOLE),
    _ops("silu", "pointwise", "pointwise", per_element=4, preserved=_WHOLE),
    _ops("sigmoid tanh softplus elu selu celu erf", "pointwise", "pointwise", per_element=4),
    _ops("hardswish", "pointwise", "pointwise", per_element=3, preserved=_WHOLE),
    _ops("hardsigmoid", "pointwise", "pointwise", per_element=2, preserved=_WHOLE),
    _ops("exp log rsqrt sqrt pow addcmul addcdiv lerp", "pointwise", "pointwise",
         per_element=2),
    # pointwise copies, fills and selections: no arithmetic
    _ops("""_to_copy clone alias lift_fresh_copy detach copy fill masked_fill where
         native_dropout""", "pointwise", "free"),
    # -- per-channel parameters (inference batch norm, prelu)
    _ops("_native_batch_norm_legit_no_training native_batch_norm", "per_channel",
         "batch_norm"),
    _ops("_prelu_kernel", "per_channel", "pointwise"),
    # -- sliding windows
    _ops("convolution", "convolution", "conv"),
    _ops("max_pool2d_with_indices max_pool3d_with_indices", "max_pool", "pool"),
    _ops("avg_pool2d avg_pool3d", "avg_pool", "pool"),
    _ops("_adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool2d adaptive_max_pool3d",
         "adaptive_pool", "reduction"),
    # -- resizes
    _ops("upsample_nearest1d upsample_nearest2d upsample_nearest3d", "upsample", "free",
         preserved=("vec", "default")),
    _ops("_upsample_nearest_exact1d _upsample_nearest_exact2d _upsample_nearest_exact3d",
         "upsample", "free", preserved=("vec",)),
    _ops("upsample_linear1d", "upsample", "resize", preserved=("vec", "default")),
    _ops("upsample_trilinear3d", "upsample", "resize", preserved=("vec",)),
    _ops("upsample_bilinear2d", "upsample", "resize"),
    # kept whole but global: their decompositions round differently from the eager
    # kernels (bicubic by up to 3.6e-4), not only for speed
    _ops("upsample_bicubic2d _upsample_bilinear2d_aa _upsample_bicubic2d_aa", None, "resize",
         preserved=("vec",)),
    # -- padding
    _ops("constant_pad_nd", "pad", "free"),
    _ops("""reflection_pad1d reflection_pad2d reflection_pad3d replication_pad1d
         replication_pad2d replication_pad3d""", "pad", "free", preserved=_WHOLE),
    # -- shapes and data movement
    _ops("cat", "cat", "free"),
    _ops("slice", "slice", "free"),
    _ops("split split_with_sizes", "split", "free"),
    _ops("select", "select", "free"),
    _ops("permute", "permute", "free"),
    _ops("unsqueeze", "unsqueeze", "free"),
    _ops("squeeze", "squeeze", "free"),
    _ops("expand", "expand", "free"),
    _ops("view _unsafe_view reshape view_copy", "view", "free"),
    _ops("""t transpose full full_like zeros zeros_like ones ones_like arange scalar_tensor
         index index_select gather embedding roll flip repeat unbind stack narrow as_strided
         pixel_shuffle pixel_unshuffle""", None, "free"),
    _ops("""slice_copy chunk contiguous empty empty_like new_zeros new_ones new_empty new_full
         dropout channel_shuffle diagonal sym_size""", None, "free", allowed=False),
    # -- normalisation, softmax, reductions: local when not over the tracked dim
    _ops("layer_norm", "layer_norm", "norm", preserved=_WHOLE),
    _ops("native_layer_norm", "layer_norm", "norm"),
    _ops("native_group_norm", None, "norm"),
    _ops("group_norm instance_norm", None, "norm", allowed=False),
    _ops("_native_batch_norm_legit", None, "batch_norm"),
    _ops("batch_norm", None, "batch_norm", allowed=False),
    _ops("_softmax _log_softmax", "softmax", "softmax"),
    _ops("softmax log_softmax", None, "softmax", allowed=False),
    _ops("sum mean amax amin", "reduce", "reduction"),
    _ops("var", "var", "reduction"),
    _ops("prod max min argmax argmin std linalg_vector_norm norm logsumexp", None,
         "reduction"),
    _ops("adaptive_avg_pool1d _adaptive_avg_pool1d", None, "reduction", allowed=False),
    # -- matrix products: local along the rows of the left operand
    _ops("linear", "linear", "matmul", preserved=_WHOLE),
    _ops("mm addmm bmm", "matmul", "matmul"),
    _ops("baddbmm", None, "matmul"),
    _ops("_convolution conv1d conv2d conv3d", None, "conv", allowed=False),
    _ops("addbmm mv addmv matmul dot", None, "matmul", allowed=False),
    # -- other global ops of torchvision classifiers, segmentation nets and ViT/Swin/MaxViT
    # as captured (torch 2.13), and close relatives; weighed as one FLOP per element
    _ops("""any all var_mean std_mean cumsum _scaled_dot_product_flash_attention_for_cpu
         _scaled_dot_product_efficient_attention scaled_dot_product_attention linspace
         slice_scatter select_scatter index_put scatter native_channel_shuffle unfold im2col
         col2im grid_sampler_2d topk sort glu""", None, "pointwise"),
)


def lookup(target: str) -> Op | None:
    """The catalogue entry of an op name like "aten.convolution.default" (None: unknown)."""
    parts = target.split(".")
    return CATALOGUE.get(parts[1] if len(parts) > 1 else target)


#: "NAME.OVERLOAD" of each composite capture keeps whole.
PRESERVED_OVERLOADS: tuple[str, ...] = tuple(
    f"{op.name}.{overload}" for op in CATALOGUE.values() for overload in op.preserved)

#: Packets whose functional overloads the untrusted loader accepts.
ALLOWED_PACKETS: frozenset[str] = frozenset(op.name for op in CATALOGUE.values() if op.allowed)
