"""Coloured digits: scikit-learn's 8x8 digits in red, green or blue ink, for attribute composition.

Two concepts that a person can check by eye and a classifier can read: the digit (10 classes)
and the ink colour (3 classes), independent of each other by construction (each image's colour
is drawn from a fixed seeded generator, not from its digit). The ink is a tint: full strength in
its colour's channel, half in the other two, so every channel draws the digit's strokes. Ink in
one channel alone (pure red, green, blue) leaves a digit in one colour without a pixel in common
with the same digit in another, and at CPU scale the networks then did not learn the digit label
(results/measurements.md, "Why the digit was not learnt"). A conditional model learns both
as classes of one label space, 0..9 the digits and 10..12 the colours; every training image
carries one of its two concepts, picked by the same fixed generator, as in the paper's
composition setting (METHOD.md: two energies of conditionally independent concepts, summed).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cdrl.datasets.common import TensorPairDataset, labels_for
from cdrl.datasets.config import DataConfig, DatasetError
from cdrl.datasets.digits import DIGITS_CLASS_NAMES, DIGITS_TEST_EVERY
from cdrl.datasets.registry import Concept, DatasetInfo, register

COLOUR_NAMES = ("red", "green", "blue")
#: The ink's strength in the two channels other than its colour's.
OTHER_CHANNELS_INK = 0.5
#: The concepts, in label order: digit d is class d, colour c is class 10 + c.
CONCEPTS = (Concept("digit", DIGITS_CLASS_NAMES), Concept("colour", COLOUR_NAMES))
CLASS_NAMES = DIGITS_CLASS_NAMES + COLOUR_NAMES
_SEED = 20261207


def _all_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(8x8 intensities in [0, 1], digit, colour, the concept each image is labelled with) of all 1797 digits."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    generator = np.random.default_rng(_SEED)
    colours = generator.integers(0, len(COLOUR_NAMES), size=len(bunch.target))
    shows_colour = generator.random(len(bunch.target)) < 0.5
    concept_label = np.where(shows_colour, len(DIGITS_CLASS_NAMES) + colours, bunch.target)
    return bunch.images / 16.0, bunch.target, colours, concept_label


def _split(config: DataConfig) -> np.ndarray:
    in_test = np.arange(1797) % DIGITS_TEST_EVERY == 0  # the digits dataset's split
    return in_test if config.split == "test" else ~in_test


def concept_labels(config: DataConfig) -> torch.Tensor:
    """(N, 2) of each image's digit and colour (within-concept indices), in the dataset's item order."""
    _, digits, colours, _ = _all_digits()
    keep = _split(config)
    return torch.from_numpy(np.stack([digits[keep], colours[keep]], axis=1)).long()


def _build(config: DataConfig) -> Dataset:
    if (config.image_size or 8) != 8 or (config.channels or 3) != 3:
        raise DatasetError(f"digits-colour images are 3x8x8; got channels={config.channels}, "
                           f"image_size={config.image_size}: drop them or set 3 and 8")
    if config.horizontal_flip and config.split == "train":
        raise DatasetError("digits are not flipped (a mirrored digit is a different glyph): drop --horizontal-flip")
    intensities, _, colours, concept_label = _all_digits()
    keep = _split(config)
    ink = torch.from_numpy(intensities[keep]).float().unsqueeze(1)  # (N, 1, 8, 8)
    in_colour = torch.nn.functional.one_hot(torch.from_numpy(colours[keep]), len(COLOUR_NAMES)).float()
    tint = OTHER_CHANNELS_INK + (1.0 - OTHER_CHANNELS_INK) * in_colour
    images = ink * tint[:, :, None, None] * 2.0 - 1.0  # black background
    return TensorPairDataset(images, torch.from_numpy(labels_for(config, concept_label[keep])), classes=CLASS_NAMES)


register(DatasetInfo("digits-colour",
                     "scikit-learn digits 3x8x8 in red, green or blue tinted ink (colour independent of digit); "
                     "classes: the digit 0-9 or the colour 10-12, one per image; 1437 train / 360 test",
                     (3, 8, 8), len(CLASS_NAMES), True, None, _build, class_names=CLASS_NAMES,
                     concepts=CONCEPTS, concept_labels=concept_labels))
