"""The exact 2-D toy densities: sampling, mode and support membership, class names.

The ground truth that toy metrics (:mod:`cdrl.toy_metrics`) and training's in-support
logging score samples against; the toy datasets (:mod:`cdrl.datasets.toy`) draw from it.

Parameters are in units of toy_scale (default 4):
  checkerboard: the 8 unit squares of the published toy example times scale, uniform: [-8, 8]²
  8gaussians:   8 equal-weight isotropic Gaussians, centres on a circle of radius
                1.5·scale (6) at angles k·45°, std 0.125·scale (0.5)
  2rings:       2 equal-weight rings of radius 0.75·scale and 1.5·scale (3, 6), uniform
                angle, Gaussian radial spread with std 0.0625·scale (0.25)
  quadrants:    the checkerboard's points, labelled by quadrant (2 squares each)
Support for evaluation: inside a square; within GAUSSIAN_SUPPORT_STDS std of a centre
(holds 1 - exp(-4.5) ≈ 98.9% of the mass); within RING_SUPPORT_STDS std of a ring
radius (≈ 99.7%).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cdrl.datasets.config import DatasetError

# (xmin, xmax, ymin, ymax) as published; (-1, 0, -1, -2) has ymin > ymax there and its
# sampler draws y in [-2, -1], so it is stored as (-1, 0, -2, -1): the same square.
CHECKERBOARD_SQUARES = (
    (1, 2, 0, 1), (0, 1, 1, 2), (0, 1, -1, 0), (1, 2, -2, -1),
    (-1, 0, -2, -1), (-2, -1, -1, 0), (-1, 0, 0, 1), (-2, -1, 1, 2),
)  # fmt: skip
GAUSSIAN_RADIUS = 1.5
GAUSSIAN_STD = 0.125
RING_RADII = (0.75, 1.5)
RING_STD = 0.0625
GAUSSIAN_SUPPORT_STDS = 3.0
RING_SUPPORT_STDS = 3.0
TOY_CLASS_NAMES = {
    "toy-checkerboard": [f"square{index}" for index in range(len(CHECKERBOARD_SQUARES))],
    "toy-8gaussians": [f"gaussian{index}" for index in range(8)],
    "toy-2rings": ["inner", "outer"],
    # counter-clockwise from x > 0, y > 0
    "toy-quadrants": ["x+y+", "x-y+", "x-y-", "x+y-"],
}
# Modes that toy_mode_index tells apart (quadrants: the checkerboard's squares, not its 4 classes).
TOY_NUM_MODES = {
    "toy-checkerboard": len(CHECKERBOARD_SQUARES),
    "toy-8gaussians": 8,
    "toy-2rings": len(RING_RADII),
    "toy-quadrants": len(CHECKERBOARD_SQUARES),
}


def _squares(scale: float) -> Tensor:
    return torch.tensor(CHECKERBOARD_SQUARES, dtype=torch.float32) * scale


def _gaussian_centres(scale: float) -> Tensor:
    angles = torch.arange(8, dtype=torch.float32) * (math.pi / 4)
    return torch.stack([angles.cos(), angles.sin()], dim=1) * (GAUSSIAN_RADIUS * scale)


def _quadrant(points: Tensor) -> Tensor:
    right, up = points[:, 0] >= 0, points[:, 1] >= 0
    return torch.where(up, torch.where(right, 0, 1), torch.where(right, 3, 2))


def _check_toy_name(name: str) -> None:
    if name not in TOY_CLASS_NAMES:
        raise DatasetError(f"unknown toy density {name!r}: choose one of {', '.join(TOY_CLASS_NAMES)}")


def toy_sample(name: str, n: int, generator: torch.Generator | None = None, scale: float = 4.0) -> tuple[Tensor, Tensor]:
    """Fresh points (n, 2) of toy density ``name`` and their class labels (n,)."""
    _check_toy_name(name)
    if name in ("toy-checkerboard", "toy-quadrants"):
        squares = _squares(scale)
        index = torch.randint(len(squares), (n,), generator=generator)
        low, high = squares[index][:, [0, 2]], squares[index][:, [1, 3]]
        points = low + (high - low) * torch.rand(n, 2, generator=generator)
        return points, (_quadrant(points) if name == "toy-quadrants" else index)
    if name == "toy-8gaussians":
        index = torch.randint(8, (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator) * (GAUSSIAN_STD * scale)
        return _gaussian_centres(scale)[index] + noise, index
    index = torch.randint(len(RING_RADII), (n,), generator=generator)
    radius = torch.tensor(RING_RADII)[index] * scale + torch.randn(n, generator=generator) * (RING_STD * scale)
    angle = torch.rand(n, generator=generator) * (2 * math.pi)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1), index


def toy_mode_index(name: str, points: Tensor, scale: float = 4.0) -> Tensor:
    """Mode of each point (n, 2): square (both checkerboard sets), Gaussian or ring index; -1 outside the support."""
    _check_toy_name(name)
    points = points.float()
    if name in ("toy-checkerboard", "toy-quadrants"):
        squares = _squares(scale)
        x, y = points[:, :1], points[:, 1:]
        inside = (x >= squares[:, 0]) & (x <= squares[:, 1]) & (y >= squares[:, 2]) & (y <= squares[:, 3])
        return torch.where(inside.any(dim=1), inside.int().argmax(dim=1), -1)
    if name == "toy-8gaussians":
        distance, index = torch.cdist(points, _gaussian_centres(scale)).min(dim=1)
        return torch.where(distance <= GAUSSIAN_SUPPORT_STDS * GAUSSIAN_STD * scale, index, -1)
    offset, index = (points.norm(dim=1, keepdim=True) - torch.tensor(RING_RADII) * scale).abs().min(dim=1)
    return torch.where(offset <= RING_SUPPORT_STDS * RING_STD * scale, index, -1)


def toy_in_support(name: str, points: Tensor, scale: float = 4.0) -> Tensor:
    """Whether each point (n, 2) lies in the support of toy density ``name`` (bool, n)."""
    return toy_mode_index(name, points, scale) >= 0
