"""The seed's application workloads, written in this project (random weights, nothing
downloaded), and realistic inputs for them. ``MODEL`` strings ``lopinfer:NAME``:

========================  ======================  =====================================
name                      input                   output
========================  ======================  =====================================
``kapao``                 1x3x640x640 float32     3 keypoint heads, (1,3,80,80,57) ...
``kapao1280``             1x3x768x1280 float32    (1,3,96,160,57), (1,3,48,80,57), ...
``kapao-u8``              1x640x640x3 uint8       as ``kapao``; conversion in the graph
``kapao1280-u8``          1x768x1280x3 uint8      as ``kapao1280``
``agrnav``                1x32x256x256 float32    1x4x16x128x128 per-voxel logits
``segment``               1x3x512x512 float32     1x21x512x512 logits
``segment-u8``            1x512x512x3 uint8       as ``segment``; ImageNet normalisation
========================  ======================  =====================================

Camera inputs are the sample photograph of :func:`inputs.camera_frame` (needs the
``bench`` extra: matplotlib), the grid is :func:`inputs.lidar_grid` (seed 0). Where each
net comes from: the docstrings of :mod:`.kapao`, :mod:`.agrnav`, :mod:`.segment`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["WORKLOADS", "Workload", "build", "CameraInput"]

from ._blocks import CameraInput


@dataclass(frozen=True)
class Workload:
    """A named workload: how to build it and its realistic example input."""

    make: Callable[[], Any]      # -> nn.Module in eval mode
    example: Callable[[], Any]   # -> its input tensor
    shape: tuple[int, ...]       # the input's shape
    doc: str


def _kapao(h: int, w: int, u8: bool) -> Workload:
    from .inputs import camera_frame
    from .kapao import kapao

    def make() -> Any:
        net = kapao(h, w)
        return CameraInput(net, (0.0,) * 3, (1.0,) * 3).eval() if u8 else net

    return Workload(make, lambda: camera_frame(h, w, uint8=u8),
                    (1, h, w, 3) if u8 else (1, 3, h, w), f"KAPAO-style pose detector at {w}x{h}" + (", uint8 NHWC frame" if u8 else ""))


def _segment(u8: bool) -> Workload:
    from .inputs import IMAGENET_MEAN, IMAGENET_STD, camera_frame
    from .segment import segment

    def make() -> Any:
        net = segment(512)
        return CameraInput(net, IMAGENET_MEAN, IMAGENET_STD).eval() if u8 else net

    return Workload(make, lambda: camera_frame(512, uint8=u8, mean=IMAGENET_MEAN, std=IMAGENET_STD),
                    (1, 512, 512, 3) if u8 else (1, 3, 512, 512), "LR-ASPP MobileNetV3-Large segmentation at 512x512"
                    + (", uint8 NHWC frame" if u8 else ""))


def _agrnav() -> Workload:
    from .agrnav import agrnav
    from .inputs import lidar_grid

    return Workload(agrnav, lidar_grid, (1, 32, 256, 256), "AGRNav-style scene completion over 256x256x32 voxels")


_MAKERS: dict[str, Callable[[], Workload]] = {
    "kapao": lambda: _kapao(640, 640, False),
    "kapao1280": lambda: _kapao(768, 1280, False),
    "kapao-u8": lambda: _kapao(640, 640, True),
    "kapao1280-u8": lambda: _kapao(768, 1280, True),
    "agrnav": _agrnav,
    "segment": lambda: _segment(False),
    "segment-u8": lambda: _segment(True),
}
WORKLOADS = tuple(_MAKERS)


def build(name: str) -> Workload:
    """The workload ``name`` (one of :data:`WORKLOADS`).

    Raises:
        KeyError: an unknown name (the message lists the known ones).
    """
    try:
        return _MAKERS[name]()
    except KeyError:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}") from None
