"""What the dataset builders share: the two item containers, labels, the data folder, photo options."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from cdrl.datasets.config import UNCONDITIONAL_LABEL, DataConfig, DatasetError

DEFAULT_DATA_DIR = Path("data")


class ImageArrayDataset(Dataset):
    """uint8 CHW-planar images stored as rows of one or more (n_i, C*H*W) arrays.

    The arrays may be memory-mapped; a row is read, resized (when ``resize`` is
    given: uint8 CHW image in, uint8 CHW image out) and scaled to [-1, 1] only
    when its item is requested.
    """

    def __init__(
        self,
        chunks: Sequence[np.ndarray],
        labels: np.ndarray,
        image_shape: tuple[int, int, int],
        horizontal_flip: bool,
        classes: Sequence[str],
        resize: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.chunks = list(chunks)
        self.labels = labels
        self.image_shape = image_shape  # of the stored rows, before resize
        self.classes = list(classes)
        self.resize = resize
        self.chunk_starts = np.cumsum([0] + [len(chunk) for chunk in self.chunks])
        # torchvision's transform, as in the published training; it draws from the
        # global torch RNG, which infinite_batches seeds per batch for resumability.
        self.flip = transforms.RandomHorizontalFlip() if horizontal_flip else None

    def __len__(self) -> int:
        return int(self.chunk_starts[-1])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        chunk = int(np.searchsorted(self.chunk_starts, index, side="right")) - 1
        row = np.asarray(self.chunks[chunk][index - self.chunk_starts[chunk]])
        pixels = torch.tensor(row).view(self.image_shape)
        if self.resize is not None:
            pixels = self.resize(pixels)
        image = pixels.float().div_(127.5).sub_(1.0)
        if self.flip is not None:
            image = self.flip(image)
        return image, int(self.labels[index])


class TensorPairDataset(Dataset):
    """Precomputed items held in memory: ``x[i]`` with integer ``labels[i]``."""

    def __init__(self, x: Tensor, labels: Tensor, classes: Sequence[str]) -> None:
        self.x = x
        self.labels = labels
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.x[index], int(self.labels[index])

    def take(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """A collated batch in one indexing op (no per-item work: toy batches are large)."""
        return self.x[indices], self.labels[indices]


def labels_for(config: DataConfig, class_labels: np.ndarray) -> np.ndarray:
    """The item labels: the 0-based classes when ``config.class_conditional``, else all UNCONDITIONAL_LABEL."""
    if config.class_conditional:
        return class_labels.astype(np.int64)
    return np.full(len(class_labels), UNCONDITIONAL_LABEL, dtype=np.int64)


def data_root(config: DataConfig) -> Path:
    """The absolute folder holding the raw files (``config.data_dir``, else ./data)."""
    return Path(config.data_dir if config.data_dir is not None else DEFAULT_DATA_DIR).resolve()


def check_photo_options(config: DataConfig, name: str) -> None:
    """CIFAR-10 and ImageNet32 are used at their native 32x32 RGB only (FID is comparable only there)."""
    if config.image_size not in (None, 32):
        raise DatasetError(f"{name} images are 32x32; got image_size={config.image_size}: drop --image-size or set it to 32")
    if config.channels not in (None, 3):
        raise DatasetError(f"{name} images are RGB; got channels={config.channels}: drop --channels or set it to 3")


def photo_flip(config: DataConfig) -> bool:
    """Whether to flip photo items: on by default, and for the training split only."""
    enabled = True if config.horizontal_flip is None else config.horizontal_flip
    return enabled and config.split == "train"
