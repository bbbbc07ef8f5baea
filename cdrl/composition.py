"""Attribute composition by name: which classes stand for the concepts a suite composes, and what each sample asks.

A dataset with concepts (:class:`cdrl.datasets.Concept`: ``digits-colour``'s digit and colour,
``celeba``'s male and smiling) numbers each concept's values as classes of one label space.
Composing concepts A and B samples f(x | a) + f(x | b) − f(x | ∅) (:mod:`cdrl.guidance`), sample i
asking for the i-th combination of their values (:func:`cdrl.guidance.composed_classes`);
asking one concept alone is plain conditional sampling of that concept.
"""

from __future__ import annotations

from typing import Sequence

import torch

from cdrl.config import ExperimentConfig
from cdrl.datasets import DatasetError, dataset_info
from cdrl.guidance import composed_classes


def concept_groups(config: ExperimentConfig, names: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """The classes of each named concept of the model's dataset, in the order named."""
    info = dataset_info(config.data.dataset)
    if len(set(names)) != len(names):
        raise DatasetError(f"concepts {', '.join(names)} name one twice: name each once")
    return tuple(info.concept_classes(name) for name in names)


def requested_values(n_samples: int, config: ExperimentConfig, names: Sequence[str]) -> torch.Tensor:
    """(n_samples, the dataset's concepts): the value each sample asks of each concept, -1 where it asks none.

    Values are within-concept indices (colour 0..2, not classes 10..12), as concept classifiers read them.
    """
    info = dataset_info(config.data.dataset)
    groups = concept_groups(config, names)
    asked = composed_classes(torch.arange(n_samples), groups)
    values = torch.full((n_samples, len(info.concepts)), -1, dtype=torch.long)
    for name, group, classes in zip(names, groups, asked):
        index = [concept.name for concept in info.concepts].index(name)
        values[:, index] = classes - group[0]
    return values
