"""Locality analysis: one small rule per ATen op family.

For a node, a rule decides whether its output can be computed in tiles of rows along
one dimension (*local*) and, if so, returns a :class:`Locality`: the tiled output dim,
for each value read (:class:`Dep`) which of its dims is read in rows (``None``: read
whole), the map from output rows [a, b) to the input rows needed (``need``), and a
kernel that computes exactly those output rows from exactly those input rows
(``make``), padding only at true borders. A rule that does not apply returns ``None``
and the node is *global* (a barrier): safe by default. Ops without a rule in
:data:`RULES` (derived from the catalogue, :mod:`lopinfer.graph.ops`) are global.

The tracked dim starts at each input's first spatial dim (dim 2 of N,C,H,W or of
N,C,D,H,W; ``analyse(tiled_dim=...)`` picks another) and is followed through permutes,
views and reshapes.

The rule families live in one module each: :mod:`.elementwise` (pointwise,
per-channel), :mod:`.windows` (convolution, pooling), :mod:`.resampling`,
:mod:`.padding`, :mod:`.shapes`, :mod:`.reductions` (norms, softmax, reductions, matrix
products); :mod:`.table` maps op names to them and runs the analysis.
"""

from .base import TD, Dep, Locality, Rule
from .elementwise import per_channel, pointwise
from .padding import ConstantPad, IndexPad, pad
from .reductions import linear, matmul
from .resampling import Upsample, _linear_source, _nearest_source, upsample
from .shapes import (
    Along,
    Resized,
    View,
    cat,
    expand,
    permute,
    select,
    slice_,
    split,
    squeeze,
    unsqueeze,
    view,
)
from .table import FAMILIES, POINTWISE, RULES, analyse, default_dim, rule_for
from .windows import (
    Adaptive,
    AvgPoolWindow,
    ConvWindow,
    MaxPoolWindow,
    TransposedWindow,
    Window,
    adaptive_pool,
    avg_pool,
    convolution,
    max_pool,
)

__all__ = ["Dep", "Locality", "analyse", "RULES", "rule_for", "default_dim"]
__all__ += ["FAMILIES", "POINTWISE", "Rule", "TD"]
# the rule families and their Locality kinds, importable from here as before the split
__all__ += [
    "Adaptive", "Along", "AvgPoolWindow", "ConstantPad", "ConvWindow", "IndexPad",
    "MaxPoolWindow", "Resized", "TransposedWindow", "Upsample", "View", "Window",
    "adaptive_pool", "avg_pool", "cat", "convolution", "expand", "linear", "matmul",
    "max_pool", "pad", "per_channel", "permute", "pointwise", "select", "slice_", "split",
    "squeeze", "unsqueeze", "upsample", "view",
]
# private helpers tests reach for, kept importable from the package
__all__ += ["_linear_source", "_nearest_source"]
