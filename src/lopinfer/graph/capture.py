"""Capture: ``torch.export`` (non-strict) -> core ATen -> the project's Graph IR."""

from __future__ import annotations

import operator
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import CaptureError, InputError, UnsupportedModelError
from ..log import logger
from .ir import Graph, Node, Ref, TensorMeta
from .ops import PRESERVED_OVERLOADS

__all__ = ["capture", "PRESERVED_OPS"]

log = logger("graph")

# torch.export switches process-wide tracing state: captures must not run concurrently,
# nor beside other symbolic work (the deploy format's meta shape checks)
EXPORT_LOCK = threading.RLock()

# Composite ops kept whole instead of being lowered to core ATen ("NAME.OVERLOAD"); the
# catalogue says why each is (lopinfer.graph.ops).
PRESERVED_OPS: tuple[str, ...] = PRESERVED_OVERLOADS


# Runtime checks torch.export inserts (no-op dtype casts, symbolic shape guards): they
# return nothing and change no value, and with static shapes they hold by construction.
ASSERTION_OPS = frozenset({
    "_assert_tensor_metadata", "_assert_scalar", "_assert_async", "_functional_assert_async",
    "_functional_assert_scalar", "sym_constrain_range", "sym_constrain_range_for_size",
    "_functional_sym_constrain_range", "_functional_sym_constrain_range_for_size",
    "_print",
})


def _decomp_table() -> Any:
    table = torch.export.default_decompositions()
    for name in PRESERVED_OPS:
        op_name, overload = name.rsplit(".", 1)
        packet = getattr(torch.ops.aten, op_name, None)
        op = getattr(packet, overload, None) if packet is not None else None
        if op is not None:
            table.pop(op, None)
    return table


class _ModuleTracker:
    """Forward hooks that remember which submodule was running when export failed."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[str] = []
        self.failed_in: str | None = None
        self.handles = []
        for path, module in model.named_modules():
            label = f"{path or '<root>'} ({type(module).__name__})"
            self.handles.append(module.register_forward_pre_hook(self._enter(label)))
            self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, label: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self.stack.append(label)

        return hook

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def close(self) -> None:
        if self.stack and self.failed_in is None:
            self.failed_in = self.stack[-1]
        for h in self.handles:
            h.remove()


def _as_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, Sequence) or not example_inputs:
        raise InputError(
            f"example_inputs must be a tensor or a non-empty tuple of tensors, "
            f"got {type(example_inputs).__name__}"
        )
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise InputError(f"example input {i} is a {type(x).__name__}, not a torch.Tensor")
    return tuple(example_inputs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def capture(model: nn.Module, example_inputs: Any, *, name: str | None = None,
            fold_bn: bool = False) -> Graph:
    """Capture ``model`` on ``example_inputs`` and analyse the locality of every node.

    Args:
        model: an ``nn.Module`` in eval mode.
        example_inputs: a tensor or a tuple of tensors with the shapes of later calls.
        name: a name for the graph (defaults to the model's class name).
        fold_bn: fold inference batch norms into the convolutions before them (fewer
            kernel calls per tile; the result moves by float rounding only).

    Raises:
        CaptureError: not a module, training mode, or ``torch.export`` failed (the
            message names the failing construct and the module path).
        InputError: example inputs are not tensors.
        UnsupportedModelError: no floating-point (or uint8) input or output to tile.
    """
    from .locality import analyse

    if not isinstance(model, nn.Module):
        raise CaptureError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise CaptureError(
            f"{type(model).__name__} is in training mode; call model.eval() before capture"
        )
    args = _as_tuple(example_inputs)
    # uint8: a camera frame converted inside the model (a quarter of float32's upload)
    if not any(x.is_floating_point() or x.dtype == torch.uint8 for x in args):
        raise UnsupportedModelError(
            "no floating-point input (nor a uint8 frame): LOPInfer tiles feature maps "
            f"(inputs are {', '.join(str(x.dtype) for x in args)})"
        )
    with EXPORT_LOCK:
        tracker = _ModuleTracker(model)
        try:
            with torch.no_grad():
                ep = torch.export.export(model, args, strict=False)
        except Exception as exc:  # torch.export raises many types; map them all
            tracker.close()
            where = tracker.failed_in or type(model).__name__
            raise CaptureError(
                f"torch.export failed in {where}: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        tracker.close()
        try:
            with warnings.catch_warnings():  # torch's own deprecation, on every capture
                warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
                ep = ep.run_decompositions(_decomp_table())
        except Exception as exc:
            raise CaptureError(f"lowering to core ATen failed: {_first_line(exc)}") from exc
    try:
        graph = _to_ir(ep, name or type(model).__name__)
    except CaptureError:
        raise
    except Exception as exc:  # a construct the IR builder did not foresee: still one line
        raise CaptureError(f"building the graph failed: {type(exc).__name__}: "
                           f"{_first_line(exc)}") from exc
    if fold_bn:
        from .optimize import fold_batch_norm

        fold_batch_norm(graph)
    analyse(graph)
    return graph


def _target_name(target: Any) -> str:
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.name.startswith("aten::"):
        raise CaptureError(f"unsupported construct in the exported graph: {target}")
    overload = target._overloadname
    return f"aten.{schema.name[len('aten::'):]}.{overload}"


def _meta(val: Any, what: str) -> TensorMeta:
    if not isinstance(val, torch.Tensor):
        raise CaptureError(f"{what} does not produce a tensor ({type(val).__name__})")
    shape = []
    for s in val.shape:
        if not isinstance(s, int):
            raise CaptureError(f"{what} has a dynamic shape; LOPInfer needs static shapes")
        shape.append(s)
    return TensorMeta(tuple(shape), val.dtype)


def _module_path(fx_node: Any) -> str:
    stack = fx_node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, cls = list(stack.values())[-1]
    cls_name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", "")
    return f"{path} ({cls_name})" if path else cls_name


def _is_assertion(target: Any) -> bool:
    schema = getattr(target, "_schema", None)
    return schema is not None and schema.name.removeprefix("aten::") in ASSERTION_OPS


def _state_tensor(ep: Any, spec: Any) -> torch.Tensor:
    """A parameter, buffer or lifted constant: persistent ones live in ``state_dict``,
    non-persistent buffers and tensor constants in ``constants``."""
    from torch.export.graph_signature import InputKind

    state, constants = ep.state_dict, getattr(ep, "constants", {}) or {}
    first, second = (state, constants)
    if spec.kind == InputKind.CONSTANT_TENSOR or getattr(spec, "persistent", True) is False:
        first, second = constants, state
    for table in (first, second):
        if spec.target in table:
            t = table[spec.target]
            if not isinstance(t, torch.Tensor):
                raise CaptureError(f"{spec.kind.name.lower()} {spec.target} is a "
                                   f"{type(t).__name__}, not a tensor")
            return t.detach()
    raise CaptureError(f"{spec.kind.name.lower()} {spec.target} is in neither the exported "
                       "state_dict nor its constants")


def _where(fx: Any) -> str:
    target = getattr(fx.target, "__name__", str(fx.target))
    path = _module_path(fx)
    return f"node {fx.name} ({target})" + (f" in {path}" if path else "")


def _to_ir(ep: Any, name: str) -> Graph:
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    inputs: dict[str, TensorMeta] = {}
    params: dict[str, torch.Tensor] = {}
    kinds = {spec.arg.name: spec for spec in sig.input_specs}
    for spec in sig.output_specs:
        if spec.kind != OutputKind.USER_OUTPUT:
            raise CaptureError(f"the model mutates state ({spec.kind.name} "
                               f"{spec.target}); not supported")

    nodes: list[Node] = []
    names: dict[Any, str] = {}  # fx node -> IR value name
    multi: dict[Any, Any] = {}  # fx node returning a tuple -> itself (unfolded)
    outputs: list[str] = []
    for fx in ep.graph.nodes:
        try:
            if fx.op == "placeholder":
                spec = kinds[fx.name]
                if spec.kind == InputKind.USER_INPUT:
                    inputs[fx.name] = _meta(fx.meta.get("val"), f"input {fx.name}")
                elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER,
                                   InputKind.CONSTANT_TENSOR):
                    params[fx.name] = _state_tensor(ep, spec)
                else:
                    raise CaptureError(f"unsupported graph input {fx.name} ({spec.kind.name})")
                names[fx] = fx.name
            elif fx.op == "call_function":
                if _is_assertion(fx.target):
                    continue  # checked at export time on static shapes; no value
                if fx.target is operator.getitem:
                    src, idx = fx.args
                    if src not in multi:
                        raise CaptureError(f"unsupported getitem on {src.name}")
                    nodes.append(_call_node(multi[src], fx, names, index=idx))
                    names[fx] = fx.name
                    continue
                val = fx.meta.get("val")
                if isinstance(val, (tuple, list)):
                    multi[fx] = fx  # materialised per used element, at its getitem
                    continue
                nodes.append(_call_node(fx, fx, names, index=None))
                names[fx] = fx.name
            elif fx.op == "output":
                for o in fx.args[0]:
                    if not hasattr(o, "op") or o not in names:
                        raise CaptureError(
                            f"unsupported model output {o!r}: outputs must be tensors")
                    outputs.append(names[o])
            else:
                raise CaptureError(f"unsupported construct {fx.op} {fx.target}")
        except Exception as exc:  # name the op and the module on every failure, one line
            why = _first_line(exc)
            if not isinstance(exc, CaptureError):
                why = f"{type(exc).__name__}: {why}"
            raise CaptureError(f"{_where(fx)}: {why}") from exc

    out_spec = None
    try:
        from torch.utils._pytree import treespec_dumps

        out_spec = treespec_dumps(ep.call_spec.out_spec)
    except Exception:  # an exotic output container: outputs come back as a flat tuple
        log.debug("output pytree spec not serialisable; outputs will be a flat tuple")
    graph = Graph(inputs, params, nodes, outputs, out_spec=out_spec, name=name)
    return _dead_code_eliminated(graph)


def _call_node(fx: Any, named_by: Any, names: dict[Any, str], index: int | None) -> Node:
    target = _target_name(fx.target)

    def conv(v: Any) -> Any:
        if hasattr(v, "op") and hasattr(v, "meta"):  # an fx.Node
            if v not in names:
                raise CaptureError(f"{named_by.name} reads {v.name}, a tuple value")
            return Ref(names[v])
        if isinstance(v, (list, tuple)):
            return type(v)(conv(x) for x in v)
        if isinstance(v, torch.SymInt):
            raise CaptureError(f"{named_by.name} has a dynamic argument")
        return v

    return Node(
        name=named_by.name,
        target=target,
        args=tuple(conv(a) for a in fx.args),
        kwargs={k: conv(v) for k, v in fx.kwargs.items()},
        meta=_meta(named_by.meta.get("val"), f"node {named_by.name} ({target})"),
        index=index,
        module_path=_module_path(fx),
        layout=_layout(named_by.meta.get("val")),
    )


def _layout(val: Any) -> str:
    """The memory format eager gives this value (export's fake tensors carry its strides)."""
    if not isinstance(val, torch.Tensor):
        return ""
    try:
        if val.is_contiguous():
            return "contiguous"
        for name, fmt in (("channels_last", torch.channels_last),
                          ("channels_last_3d", torch.channels_last_3d)):
            if val.dim() == (4 if name == "channels_last" else 5) and \
                    val.is_contiguous(memory_format=fmt):
                return name
    except Exception:  # symbolic strides: unknown, left as the tiles give it
        log.debug("no static strides for a value; its layout is not restored")
    return ""


def _dead_code_eliminated(graph: Graph) -> Graph:
    live = set(graph.outputs)
    for node in reversed(graph.nodes):
        if node.name in live:
            live.update(node.refs())
    nodes = [n for n in graph.nodes if n.name in live]
    params = {k: v for k, v in graph.params.items() if k in live}
    return Graph(graph.inputs, params, nodes, graph.outputs, out_spec=graph.out_spec,
                 name=graph.name)
