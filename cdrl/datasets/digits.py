"""scikit-learn digits: 1797 8x8 gray images, intensities 0..16, classes 0..9 (bundled, no download)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cdrl.datasets.common import TensorPairDataset, labels_for
from cdrl.datasets.config import DataConfig, DatasetError
from cdrl.datasets.registry import DatasetInfo, register

DIGITS_DEFAULT_SIZE = 16
DIGITS_TEST_EVERY = 5  # images whose index is a multiple of 5 form the test split (360 of 1797)
DIGITS_CLASS_NAMES = tuple(str(digit) for digit in range(10))


def _build_digits(config: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    size = config.image_size or DIGITS_DEFAULT_SIZE
    channels = config.channels or 1
    if size < 8:
        raise DatasetError(f"digits are 8x8 and are only upsampled; got image_size={size}: use 8 or more")
    if channels not in (1, 3):
        raise DatasetError(f"digits have channels 1 (gray) or 3 (gray replicated); got {channels}")
    if config.horizontal_flip and config.split == "train":
        raise DatasetError("digits are not flipped (a mirrored digit is a different glyph): drop --horizontal-flip")
    bunch = load_digits()
    indices = np.arange(len(bunch.target))
    in_test = indices % DIGITS_TEST_EVERY == 0
    keep = in_test if config.split == "test" else ~in_test
    images = torch.from_numpy(bunch.images[keep]).float().unsqueeze(1) / 8.0 - 1.0
    # Bilinear weights are convex, so upsampled values stay in [-1, 1]; no padding:
    # the 8x8 digits already carry a blank border.
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.expand(-1, channels, -1, -1).contiguous()
    labels = torch.from_numpy(labels_for(config, bunch.target[keep]))
    return TensorPairDataset(images, labels, classes=DIGITS_CLASS_NAMES)


def _reference_name(config: DataConfig) -> str:
    # Each upsampled size is another image set, so another reference: the Inception sees other pixels.
    return f"{config.dataset}-{config.image_size or DIGITS_DEFAULT_SIZE}px"


register(DatasetInfo("digits",
                     "scikit-learn digits, 8x8 gray upsampled to image_size (default 16), 1437 train / 360 test",
                     (1, DIGITS_DEFAULT_SIZE, DIGITS_DEFAULT_SIZE), 10, True, None, _build_digits,
                     class_names=DIGITS_CLASS_NAMES, reference_name=_reference_name))
