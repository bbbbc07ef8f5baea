"""Small dataset archives in each dataset's real on-disk format, with fixed pixels.

CIFAR-10 and ImageNet cannot be downloaded everywhere the gate runs, yet a normalisation or
layout change in their pipelines must still fail it: the gate's ruler
(:mod:`benchmarks.ruler`) reads these archives through ``cdrl.datasets`` as a user's files
are read, and the tests read the same archives. The pixels are random but fixed, with a
black first and a white last column (no image equals its mirror, so a flip shows) and a
halved second channel (so a planar/interleaved mix-up shows).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np

CIFAR10_LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship",
                       b"truck"]


def asymmetric_images(count: int, seed: int, side: int = 32, border: int = 1) -> np.ndarray:
    """uint8 (count, 3 * side * side) CHW-planar rows: random pixels, ``border`` black columns left and white right."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 3, side, side), dtype=np.uint8)
    images[..., :border] = 0
    images[..., -border:] = 255
    images[:, 1] //= 2
    return images.reshape(count, -1)


def images64(count: int, seed: int) -> np.ndarray:
    """64x64 rows whose 8-column borders are wider than the 64 -> 32 filter: the resized image still spans 0..255."""
    return asymmetric_images(count, seed, side=64, border=8)


def write_cifar10(root: Path) -> Path:
    """``root/cifar-10-batches-py/`` as the official archive unpacks, with 4 images per train batch and 3 test images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(1, 6):
        batch = {b"batch_label": b"training batch", b"labels": [(number + i) % 10 for i in range(4)],
                 b"data": asymmetric_images(4, seed=number), b"filenames": [b"x.png"] * 4}
        (folder / f"data_batch_{number}").write_bytes(pickle.dumps(batch))
    test = {b"batch_label": b"testing batch", b"labels": [7, 8, 9], b"data": asymmetric_images(3, seed=0)}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": CIFAR10_LABEL_NAMES, b"num_vis": 3072}))
    return root


def _write_imagenet(first: Path, second: Path, val: Path, rows: Callable[[int, int], np.ndarray], seed: int) -> None:
    """Two train batches (np.savez, then np.savez_compressed: both are read) and a val file, 1-based labels."""
    for folder in {first.parent, second.parent, val.parent}:
        folder.mkdir(parents=True, exist_ok=True)
    head, tail = rows(3, seed), rows(2, seed + 1)
    np.savez(first, data=head, labels=[1, 500, 1000], mean=head.mean(0))
    np.savez_compressed(second, data=tail, labels=[2, 3], mean=tail.mean(0))
    np.savez(val, data=rows(2, seed + 2), labels=[1000, 1])


def write_imagenet32(root: Path) -> Path:
    """``Imagenet32_train_npz/`` (batches 1 and 2) and ``Imagenet32_val_npz/`` as their zips unpack."""
    train = root / "Imagenet32_train_npz"
    _write_imagenet(train / "train_data_batch_1.npz", train / "train_data_batch_2.npz",
                    root / "Imagenet32_val_npz" / "val_data.npz", asymmetric_images, seed=10)
    return root


def write_imagenet64(root: Path) -> Path:
    """Batches 1 and 6 in the two folders the 64x64 train zips unpack to, and the val file."""
    _write_imagenet(root / "Imagenet64_train_part1_npz" / "train_data_batch_1.npz",
                    root / "Imagenet64_train_part2_npz" / "train_data_batch_6.npz",
                    root / "Imagenet64_val_npz" / "val_data.npz", images64, seed=20)
    return root
