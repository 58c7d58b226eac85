"""Moved to :mod:`lopinfer.cli.models` (loading a model from a ``MODEL`` string); these
names stay importable from here."""

from .cli.models import (
    DEFAULT_INPUT_SHAPE,
    TORCHVISION_INPUT_SIZES,
    LoadedModel,
    ModelSpecError,
    load_model,
    parse_shape,
)

__all__ = [
    "DEFAULT_INPUT_SHAPE",
    "TORCHVISION_INPUT_SIZES",
    "LoadedModel",
    "ModelSpecError",
    "load_model",
    "parse_shape",
]
