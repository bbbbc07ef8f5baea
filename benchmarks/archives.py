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


def write_cifar100(root: Path) -> Path:
    """``root/cifar-100-python/`` as the official archive unpacks: ``train`` (4 images), ``test`` (3) and ``meta``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", 4, 30), ("test", 3, 31)):
        split = {b"filenames": [b"x.png"] * count, b"batch_label": name.encode(), b"fine_labels": [99, 0, 42, 7][:count],
                 b"coarse_labels": [19, 4, 1, 0][:count], b"data": asymmetric_images(count, seed=seed)}
        (folder / name).write_bytes(pickle.dumps(split))
    names = {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
             b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(names))
    return root


#: CelebA's 40 attribute names, in list_attr_celeba.txt's order.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young").split()
#: (partition, Male, Smiling) of each written image: 0 train, 1 validation, 2 test; -1/1 as CelebA writes them.
CELEBA_ROWS = ((0, 1, -1), (0, -1, 1), (1, 1, 1), (2, -1, -1), (0, 1, 1), (2, 1, -1))


def write_celeba(root: Path) -> Path:
    """``root/celeba/`` in torchvision's layout: aligned 178x218 JPEGs (a white face region, the 140x140
    centre, on black), ``list_attr_celeba.txt`` and ``list_eval_partition.txt`` for :data:`CELEBA_ROWS`."""
    from PIL import Image

    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((218, 178, 3), dtype=np.uint8)
    top, left = (218 - 140) // 2, (178 - 140) // 2
    pixels[top:top + 140, left:left + 140] = 255
    names = [f"{index + 1:06d}.jpg" for index in range(len(CELEBA_ROWS))]
    for name in names:
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name, quality=100)
    male, smiling = CELEBA_ATTRIBUTES.index("Male"), CELEBA_ATTRIBUTES.index("Smiling")
    lines = [str(len(names)), " ".join(CELEBA_ATTRIBUTES)]
    for name, (_, is_male, is_smiling) in zip(names, CELEBA_ROWS):
        values = [-1] * len(CELEBA_ATTRIBUTES)
        values[male], values[smiling] = is_male, is_smiling
        lines.append(f"{name} " + " ".join(f"{value:2d}" for value in values))  # CelebA pads with spaces
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{name} {partition}\n" for name, (partition, _, _) in zip(names, CELEBA_ROWS)))
    return root
