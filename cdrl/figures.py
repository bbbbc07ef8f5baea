"""Figures of samples: image grids and 2-D scatter plots, for training snapshots and evaluations."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cdrl.config import ExperimentConfig
from cdrl.datasets import dataset_info, toy_in_support
from cdrl.files import writing

#: Each image of a grid is drawn at least this many pixels wide (an 8x8 digit is upscaled 12x)...
READABLE_PIXELS = 96
#: ...unless the grid would grow wider than this (then the factor shrinks, never below 1).
MAX_GRID_PIXELS = 2048
#: Cells per side of the grid on which a toy density's support is drawn, and its colour.
SUPPORT_RESOLUTION = 600
SUPPORT_COLOUR = "#f4c27a"


def upscale_factor(image_size: int, per_row: int) -> int:
    """Nearest-neighbour magnification of each image of a grid of ``per_row`` columns."""
    return max(1, min(math.ceil(READABLE_PIXELS / image_size), MAX_GRID_PIXELS // (per_row * image_size)))


def save_image_grid(samples: torch.Tensor, path: Path) -> Path:
    """A lossless PNG grid of images in [-1, 1], each upscaled by whole pixels (nearest neighbour:
    no blur, every pixel the model drew stays a visible square) to a readable size."""
    from torchvision.utils import make_grid, save_image

    per_row = math.ceil(math.sqrt(len(samples)))
    factor = upscale_factor(samples.shape[-1], per_row)
    images = samples.add(1).div(2).clamp(0, 1).repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    # Grey gaps: seen between dark and light images alike.
    save_image(make_grid(images, nrow=per_row, padding=2, pad_value=0.5), path)
    return path


def toy_scatter_figure(samples: torch.Tensor, dataset: str, scale: float, title: str):
    """A scatter plot of 2-D samples over the density's true support (the region the in-support metric counts)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no display, no pyplot state

    limit = 2.25 * scale
    axis = torch.linspace(-limit, limit, SUPPORT_RESOLUTION)
    grid_y, grid_x = torch.meshgrid(axis, axis, indexing="ij")
    support = toy_in_support(dataset, torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1), scale)
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.imshow(support.reshape(SUPPORT_RESOLUTION, SUPPORT_RESOLUTION).float().numpy(), origin="lower",
                extent=(-limit, limit, -limit, limit), cmap=ListedColormap(["white", SUPPORT_COLOUR]), vmin=0,
                vmax=1, interpolation="nearest")
    axes.scatter(samples[:, 0].numpy(), samples[:, 1].numpy(), s=2, color="#1f3b73", alpha=0.6, linewidths=0)
    axes.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal")
    axes.set_title(f"{title}\nshaded: the support of {dataset}", fontsize="small")
    return figure


def save_sample_figure(samples: torch.Tensor, config: ExperimentConfig, path: Path, title: str) -> Path:
    """A PNG of samples: an image grid, or a scatter plot of 2-D toy points over the true support."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if dataset_info(config.data.dataset).is_image:
            return save_image_grid(samples, path)
        toy_scatter_figure(samples, config.data.dataset, config.data.toy_scale, title).savefig(path, dpi=150)
    return path
