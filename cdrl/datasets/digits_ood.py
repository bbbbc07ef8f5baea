"""Digits split by class, and patches of scikit-learn's sample photos: in- and out-of-distribution sets at CPU scale.

The CPU-scale analogue of the paper's OOD table (CIFAR-10 in distribution): a model trained on
the digits 0-4 (``digits-0to4``) is asked to tell them from the digits 5-9 (``digits-5to9``: the
same kind of images, other classes, as CIFAR-100 is to CIFAR-10) and from patches of photos
(``photo-patches``: another kind of image, as CelebA is), at the digits' size and channels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import Dataset

from cdrl.datasets.common import TensorPairDataset, labels_for
from cdrl.datasets.config import DataConfig, DatasetError
from cdrl.datasets.digits import DIGITS_CLASS_NAMES, _build_digits, _reference_name
from cdrl.datasets.registry import DatasetInfo, register

#: Photo patches: per photo and split, this many (test: a quarter) patches at fixed random positions.
PATCHES_PER_PHOTO = 720
_PATCH_SEED = 8


def _digit_classes(first: int, last: int):
    def build(config: DataConfig) -> Dataset:
        digits = _build_digits(replace(config, dataset="digits", class_conditional=True))
        keep = (digits.labels >= first) & (digits.labels <= last)
        labels = labels_for(config, digits.labels[keep].numpy() - first)
        return TensorPairDataset(digits.x[keep], torch.from_numpy(labels), classes=DIGITS_CLASS_NAMES[first:last + 1])
    return build


def _build_patches(config: DataConfig) -> Dataset:
    from sklearn.datasets import load_sample_images  # two photos bundled with scikit-learn: no download

    size, channels = config.image_size or 8, config.channels or 1
    if channels not in (1, 3):
        raise DatasetError(f"photo patches have channels 1 (gray) or 3 (colour); got {channels}")
    generator = np.random.default_rng(_PATCH_SEED + (config.split == "test"))
    count = PATCHES_PER_PHOTO // (4 if config.split == "test" else 1)
    patches = []
    for photo in load_sample_images().images:  # (427, 640, 3) uint8 each
        pixels = torch.tensor(photo).permute(2, 0, 1).float() / 127.5 - 1.0
        pixels = pixels.mean(0, keepdim=True).expand(channels, -1, -1) if channels == 1 else pixels
        # Patches of 4x the side, box-averaged down: as blurry as an 8x8 digit, not single pixels of texture.
        side = 4 * size
        tops = generator.integers(0, pixels.shape[1] - side, count)
        lefts = generator.integers(0, pixels.shape[2] - side, count)
        crops = torch.stack([pixels[:, top:top + side, left:left + side] for top, left in zip(tops, lefts)])
        patches.append(torch.nn.functional.avg_pool2d(crops, 4))
    images = torch.cat(patches).contiguous()
    return TensorPairDataset(images, torch.from_numpy(labels_for(config, np.zeros(len(images)))),
                             classes=("photo",))


register(DatasetInfo("digits-0to4", "scikit-learn digits 0-4 only (the in-distribution set of digits-ood), "
                                    "8x8 gray upsampled to image_size (default 16)",
                     (1, 16, 16), 5, True, None, _digit_classes(0, 4), class_names=DIGITS_CLASS_NAMES[:5],
                     reference_name=_reference_name))
register(DatasetInfo("digits-5to9", "scikit-learn digits 5-9 only (near out-of-distribution for digits-0to4)",
                     (1, 16, 16), 5, True, None, _digit_classes(5, 9), class_names=DIGITS_CLASS_NAMES[5:],
                     reference_name=_reference_name))
register(DatasetInfo("photo-patches", "gray patches of scikit-learn's two sample photos, box-averaged to "
                                      "image_size (default 8): far out-of-distribution for digits",
                     (1, 8, 8), 1, True, None, _build_patches, class_names=("photo",)))
