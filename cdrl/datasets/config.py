"""What to load (:class:`DataConfig`), the label convention, and the error every dataset raises."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from cdrl.errors import CdrlBenchError
from cdrl.typed import above, at_least

UNCONDITIONAL_LABEL = -1
Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = typing.get_args(Split)
# Which downsampled-ImageNet files imagenet32 reads (DataConfig.imagenet_source).
ImagenetSource = Literal["npz32", "npz64-resized"]
IMAGENET_SOURCES: tuple[str, ...] = typing.get_args(ImagenetSource)


class DatasetError(CdrlBenchError):
    """A dataset cannot be built; the message names the problem and the fix (a ValueError)."""


@dataclass(frozen=True)
class DataConfig:
    """What to load. ``None`` means "the dataset's own default" (see each field)."""

    dataset: str
    # Folder holding the raw files (cifar-10-batches-py/, Imagenet32_*_npz/,
    # Imagenet64_*_npz/); None means ./data. Toy sets and digits need no files.
    data_dir: str | None = None
    # "train" or "test" (ImageNet32's "test" is its official validation set).
    split: Split = "train"
    # imagenet32 only: where its 32x32 images come from. The two differ pixel for pixel,
    # so FIDs against one are not comparable with FIDs against the other:
    # "npz32": the Imagenet32_*_npz batches, box-downsampled to 32x32 by their authors;
    #   cheap (memory-mapped, no per-image work), the default for training and scoring.
    # "npz64-resized": the Imagenet64_*_npz batches (64x64), each image resized by
    #   torchvision's Resize(32) + CenterCrop(32) (antialiased bilinear, on a PIL image),
    #   as the published CDRL code prepares ImageNet; its guidance sweep scores FID
    #   against 5,000 validation ("test") images made this way.
    imagenet_source: ImagenetSource = "npz32"
    # Side of the square images. None: native 32 for cifar10/imagenet32 (the only
    # size they accept), 16 for digits. Ignored by toy sets.
    image_size: int | None = field(default=None, metadata=at_least(1))
    # Image channels. None: 3 for cifar10/imagenet32 (the only value they accept),
    # 1 for digits (3 replicates the gray channel). Ignored by toy sets.
    channels: int | None = field(default=None, metadata=at_least(1))
    # Random horizontal flips (p = 0.5) of training-split images. None: on for
    # cifar10/imagenet32 as in the published training, off for digits, which refuse
    # True (a mirrored 2, 3 or 7 is no longer that digit). Never applied to test
    # splits or toy points.
    horizontal_flip: bool | None = None
    # Fetch CIFAR-10 (checksum-verified) when no local copy is found.
    download: bool = True
    # Return class labels instead of UNCONDITIONAL_LABEL.
    class_conditional: bool = False
    # Toy sets: coordinates are multiplied by this (4 = published checkerboard).
    toy_scale: float = field(default=4.0, metadata=above(0))
    # Toy sets: number of points drawn once per split.
    toy_size: int = field(default=50_000, metadata=at_least(1))
    # Toy sets: seed of that one draw (train and test use different streams).
    toy_seed: int = field(default=1, metadata=at_least(0))
