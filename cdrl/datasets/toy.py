"""The 2-D toy datasets: one fixed draw per split from the densities of :mod:`cdrl.datasets.toy_truth`.

Items are float32 points of shape (2,) in the density's own coordinates, NOT in [-1, 1].
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from cdrl.datasets.common import TensorPairDataset, labels_for
from cdrl.datasets.config import SPLITS, DataConfig, DatasetError
from cdrl.datasets.registry import DatasetInfo, register
from cdrl.datasets.toy_truth import TOY_CLASS_NAMES, TOY_NUM_MODES, toy_sample


def _build_toy(config: DataConfig) -> Dataset:
    if config.toy_size < 1:
        raise DatasetError(f"toy_size must be positive; got {config.toy_size}")
    # One fixed draw per split; train and test use distinct generator streams.
    generator = torch.Generator().manual_seed(2 * config.toy_seed + SPLITS.index(config.split))
    points, labels = toy_sample(config.dataset, config.toy_size, generator, config.toy_scale)
    return TensorPairDataset(
        points,
        torch.from_numpy(labels_for(config, labels.numpy())),
        classes=TOY_CLASS_NAMES[config.dataset],
    )


for _name, _description in (
    ("toy-checkerboard", "2-D checkerboard of the published toy example, 8 squares on [-8, 8]²"),
    ("toy-8gaussians", "2-D mixture of 8 Gaussians on a circle of radius 6, std 0.5"),
    ("toy-2rings", "2-D pair of rings of radius 3 and 6, radial std 0.25"),
    ("toy-quadrants", "2-D checkerboard labelled by quadrant (4 classes of 2 squares)"),
):
    register(DatasetInfo(_name, _description, (2,), len(TOY_CLASS_NAMES[_name]), False, TOY_NUM_MODES[_name],
                         _build_toy, class_names=tuple(TOY_CLASS_NAMES[_name])))
