"""Realistic inputs for the workloads, so that compression ratios and halos are real.

- :func:`camera_frame`: a photograph shipped with matplotlib (``grace_hopper.jpg``, 512 x
  600, in matplotlib's ``sample_data``; the ``bench`` extra), resized to cover the
  requested size and centre-cropped, as uint8 NHWC (a camera's frame) or normalised
  float32 NCHW (what a model without :class:`~lopinfer.workloads.CameraInput` expects).
- :func:`lidar_grid`: a seeded synthetic LiDAR scan voxelised like SemanticKITTI's
  input (256 x 256 x 32 voxels of 0.2 m; sensor at the middle of the x = 0 edge, 1.73 m
  above a gently rolling ground): ground voxels where the 40 downward beams of a
  64-beam sensor (-24.8 to -2 degrees) hit it, boxes (cars) and cylinders (trunks,
  poles) of which only the half facing the sensor is seen, and no ground in their
  shadows. About 1-2 % of voxels are occupied, in clusters, as in a real scan.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import MissingDependencyError

__all__ = ["camera_frame", "lidar_grid", "IMAGENET_MEAN", "IMAGENET_STD", "SAMPLE_IMAGE"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAMPLE_IMAGE = "grace_hopper.jpg"
_FRAMES: dict[tuple[int, int], torch.Tensor] = {}


def _photo() -> torch.Tensor:
    try:
        from matplotlib import cbook, image
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "bench", "camera frames") from exc
    path = cbook.get_sample_data(SAMPLE_IMAGE, asfileobj=False)  # (600, 512, 3) uint8
    return torch.from_numpy(image.imread(str(path)).copy())


def camera_frame(height: int = 640, width: int | None = None, *, uint8: bool = True,
                 mean: tuple[float, ...] = (0.0, 0.0, 0.0),
                 std: tuple[float, ...] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """The sample photograph as a ``height x width`` camera frame.

    ``uint8=True``: ``(1, H, W, 3)`` uint8, as a camera delivers it. Otherwise
    ``(1, 3, H, W)`` float32, ``(pixel / 255 - mean) / std`` (the default is YOLO's
    plain ``/ 255``; pass :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD` for ImageNet nets).

    Raises:
        MissingDependencyError: matplotlib (extra ``bench``) is not installed.
    """
    width = height if width is None else width
    key = (height, width)
    if key not in _FRAMES:
        img = _photo().permute(2, 0, 1)[None].to(torch.float32)  # 1, 3, h, w
        h, w = img.shape[-2:]
        s = max(height / h, width / w)  # cover, then crop the middle
        rh, rw = max(height, round(h * s)), max(width, round(w * s))
        img = F.interpolate(img, size=(rh, rw), mode="bilinear", antialias=True,
                            align_corners=False)
        top, left = (rh - height) // 2, (rw - width) // 2
        img = img[..., top:top + height, left:left + width]
        _FRAMES[key] = img.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    frame = _FRAMES[key].clone()
    if uint8:
        return frame
    x = frame.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return ((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).contiguous()


def lidar_grid(size: int = 256, height: int = 32, *, seed: int = 0, objects: int = 14,
               voxel_m: float = 0.2) -> torch.Tensor:
    """A synthetic LiDAR occupancy grid ``(1, height, size, size)`` float32 in {0, 1}
    (see the module doc); the same ``seed`` gives the same grid."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.arange(size, dtype=torch.float32).view(size, 1).expand(size, size)
    ys = torch.arange(size, dtype=torch.float32).view(1, size).expand(size, size)
    dy = ys - size / 2
    dist = torch.sqrt(xs ** 2 + dy ** 2) * voxel_m  # metres from the sensor
    angle = torch.atan2(dy, xs + 1e-6)
    sensor_z = 1.73
    # rolling ground, about 0.4 m of relief, its index counted from 2 m below the sensor
    phase = torch.rand(2, generator=g) * 2 * math.pi
    relief = 0.2 * (torch.sin(xs / 37 + phase[0]) + torch.cos(ys / 53 + phase[1]))
    ground_z = ((2.0 - sensor_z + relief) / voxel_m).round().clamp(0, height - 1).long()
    beams = torch.linspace(math.radians(-24.8), math.radians(-2.0), 40)
    rings = (sensor_z - relief.unsqueeze(0)) / torch.tan(-beams).view(-1, 1, 1)
    hit = ((dist.unsqueeze(0) - rings).abs() < 0.5 * voxel_m * (1 + dist / 20)).any(0)
    hit &= torch.rand(size, size, generator=g) > 0.1  # beams that return nothing
    grid = torch.zeros(height, size, size)
    for _ in range(objects):
        cx = float(torch.randint(15, size - 10, (1,), generator=g))
        cy = float(torch.randint(10, size - 10, (1,), generator=g))
        if torch.rand(1, generator=g).item() < 0.6:  # a car-sized box
            hx, hy = (torch.rand(2, generator=g) * torch.tensor([6.0, 2.0]) + torch.tensor([9.0, 4.0])).tolist()
            top = int(torch.randint(6, 9, (1,), generator=g))
            body = ((xs - cx).abs() <= hx) & ((ys - cy).abs() <= hy)
            shell = body & (((xs - cx).abs() > hx - 1) | ((ys - cy).abs() > hy - 1))
        else:  # a trunk or a pole
            r = float(torch.rand(1, generator=g)) * 2 + 1
            top = int(torch.randint(min(10, height - 1), height, (1,), generator=g))
            rr = torch.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
            body, shell = rr <= r, (rr <= r) & (rr > r - 1.2)
        near = dist <= math.hypot(cx, cy - size / 2) * voxel_m  # the half facing the sensor
        seen = shell & near
        z0 = int(ground_z[int(cx), int(cy)]) + 1
        grid[z0:min(height, z0 + top), seen] = 1.0
        if body.any():  # its shadow: no ground behind it, within its angular span
            a_in = angle[body]
            d_min = float(dist[body].min())
            hit &= ~((angle >= a_in.min()) & (angle <= a_in.max()) & (dist > d_min))
    zi, xi = ground_z[hit], hit.nonzero(as_tuple=True)
    grid[zi, xi[0], xi[1]] = 1.0
    return grid.unsqueeze(0).contiguous()
