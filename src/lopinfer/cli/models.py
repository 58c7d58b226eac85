"""Loading a model from a ``MODEL`` string (the command line's way to name a model).

Five forms:

- ``lopinfer:NAME``: one of this project's application workloads
  (:mod:`lopinfer.workloads`: ``kapao``, ``agrnav``, ``segment``, ...), random weights,
  with a realistic example input;
- ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None)``, random
  weights, nothing downloaded (needs the ``vision`` extra);
- ``timm:NAME``: ``timm.create_model(NAME, pretrained=False)``, random weights, nothing
  downloaded (needs the ``timm`` extra);
- ``package.module:factory``: an importable module and a callable in it;
- ``path/to/file.py:factory``: a Python file and a callable in it.

A factory is called with no argument and must return an ``nn.Module``; the module is put
in eval mode. The factory (or, failing that, its module) may state the input shape it
expects with an ``example_input_shape`` attribute, e.g. ``(1, 3, 64, 64)``.

Loading runs the named factory's code: it is for the user's own models on the user's own
machine, never for anything received from a peer (DESIGN.md invariant 2).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingDependencyError

__all__ = [
    "DEFAULT_INPUT_SHAPE",
    "TORCHVISION_INPUT_SIZES",
    "LoadedModel",
    "ModelSpecError",
    "load_model",
    "parse_shape",
]

DEFAULT_INPUT_SHAPE: tuple[int, ...] = (1, 3, 224, 224)

# torchvision models whose natural (trained) input size is not 224
TORCHVISION_INPUT_SIZES: dict[str, int] = {
    "inception_v3": 299,
}


class ModelSpecError(InputError):
    """A ``MODEL`` string that does not name a loadable model (the message says why)."""


@dataclass
class LoadedModel:
    """A model loaded from a ``MODEL`` string, in eval mode.

    ``input_shape`` is the shape the model states or is known to expect; ``None`` when
    nothing says (callers then use :data:`DEFAULT_INPUT_SHAPE`).
    """

    spec: str
    name: str
    module: Any  # torch.nn.Module
    input_shape: tuple[int, ...] | None = None
    example: Any = None  # a callable giving a realistic input (lopinfer: workloads)

    def example_input(self, override: Sequence[int] | None = None) -> Any:
        """The model's realistic example input when it has one (and no ``override``),
        else ``torch.randn`` of :meth:`example_shape`."""
        import torch

        if self.example is not None and override is None:
            return self.example()
        return torch.randn(self.example_shape(override))

    def example_shape(self, override: Sequence[int] | None = None) -> tuple[int, ...]:
        """``override`` if given, else the model's own shape, else the default."""
        if override is not None:
            return tuple(override)
        return self.input_shape or DEFAULT_INPUT_SHAPE


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,224,224"`` (also ``1x3x224x224``) into a tuple of positive ints.

    Raises:
        InputError: not a list of positive integers.
    """
    parts = [p for p in text.replace("x", ",").replace(" ", "").split(",") if p != ""]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"bad shape {text!r}: expected integers like 1,3,224,224") from None
    if not shape or any(s < 1 for s in shape):
        raise InputError(f"bad shape {text!r}: expected positive integers like 1,3,224,224")
    return shape


def load_model(spec: str) -> LoadedModel:
    """Load the model named by a ``MODEL`` string and put it in eval mode.

    Raises:
        ModelSpecError: malformed string, unknown module/file/attribute, a factory that
            fails or does not return an ``nn.Module``.
        MissingDependencyError: ``torchvision:`` / ``timm:`` without the package.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ModelSpecError(
            f"bad MODEL {spec!r}: expected lopinfer:NAME, torchvision:NAME, timm:NAME, package.module:factory "
            "or path/to/file.py:factory"
        )
    source, _, attr = spec.rpartition(":")
    if not source or not attr:
        raise ModelSpecError(f"bad MODEL {spec!r}: empty module or factory name")
    if source == "torchvision":
        return _load_torchvision(spec, attr)
    if source == "lopinfer":
        return _load_workload(spec, attr)
    if source == "timm":
        return _load_timm(spec, attr)
    if source.endswith(".py") or "/" in source or "\\" in source:
        module = _import_file(spec, source)
    else:
        module = _import_module(spec, source)
    factory = _resolve(spec, module, attr)
    model = _call_factory(spec, factory)
    shape = _stated_shape(spec, factory) or _stated_shape(spec, module)
    return LoadedModel(spec, attr.rsplit(".", 1)[-1], model, shape)


# -- the three forms -------------------------------------------------------------------
def _load_torchvision(spec: str, name: str) -> LoadedModel:
    try:
        import torchvision
    except ImportError as exc:
        raise MissingDependencyError("torchvision", "vision", f"MODEL {spec!r}") from exc
    models = torchvision.models
    known = set(models.list_models())
    if name not in known:
        raise ModelSpecError(
            f"unknown torchvision model {name!r}{_closest(name, known)} "
            "(see torchvision.models.list_models())"
        )
    builder = models.get_model_builder(name)
    kwargs: dict[str, Any] = {"weights": None}
    # segmentation/detection builders default to a pretrained backbone: download nothing
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None
    if name == "inception_v3" or name == "googlenet":
        kwargs["init_weights"] = True  # the builders warn unless told
    try:
        model = models.get_model(name, **kwargs)
    except Exception as exc:  # a builder failing is the spec's problem, named as such
        raise ModelSpecError(f"torchvision model {name!r} failed to build: {_line(exc)}") from exc
    size = TORCHVISION_INPUT_SIZES.get(name)
    shape = (1, 3, size, size) if size else None
    return LoadedModel(spec, name, model.eval(), shape)


def _load_workload(spec: str, name: str) -> LoadedModel:
    from ..workloads import build

    try:
        w = build(name)
    except KeyError as exc:
        raise ModelSpecError(f"bad MODEL {spec!r}: {exc.args[0]}") from None
    return LoadedModel(spec, name, w.make().eval(), w.shape, w.example)


def _load_timm(spec: str, name: str) -> LoadedModel:
    try:
        import timm
    except ImportError as exc:
        raise MissingDependencyError("timm", "timm", f"MODEL {spec!r}") from exc
    known = set(timm.list_models())
    if name not in known:
        raise ModelSpecError(f"unknown timm model {name!r}{_closest(name, known)} "
                             "(see timm.list_models())")
    try:
        model = timm.create_model(name, pretrained=False)  # random weights: nothing fetched
    except Exception as exc:
        raise ModelSpecError(f"timm model {name!r} failed to build: {_line(exc)}") from exc
    size = getattr(model, "pretrained_cfg", {}).get("input_size")
    shape = (1, *(int(v) for v in size)) if size else None
    return LoadedModel(spec, name, model.eval(), shape)


def _closest(name: str, known: set[str]) -> str:
    """'; did you mean a, b?' for the nearest known names, or ''."""
    import difflib

    near = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(near)}?" if near else ""


def _import_module(spec: str, source: str) -> Any:
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as exc:
        raise ModelSpecError(f"bad MODEL {spec!r}: no module named {exc.name or source!r}") from exc
    except Exception as exc:
        raise ModelSpecError(f"bad MODEL {spec!r}: importing {source} failed: {_line(exc)}") from exc


def _import_file(spec: str, source: str) -> Any:
    path = Path(source).expanduser()
    if path.suffix != ".py":
        raise ModelSpecError(f"bad MODEL {spec!r}: {source} is not a .py file")
    if not path.is_file():
        raise ModelSpecError(f"bad MODEL {spec!r}: no such file {source}")
    path = path.resolve()
    # a stable, unique module name, so loading the same file twice reuses it
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    mod_name = f"_lopinfer_model_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    loader_spec = importlib.util.spec_from_file_location(mod_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelSpecError(f"bad MODEL {spec!r}: cannot load {source}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[mod_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[mod_name]
        raise ModelSpecError(f"bad MODEL {spec!r}: running {source} failed: {_line(exc)}") from exc
    return module


def _resolve(spec: str, module: Any, attr: str) -> Any:
    obj = module
    for part in attr.split("."):
        if not part.isidentifier():
            raise ModelSpecError(f"bad MODEL {spec!r}: {attr!r} is not a Python name")
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = getattr(module, "__file__", None) or getattr(module, "__name__", "?")
            raise ModelSpecError(f"bad MODEL {spec!r}: no {attr!r} in {where}") from None
    return obj


def _call_factory(spec: str, factory: Any) -> Any:
    from torch import nn

    if isinstance(factory, nn.Module):
        model = factory  # a module instance named directly: use it as it is
    elif callable(factory):
        try:
            model = factory()
        except Exception as exc:
            raise ModelSpecError(f"MODEL {spec!r}: the factory raised {_line(exc)}") from exc
    else:
        raise ModelSpecError(f"MODEL {spec!r}: {type(factory).__name__} is not callable")
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"MODEL {spec!r}: the factory returned a {type(model).__name__}, not an nn.Module"
        )
    return model.eval()


def _stated_shape(spec: str, obj: Any) -> tuple[int, ...] | None:
    shape = getattr(obj, "example_input_shape", None)
    if shape is None:
        return None
    if isinstance(shape, str):
        return parse_shape(shape)
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ModelSpecError(f"MODEL {spec!r}: example_input_shape {shape!r} is not a shape") from None
    if not out or any(s < 1 for s in out):
        raise ModelSpecError(f"MODEL {spec!r}: example_input_shape {shape!r} is not a shape")
    return out


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
