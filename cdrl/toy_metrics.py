"""Exact sample-quality metrics for the 2-D toy densities (no feature extractor involved).

- ``in_support_fraction``: share of samples inside the density's support;
- ``mode_coverage``: share of modes (squares, Gaussians, rings) holding at least a quarter
  of their fair share of the samples;
- ``energy_distance``: 2 E|X - Y| - E|X - X'| - E|Y - Y'| against fresh data (0 iff equal
  in distribution; Szekely & Rizzo), on the density's own coordinates, estimated without
  bias: the within-set means skip the i = j pairs (a U-statistic), so two independent
  draws of one density score 0 on average instead of a positive, sample-size-dependent bias.
"""

from __future__ import annotations

import functools

import torch

from cdrl.datasets import dataset_info, toy_mode_index, toy_sample

#: A mode counts as covered when it holds at least this fraction of its fair share.
COVERAGE_THRESHOLD = 0.25


def energy_distance(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Unbiased energy distance of two point sets (n, d); negative values are estimation noise around 0."""
    # float64: the result is a small difference of means of distances thousands of times larger.
    samples, reference = samples.double(), reference.double()

    def within(points: torch.Tensor) -> torch.Tensor:
        n = len(points)
        return torch.cdist(points, points).sum() / (n * (n - 1))  # the diagonal is 0: i = j pairs drop out

    return float(2 * torch.cdist(samples, reference).mean() - within(samples) - within(reference))


def toy_metrics(name: str, samples: torch.Tensor, seed: int = 0, scale: float = 4.0,
                n_reference: int | None = None) -> dict[str, float]:
    """The three metrics of ``samples`` (n, 2) drawn from a model of toy density ``name``."""
    samples = samples.float().cpu()
    modes = toy_mode_index(name, samples, scale)
    n_modes = dataset_info(name).num_modes
    counts = torch.bincount(modes[modes >= 0], minlength=n_modes).float()
    fair_share = len(samples) / n_modes
    reference, _ = toy_sample(name, n_reference or len(samples), torch.Generator().manual_seed(seed), scale)
    return {
        "in_support_fraction": float((modes >= 0).float().mean()),
        "mode_coverage": float((counts >= COVERAGE_THRESHOLD * fair_share).float().mean()),
        "energy_distance": energy_distance(samples, reference),
    }


#: Points per side of the even spread that :func:`chance_metrics` scores.
CHANCE_GRID = 64


@functools.lru_cache(maxsize=None)
def chance_metrics(name: str, scale: float = 4.0) -> dict[str, float]:
    """What a model that learnt only the density's range scores: points spread evenly over the square
    [-2 scale, 2 scale]² that holds every toy density (a grid of cell centres), against fresh draws.

    Its in-support fraction is the share of the square the support covers (0.5 for the checkerboard). Mode
    coverage is left out: an even spread covers every mode, so it has no chance level.
    """
    half = 2 * scale
    centres = (torch.arange(CHANCE_GRID) + 0.5) * (2 * half / CHANCE_GRID) - half
    metrics = toy_metrics(name, torch.cartesian_prod(centres, centres), scale=scale)
    del metrics["mode_coverage"]
    return metrics
