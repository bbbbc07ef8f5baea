"""CelebA in torchvision's on-disk layout: ``celeba/img_align_celeba/*.jpg``, ``list_attr_celeba.txt``,
``list_eval_partition.txt``.

Images are centre-cropped to 140x140 (the face) and resized to ``image_size`` (default 64), as
EBM work on CelebA prepares them. Two attributes, Male and Smiling, are the concepts a model
composes (classes 0 female, 1 male, 2 not smiling, 3 smiling; every training image labelled
with one of its two, picked by a fixed seeded generator). Splits: ``train`` is the official
partition 0, ``test`` partition 2. torchvision downloads CelebA from Google Drive, which
refuses automated downloads beyond a daily quota: where that fails the message says which
files to fetch by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from cdrl.datasets.common import data_root, labels_for, photo_flip
from cdrl.datasets.config import DataConfig, DatasetError
from cdrl.datasets.registry import Concept, DatasetInfo, register

FOLDER = "celeba"
IMAGES = "img_align_celeba"
ATTRIBUTES = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"
#: The official partitions our splits read (1, validation, is not used).
PARTITIONS = {"train": 0, "test": 2}
#: The face region of the 178x218 aligned images, before resizing.
CROP = 140
DEFAULT_SIZE = 64
CONCEPTS = (Concept("male", ("female", "male")), Concept("smiling", ("not smiling", "smiling")))
CLASS_NAMES = tuple(value for concept in CONCEPTS for value in concept.values)
#: The attribute columns of list_attr_celeba.txt behind the concepts, in concept order.
ATTRIBUTE_COLUMNS = ("Male", "Smiling")
_SEED = 20261207


class CelebAImages(Dataset):
    """JPEG files read, cropped and resized as their items are requested."""

    def __init__(self, files: list[Path], labels: np.ndarray, size: int, flip: bool) -> None:
        self.files, self.labels, self.classes = files, labels, list(CLASS_NAMES)
        steps = [transforms.CenterCrop(CROP), transforms.Resize(size), transforms.PILToTensor()]
        self.transform = transforms.Compose(steps)
        self.flip = transforms.RandomHorizontalFlip() if flip else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[index]) as image:
                pixels = self.transform(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise DatasetError(f"cannot read CelebA image {self.files[index]} ({err}): re-extract "
                               f"img_align_celeba.zip") from None
        image = pixels.float().div_(127.5).sub_(1.0)
        return (self.flip(image) if self.flip is not None else image), int(self.labels[index])


def _table(path: Path, header_lines: int) -> tuple[list[str], list[str], np.ndarray]:
    """(column names, file names, int values) of one of CelebA's whitespace-separated text files."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
        header = lines[header_lines - 1].split() if header_lines else []
        rows = [line.split() for line in lines[header_lines:] if line.strip()]
        values = np.array([[int(value) for value in row[1:]] for row in rows], dtype=np.int64)
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as err:
        raise DatasetError(f"cannot read CelebA file {path} ({err}): download it again") from None
    if len(rows) == 0 or values.ndim != 2 or values.shape[1] != (len(header) if header_lines else 1):
        raise DatasetError(f"CelebA file {path} is not in CelebA's format (a file name and "
                           f"{len(header) if header_lines else 1} values per line): download it again")
    return header, [row[0] for row in rows], values


def _ensure_celeba(config: DataConfig) -> Path:
    """The celeba/ folder: an existing copy, or torchvision's download where Google Drive allows it."""
    root = data_root(config)
    folder = root / FOLDER
    needed = [folder / IMAGES, folder / ATTRIBUTES, folder / PARTITION]
    if all(path.exists() for path in needed):
        return folder
    fix = (f"download img_align_celeba.zip (unzipped), {ATTRIBUTES} and {PARTITION} from the CelebA page "
           f"(mmlab.ie.cuhk.edu.hk/projects/CelebA.html) into {folder}/, or pass --data-dir with a celeba/ folder")
    if not config.download:
        raise DatasetError(f"CelebA not found in {root} and download is off: {fix}")
    try:
        from torchvision.datasets import CelebA

        CelebA(str(root), split="all", target_type=[], download=True)
    except Exception as err:  # gdown missing, Drive's quota, no network: torchvision raises many kinds
        raise DatasetError(f"CelebA not found in {root} and torchvision could not download it "
                           f"({type(err).__name__}): {fix}") from None
    return folder


def _split_rows(config: DataConfig) -> tuple[Path, list[str], np.ndarray]:
    """(the folder, file names, (N, 2) Male/Smiling values 0/1) of the split's images, in file order."""
    folder = _ensure_celeba(config)
    header, files, attributes = _table(folder / ATTRIBUTES, header_lines=2)
    _, partition_files, partition = _table(folder / PARTITION, header_lines=0)
    missing = [name for name in ATTRIBUTE_COLUMNS if name not in header]
    if missing:
        raise DatasetError(f"{folder / ATTRIBUTES} has no attribute {missing[0]}: download it again")
    if partition_files != files:
        raise DatasetError(f"{folder / ATTRIBUTES} and {folder / PARTITION} list different images: download both again")
    keep = partition[:, 0] == PARTITIONS[config.split]
    values = (attributes[:, [header.index(name) for name in ATTRIBUTE_COLUMNS]] + 1) // 2  # -1/1 -> 0/1
    return folder, [name for name, kept in zip(files, keep) if kept], values[keep]


def concept_labels(config: DataConfig) -> torch.Tensor:
    """(N, 2): each image's male and smiling value (0/1), in the split's item order."""
    return torch.from_numpy(_split_rows(config)[2])


def _build(config: DataConfig) -> Dataset:
    if config.channels not in (None, 3):
        raise DatasetError(f"CelebA images are RGB; got channels={config.channels}: drop --channels or set it to 3")
    size = config.image_size or DEFAULT_SIZE
    if size > CROP:
        raise DatasetError(f"CelebA faces are cropped to {CROP}x{CROP}; got image_size={size}: use {CROP} or less")
    folder, files, values = _split_rows(config)
    # One concept per image, from a generator of its own: the same label for the same image in every run.
    shows_smiling = np.random.default_rng(_SEED).random(len(values)) < 0.5
    concept_label = np.where(shows_smiling, len(CONCEPTS[0].values) + values[:, 1], values[:, 0])
    return CelebAImages([folder / IMAGES / name for name in files], labels_for(config, concept_label), size,
                        photo_flip(config))


register(DatasetInfo("celeba", "CelebA aligned faces, centre 140x140 resized to image_size (default 64); classes: "
                               "female/male 0-1 or not smiling/smiling 2-3, one per image; --data-dir (torchvision's "
                               "layout) or torchvision's download",
                     (3, DEFAULT_SIZE, DEFAULT_SIZE), len(CLASS_NAMES), True, None, _build, class_names=CLASS_NAMES,
                     concepts=CONCEPTS, concept_labels=concept_labels))
