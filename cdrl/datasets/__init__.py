"""Datasets for CDRL training and evaluation behind one small interface, and their registry.

``build_dataset(DataConfig(...))`` returns a map-style ``torch.utils.data.Dataset``
whose items are ``(x, label)``:

* image sets (``cifar10``, ``imagenet32``, ``digits``): ``x`` is a float32 CHW
  tensor in [-1, 1];
* 2-D toy densities (``toy-*``): ``x`` is a float32 tensor of shape (2,) in the
  density's own coordinates, NOT in [-1, 1] (the checkerboard spans [-8, 8]² at
  the default ``toy_scale`` of 4, as in the published toy example).

``label`` is a Python int: the 0-based class index when
``DataConfig.class_conditional`` is true, else ``UNCONDITIONAL_LABEL`` (-1).
Training code maps a label ``c`` to embedding index ``c + 1`` (index 0 is the
null class), so unconditional items land on the null class with no special case.

``DATASETS`` lists every dataset (for the CLI); ``dataset_info``, ``item_shape``
and ``reference_name`` describe them without loading anything; ``infinite_batches``
is the seeded, DDP-aware, resumable batch stream used by training; ``toy_sample``,
``toy_in_support`` and ``toy_mode_index`` give the exact toy densities that
evaluation scores samples against.

Adding a dataset: one module in this package that builds it and calls
``register(DatasetInfo(...))`` at import, plus its name in the import line below
(which also fixes the order datasets are listed in). Nothing else dispatches on names.
"""

from __future__ import annotations

from torch.utils.data import Dataset

# Each dataset module registers itself on import; this order is the order DATASETS lists them in.
from cdrl.datasets import cifar10, cifar100, celeba, imagenet32, digits, digits_colour, digits_ood, toy
from cdrl.datasets.common import TensorPairDataset
from cdrl.datasets.config import IMAGENET_SOURCES, SPLITS, UNCONDITIONAL_LABEL, DataConfig, DatasetError
from cdrl.datasets.loader import batches_per_epoch, infinite_batches
from cdrl.datasets.registry import DATASETS, Concept, DatasetInfo, register
from cdrl.datasets.toy_truth import toy_in_support, toy_mode_index, toy_sample

__all__ = [
    "DATASETS",
    "Concept",
    "SPLITS",
    "UNCONDITIONAL_LABEL",
    "DataConfig",
    "DatasetError",
    "DatasetInfo",
    "TensorPairDataset",
    "batches_per_epoch",
    "build_dataset",
    "dataset_info",
    "infinite_batches",
    "item_shape",
    "reference_name",
    "register",
    "toy_in_support",
    "toy_mode_index",
    "toy_sample",
    # the dataset modules, each registering its datasets on import
    "cifar10",
    "cifar100",
    "celeba",
    "imagenet32",
    "digits",
    "digits_colour",
    "digits_ood",
    "toy",
]


def dataset_info(name: str) -> DatasetInfo:
    """Facts about dataset ``name``; DatasetError listing the known names if unknown."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def reference_name(config: DataConfig) -> str:
    """The name of a dataset as read under ``config``: what keys its cached reference statistics."""
    info = dataset_info(config.dataset)
    return info.reference_name(config) if info.reference_name is not None else config.dataset


def item_shape(config: DataConfig) -> tuple[int, ...]:
    """Shape of one ``x`` that ``build_dataset(config)`` yields, without loading anything."""
    return dataset_info(config.dataset).item_shape(config)


def build_dataset(config: DataConfig) -> Dataset:
    """The dataset ``config`` names, items ``(x, label)`` as described in the module docstring."""
    info = dataset_info(config.dataset)
    if config.split not in SPLITS:
        raise DatasetError(f"unknown split {config.split!r}: choose one of {', '.join(SPLITS)}")
    if config.imagenet_source not in IMAGENET_SOURCES:
        raise DatasetError(f"unknown imagenet_source {config.imagenet_source!r}: "
                           f"choose one of {', '.join(IMAGENET_SOURCES)}")
    if config.imagenet_source != "npz32" and not info.takes_imagenet_source:
        takers = ", ".join(name for name, other in DATASETS.items() if other.takes_imagenet_source)
        raise DatasetError(f"imagenet_source={config.imagenet_source!r} applies to {takers} only: "
                           f"drop it for {config.dataset}")
    return info.build(config)
