"""The dataset registry: one :class:`DatasetInfo` per dataset, added by its module with :func:`register`.

Kept apart from the package's ``__init__`` so that dataset modules can register
themselves while the package imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor
from torch.utils.data import Dataset

from cdrl.datasets.config import DataConfig, DatasetError


@dataclass(frozen=True)
class Concept:
    """One attribute of a dataset whose values are classes of its label space (attribute composition)."""

    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset, available without loading it, and how to build it."""

    name: str
    description: str
    shape: tuple[int, ...]  # item shape at the default image_size/channels
    num_classes: int
    is_image: bool
    num_modes: int | None  # toy sets: modes that toy_mode_index tells apart
    build: Callable[[DataConfig], Dataset] = field(repr=False, compare=False)
    # Class names known without loading; None: read from the dataset's own files (CIFAR-10's batches.meta).
    class_names: tuple[str, ...] | None = None
    # Whether DataConfig.imagenet_source applies to this dataset (any other value than "npz32" is refused otherwise).
    takes_imagenet_source: bool = False
    # The name keying a config's cached reference statistics; None: the dataset's name.
    reference_name: Callable[[DataConfig], str] | None = field(default=None, repr=False, compare=False)
    # Attributes to compose, their values numbered on in label order (the first's are classes 0..n-1, ...).
    concepts: tuple[Concept, ...] = ()
    # (N, len(concepts)) of every item's value of each concept, in item order; with ``concepts``.
    concept_labels: Callable[[DataConfig], Tensor] | None = field(default=None, repr=False, compare=False)

    def concept_classes(self, name: str) -> tuple[int, ...]:
        """The classes of the label space that stand for concept ``name``'s values."""
        start = 0
        for concept in self.concepts:
            if concept.name == name:
                return tuple(range(start, start + len(concept.values)))
            start += len(concept.values)
        known = ", ".join(concept.name for concept in self.concepts) or "none"
        raise DatasetError(f"dataset {self.name!r} has no concept {name!r}: its concepts are {known}")

    def item_shape(self, config: DataConfig) -> tuple[int, ...]:
        """Shape of one item under ``config``: images take its channels and image_size, other items are fixed."""
        if not self.is_image:
            return self.shape
        channels, size, _ = self.shape
        return (config.channels or channels, config.image_size or size, config.image_size or size)


# Every dataset by name, in the order the package imports their modules (the order names are listed in).
DATASETS: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` to DATASETS (a name registers once) and return it."""
    if info.name in DATASETS:
        raise DatasetError(f"dataset {info.name!r} is registered twice: rename one of them")
    DATASETS[info.name] = info
    return info
