"""Datasets for CDRL training and evaluation behind one small interface.

``build_dataset(DataConfig(...))`` returns a map-style ``torch.utils.data.Dataset``
whose items are ``(x, label)``:

* image sets (``cifar10``, ``imagenet32``, ``digits``): ``x`` is a float32 CHW
  tensor in [-1, 1];
* 2-D toy densities (``toy-*``): ``x`` is a float32 tensor of shape (2,) in the
  density's own coordinates, NOT in [-1, 1] (the checkerboard spans [-8, 8]² at
  the default ``toy_scale`` of 4, as in the published toy example).

``label`` is a Python int: the 0-based class index when
``DataConfig.class_conditional`` is true, else ``UNCONDITIONAL_LABEL`` (-1).
Training code maps a label ``c`` to embedding index ``c + 1`` (index 0 is the
null class), so unconditional items land on the null class with no special case.

``DATASETS`` lists every dataset (for the CLI); ``dataset_info`` and
``item_shape`` describe them without loading anything; ``infinite_batches`` is
the seeded, DDP-aware, resumable batch stream used by training; ``toy_sample``,
``toy_in_support`` and ``toy_mode_index`` give the exact toy densities that
evaluation scores samples against.
"""

from __future__ import annotations

import math
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate
from torchvision import transforms
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import download_and_extract_archive

from cdrl.errors import CdrlBenchError

UNCONDITIONAL_LABEL = -1
SPLITS = ("train", "test")
DEFAULT_DATA_DIR = Path("data")
# Which downsampled-ImageNet files imagenet32 reads (DataConfig.imagenet_source).
ImagenetSource = Literal["npz32", "npz64-resized"]


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
    split: str = "train"
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
    image_size: int | None = None
    # Image channels. None: 3 for cifar10/imagenet32 (the only value they accept),
    # 1 for digits (3 replicates the gray channel). Ignored by toy sets.
    channels: int | None = None
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
    toy_scale: float = 4.0
    # Toy sets: number of points drawn once per split.
    toy_size: int = 50_000
    # Toy sets: seed of that one draw (train and test use different streams).
    toy_seed: int = 1


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset, available without loading it."""

    name: str
    description: str
    shape: tuple[int, ...]  # item shape at the default image_size/channels
    num_classes: int
    is_image: bool
    num_modes: int | None  # toy sets: modes that toy_mode_index tells apart
    build: Callable[[DataConfig], Dataset] = field(repr=False, compare=False)


# ---------------------------------------------------------------------------
# Dataset classes


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


def _labels_for(config: DataConfig, class_labels: np.ndarray) -> np.ndarray:
    if config.class_conditional:
        return class_labels.astype(np.int64)
    return np.full(len(class_labels), UNCONDITIONAL_LABEL, dtype=np.int64)


def _data_root(config: DataConfig) -> Path:
    return Path(config.data_dir if config.data_dir is not None else DEFAULT_DATA_DIR).resolve()


def _check_photo_options(config: DataConfig, name: str) -> None:
    """CIFAR-10 and ImageNet32 are used at their native 32x32 RGB only (FID is comparable only there)."""
    if config.image_size not in (None, 32):
        raise DatasetError(f"{name} images are 32x32; got image_size={config.image_size}: drop --image-size or set it to 32")
    if config.channels not in (None, 3):
        raise DatasetError(f"{name} images are RGB; got channels={config.channels}: drop --channels or set it to 3")


def _photo_flip(config: DataConfig) -> bool:
    enabled = True if config.horizontal_flip is None else config.horizontal_flip
    return enabled and config.split == "train"


# ---------------------------------------------------------------------------
# CIFAR-10: the python archive cifar-10-python.tar.gz, extracted to cifar-10-batches-py/

CIFAR10_FOLDER = CIFAR10.base_folder  # "cifar-10-batches-py"
_CIFAR10_FILES = {
    "train": [name for name, _md5 in CIFAR10.train_list],
    "test": [name for name, _md5 in CIFAR10.test_list],
}
_CIFAR10_META = CIFAR10.meta["filename"]  # "batches.meta"


def _read_cifar_pickle(path: Path) -> dict:
    # latin1 decodes the Python 2 pickles of the official archive; keys are then
    # normalised so files pickled by Python 3 (bytes keys) read the same way.
    try:
        with path.open("rb") as file:
            content = pickle.load(file, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise DatasetError(f"cannot read CIFAR-10 file {path} ({err}): re-extract cifar-10-python.tar.gz") from err
    if not isinstance(content, dict):
        raise DatasetError(f"CIFAR-10 file {path} holds no dict: re-extract cifar-10-python.tar.gz")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    content = _read_cifar_pickle(path)
    data = np.asarray(content.get("data"))
    labels = np.asarray(content.get("labels"), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(
            f"CIFAR-10 file {path} is not a batch of the python archive (expected 'data' uint8 (N, 3072) "
            f"and N 'labels'; got data {data.dtype} {data.shape}, {len(labels)} labels): re-extract cifar-10-python.tar.gz"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"CIFAR-10 file {path} has labels outside 0..9: re-extract cifar-10-python.tar.gz")
    return data, labels


def _cifar_files_present(folder: Path) -> bool:
    names = _CIFAR10_FILES["train"] + _CIFAR10_FILES["test"] + [_CIFAR10_META]
    return all((folder / name).is_file() for name in names)


def _ensure_cifar10(config: DataConfig) -> Path:
    """The cifar-10-batches-py/ folder: an existing copy (accepted by structure) or a fresh, md5-verified download."""
    root = _data_root(config)
    folder = root / CIFAR10_FOLDER
    if _cifar_files_present(folder):
        return folder
    fix = f"pass --data-dir pointing at a folder containing {CIFAR10_FOLDER}/ (extracted from {CIFAR10.filename})"
    if not config.download:
        raise DatasetError(f"CIFAR-10 not found in {root} and download is off: {fix}, or allow download")
    try:
        # torchvision's URL and archive md5: a corrupted or tampered download fails here.
        download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise DatasetError(f"CIFAR-10 not found in {root} and download failed (no network?): {fix}") from err
    if not _cifar_files_present(folder):
        raise DatasetError(f"CIFAR-10 download to {root} did not produce {CIFAR10_FOLDER}/: {fix}")
    return folder


def _build_cifar10(config: DataConfig) -> Dataset:
    _check_photo_options(config, "cifar10")
    folder = _ensure_cifar10(config)
    batches = [_read_cifar_batch(folder / name) for name in _CIFAR10_FILES[config.split]]
    names = _read_cifar_pickle(folder / _CIFAR10_META).get("label_names", [])
    classes = [name.decode("latin1") if isinstance(name, bytes) else name for name in names]
    return ImageArrayDataset(
        chunks=[np.concatenate([data for data, _ in batches])],
        labels=_labels_for(config, np.concatenate([labels for _, labels in batches])),
        image_shape=(3, 32, 32),
        horizontal_flip=_photo_flip(config),
        classes=classes,
    )


# ---------------------------------------------------------------------------
# ImageNet 32x32: the downsampled npz batches (login required, so never downloaded).
# DataConfig.imagenet_source picks the 32x32 batches as they are ("npz32") or the 64x64
# batches resized as the published CDRL code resizes them ("npz64-resized").

# The published code's test transform before ToTensor, applied to PIL images (ImageNetKaggle).
_PUBLISHED_RESIZE = transforms.Compose([transforms.Resize(32, antialias=True), transforms.CenterCrop(32)])


def resize_as_published(pixels: Tensor) -> Tensor:
    """uint8 (3, H, W) image -> uint8 (3, 32, 32) by Resize(32) + CenterCrop(32) of its PIL image.

    PIL, as in the published code: torchvision's antialiased resize of a uint8 tensor
    rounds differently (64 -> 32: off by one in about one pixel value of six).
    """
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    return torch.from_numpy(np.array(_PUBLISHED_RESIZE(image))).permute(2, 0, 1)


@dataclass(frozen=True)
class _ImagenetLayout:
    """Where one imagenet_source's npz files lie under the data folder, as their zips unpack."""

    name: str  # in messages
    side: int  # of the stored images
    train_folders: str  # glob of the folder(s) holding train_data_batch_N.npz
    val_folder: str  # holds val_data.npz
    archives: str  # what to download from image-net.org
    resize: Callable[[Tensor], Tensor] | None  # to 32x32, per image when it is read


_IMAGENET_LAYOUTS: dict[str, _ImagenetLayout] = {
    "npz32": _ImagenetLayout("ImageNet32", 32, "Imagenet32_train_npz", "Imagenet32_val_npz",
                             "Imagenet32_train_npz.zip and Imagenet32_val_npz.zip", resize=None),
    # The 64x64 train set comes as two zips, unpacking to Imagenet64_train_part1_npz/ (batches
    # 1-5) and Imagenet64_train_part2_npz/ (6-10); one merged Imagenet64_train_npz/ works too.
    "npz64-resized": _ImagenetLayout("ImageNet64", 64, "Imagenet64_train*_npz", "Imagenet64_val_npz",
                                     "Imagenet64_train_part1_npz.zip, Imagenet64_train_part2_npz.zip and "
                                     "Imagenet64_val_npz.zip", resize=resize_as_published),
}  # fmt: skip
IMAGENET_TRAIN_BATCHES = 10
_IMAGENET_TRAIN_PATTERN = re.compile(r"train_data_batch_(\d+)\.npz")
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, 22 skipped bytes, name and extra lengths


def _npz_array(path: Path, key: str) -> np.ndarray:
    """Array ``key`` of an .npz file: memory-mapped when stored uncompressed (np.savez), else read into memory."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
        with archive.open(info) as member:
            if info.compress_type != zipfile.ZIP_STORED:
                return np.lib.format.read_array(member)
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(member)
            npy_header_size = member.tell()
    with path.open("rb") as raw:
        raw.seek(info.header_offset)
        signature, name_size, extra_size = _ZIP_LOCAL_HEADER.unpack(raw.read(_ZIP_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise DatasetError(f"{path} is not a valid npz (zip) file: re-extract it from its downsampled-ImageNet zip")
    offset = info.header_offset + _ZIP_LOCAL_HEADER.size + name_size + extra_size + npy_header_size
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")


def _imagenet_files(config: DataConfig, layout: _ImagenetLayout) -> list[Path]:
    root = _data_root(config)
    if config.split == "test":
        files = [root / layout.val_folder / "val_data.npz"]
        expected = f"{layout.val_folder}/val_data.npz"
    else:
        numbered = sorted(
            (int(match.group(1)), path)
            for folder in root.glob(layout.train_folders)
            if folder.is_dir()
            for path in folder.iterdir()
            if (match := _IMAGENET_TRAIN_PATTERN.fullmatch(path.name))
        )
        numbers = [number for number, _ in numbered]
        duplicated = sorted({number for number in numbers if numbers.count(number) > 1})
        if duplicated:
            raise DatasetError(
                f"{layout.name} train_data_batch_{duplicated[0]}.npz is in more than one {layout.train_folders} "
                f"folder of {root}: keep one copy of each batch"
            )
        files = [path for _, path in numbered]
        expected = f"{layout.train_folders}/train_data_batch_1.npz ... _{IMAGENET_TRAIN_BATCHES}.npz"
    if not files or not all(path.is_file() for path in files):
        raise DatasetError(
            f"{layout.name} {config.split} split not found in {root}: download {layout.archives} from "
            f"image-net.org (login required), unzip them so that {root}/{expected} "
            f"exist, or pass --data-dir pointing at the folder that holds them"
        )
    if config.split == "train" and len(files) != IMAGENET_TRAIN_BATCHES:
        # A partial copy is usable for smoke runs but is not the benchmark's training set.
        warnings.warn(
            f"{layout.name} train set in {root} has {len(files)} of {IMAGENET_TRAIN_BATCHES} batch files",
            stacklevel=3,
        )
    return files


def _read_imagenet_file(path: Path, layout: _ImagenetLayout) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, 3*side*side) CHW-planar rows, 0-based labels) of one npz batch."""
    try:
        with np.load(path) as npz:
            labels = np.asarray(npz["labels"], dtype=np.int64)
        data = _npz_array(path, "data")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise DatasetError(f"cannot read {layout.name} file {path} ({err}): re-extract it from {layout.archives}") from err
    row_size = 3 * layout.side * layout.side
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row_size or len(labels) != len(data):
        raise DatasetError(
            f"{path} is not an {layout.name} batch (expected 'data' uint8 (N, {row_size}) and N 'labels'; "
            f"got data {data.dtype} {data.shape}, {len(labels)} labels): check it came from {layout.archives}"
        )
    if len(labels) and (labels.min() < 1 or labels.max() > 1000):
        raise DatasetError(f"{path} has labels outside 1..1000 (the files use 1-based labels)")
    return data, labels - 1


def _build_imagenet32(config: DataConfig) -> Dataset:
    _check_photo_options(config, "imagenet32")
    layout = _IMAGENET_LAYOUTS[config.imagenet_source]
    batches = [_read_imagenet_file(path, layout) for path in _imagenet_files(config, layout)]
    # The train batches' 'mean' image is not used: images are scaled to [-1, 1] like CIFAR-10.
    return ImageArrayDataset(
        chunks=[data for data, _ in batches],
        labels=_labels_for(config, np.concatenate([labels for _, labels in batches])),
        image_shape=(3, layout.side, layout.side),
        horizontal_flip=_photo_flip(config),
        classes=[str(index) for index in range(1000)],
        resize=layout.resize,
    )


# ---------------------------------------------------------------------------
# scikit-learn digits: 1797 8x8 gray images, intensities 0..16, classes 0..9

DIGITS_DEFAULT_SIZE = 16
DIGITS_TEST_EVERY = 5  # images whose index is a multiple of 5 form the test split (360 of 1797)


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
    labels = torch.from_numpy(_labels_for(config, bunch.target[keep]))
    return TensorPairDataset(images, labels, classes=[str(digit) for digit in range(10)])


# ---------------------------------------------------------------------------
# 2-D toy densities. Parameters are in units of toy_scale (default 4):
#   checkerboard: the 8 unit squares of the published toy example times scale, uniform: [-8, 8]²
#   8gaussians:   8 equal-weight isotropic Gaussians, centres on a circle of radius
#                 1.5·scale (6) at angles k·45°, std 0.125·scale (0.5)
#   2rings:       2 equal-weight rings of radius 0.75·scale and 1.5·scale (3, 6), uniform
#                 angle, Gaussian radial spread with std 0.0625·scale (0.25)
#   quadrants:    the checkerboard's points, labelled by quadrant (2 squares each)
# Support for evaluation: inside a square; within GAUSSIAN_SUPPORT_STDS std of a centre
# (holds 1 - exp(-4.5) ≈ 98.9% of the mass); within RING_SUPPORT_STDS std of a ring
# radius (≈ 99.7%).

# (xmin, xmax, ymin, ymax) as published; (-1, 0, -1, -2) has ymin > ymax there and its
# sampler draws y in [-2, -1], so it is stored as (-1, 0, -2, -1): the same square.
CHECKERBOARD_SQUARES = (
    (1, 2, 0, 1), (0, 1, 1, 2), (0, 1, -1, 0), (1, 2, -2, -1),
    (-1, 0, -2, -1), (-2, -1, -1, 0), (-1, 0, 0, 1), (-2, -1, 1, 2),
)  # fmt: skip
GAUSSIAN_RADIUS = 1.5
GAUSSIAN_STD = 0.125
RING_RADII = (0.75, 1.5)
RING_STD = 0.0625
GAUSSIAN_SUPPORT_STDS = 3.0
RING_SUPPORT_STDS = 3.0
TOY_CLASS_NAMES = {
    "toy-checkerboard": [f"square{index}" for index in range(len(CHECKERBOARD_SQUARES))],
    "toy-8gaussians": [f"gaussian{index}" for index in range(8)],
    "toy-2rings": ["inner", "outer"],
    # counter-clockwise from x > 0, y > 0
    "toy-quadrants": ["x+y+", "x-y+", "x-y-", "x+y-"],
}


def _squares(scale: float) -> Tensor:
    return torch.tensor(CHECKERBOARD_SQUARES, dtype=torch.float32) * scale


def _gaussian_centres(scale: float) -> Tensor:
    angles = torch.arange(8, dtype=torch.float32) * (math.pi / 4)
    return torch.stack([angles.cos(), angles.sin()], dim=1) * (GAUSSIAN_RADIUS * scale)


def _quadrant(points: Tensor) -> Tensor:
    right, up = points[:, 0] >= 0, points[:, 1] >= 0
    return torch.where(up, torch.where(right, 0, 1), torch.where(right, 3, 2))


def _check_toy_name(name: str) -> None:
    if name not in TOY_CLASS_NAMES:
        raise DatasetError(f"unknown toy density {name!r}: choose one of {', '.join(TOY_CLASS_NAMES)}")


def toy_sample(name: str, n: int, generator: torch.Generator | None = None, scale: float = 4.0) -> tuple[Tensor, Tensor]:
    """Fresh points (n, 2) of toy density ``name`` and their class labels (n,)."""
    _check_toy_name(name)
    if name in ("toy-checkerboard", "toy-quadrants"):
        squares = _squares(scale)
        index = torch.randint(len(squares), (n,), generator=generator)
        low, high = squares[index][:, [0, 2]], squares[index][:, [1, 3]]
        points = low + (high - low) * torch.rand(n, 2, generator=generator)
        return points, (_quadrant(points) if name == "toy-quadrants" else index)
    if name == "toy-8gaussians":
        index = torch.randint(8, (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator) * (GAUSSIAN_STD * scale)
        return _gaussian_centres(scale)[index] + noise, index
    index = torch.randint(len(RING_RADII), (n,), generator=generator)
    radius = torch.tensor(RING_RADII)[index] * scale + torch.randn(n, generator=generator) * (RING_STD * scale)
    angle = torch.rand(n, generator=generator) * (2 * math.pi)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1), index


def toy_mode_index(name: str, points: Tensor, scale: float = 4.0) -> Tensor:
    """Mode of each point (n, 2): square (both checkerboard sets), Gaussian or ring index; -1 outside the support."""
    _check_toy_name(name)
    points = points.float()
    if name in ("toy-checkerboard", "toy-quadrants"):
        squares = _squares(scale)
        x, y = points[:, :1], points[:, 1:]
        inside = (x >= squares[:, 0]) & (x <= squares[:, 1]) & (y >= squares[:, 2]) & (y <= squares[:, 3])
        return torch.where(inside.any(dim=1), inside.int().argmax(dim=1), -1)
    if name == "toy-8gaussians":
        distance, index = torch.cdist(points, _gaussian_centres(scale)).min(dim=1)
        return torch.where(distance <= GAUSSIAN_SUPPORT_STDS * GAUSSIAN_STD * scale, index, -1)
    offset, index = (points.norm(dim=1, keepdim=True) - torch.tensor(RING_RADII) * scale).abs().min(dim=1)
    return torch.where(offset <= RING_SUPPORT_STDS * RING_STD * scale, index, -1)


def toy_in_support(name: str, points: Tensor, scale: float = 4.0) -> Tensor:
    """Whether each point (n, 2) lies in the support of toy density ``name`` (bool, n)."""
    return toy_mode_index(name, points, scale) >= 0


def _build_toy(config: DataConfig) -> Dataset:
    if config.toy_size < 1:
        raise DatasetError(f"toy_size must be positive; got {config.toy_size}")
    # One fixed draw per split; train and test use distinct generator streams.
    generator = torch.Generator().manual_seed(2 * config.toy_seed + SPLITS.index(config.split))
    points, labels = toy_sample(config.dataset, config.toy_size, generator, config.toy_scale)
    return TensorPairDataset(
        points,
        torch.from_numpy(_labels_for(config, labels.numpy())),
        classes=TOY_CLASS_NAMES[config.dataset],
    )


# ---------------------------------------------------------------------------
# Registry and the public entry points

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("cifar10", "CIFAR-10 32x32 RGB, 50k train / 10k test; downloaded or --data-dir",
                    (3, 32, 32), 10, True, None, _build_cifar10),
        DatasetInfo("imagenet32", "ImageNet 32x32 RGB (downsampled npz batches, see imagenet_source), "
                    "1.28M train / 50k val; --data-dir",
                    (3, 32, 32), 1000, True, None, _build_imagenet32),
        DatasetInfo("digits", "scikit-learn digits, 8x8 gray upsampled to image_size (default 16), 1437 train / 360 test",
                    (1, DIGITS_DEFAULT_SIZE, DIGITS_DEFAULT_SIZE), 10, True, None, _build_digits),
        DatasetInfo("toy-checkerboard", "2-D checkerboard of the published toy example, 8 squares on [-8, 8]²",
                    (2,), 8, False, 8, _build_toy),
        DatasetInfo("toy-8gaussians", "2-D mixture of 8 Gaussians on a circle of radius 6, std 0.5",
                    (2,), 8, False, 8, _build_toy),
        DatasetInfo("toy-2rings", "2-D pair of rings of radius 3 and 6, radial std 0.25",
                    (2,), 2, False, 2, _build_toy),
        DatasetInfo("toy-quadrants", "2-D checkerboard labelled by quadrant (4 classes of 2 squares)",
                    (2,), 4, False, 8, _build_toy),
    )
}  # fmt: skip


def reference_name(config: DataConfig) -> str:
    """The name of a dataset as read under ``config``: what keys its cached reference statistics."""
    if config.imagenet_source != "npz32":
        return f"{config.dataset}-{config.imagenet_source}"
    return config.dataset


def dataset_info(name: str) -> DatasetInfo:
    """Facts about dataset ``name``; DatasetError listing the known names if unknown."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def item_shape(config: DataConfig) -> tuple[int, ...]:
    """Shape of one ``x`` that ``build_dataset(config)`` yields, without loading anything."""
    info = dataset_info(config.dataset)
    if not info.is_image:
        return info.shape
    channels, size, _ = info.shape
    return (config.channels or channels, config.image_size or size, config.image_size or size)


def build_dataset(config: DataConfig) -> Dataset:
    """The dataset ``config`` names, items ``(x, label)`` as described in the module docstring."""
    info = dataset_info(config.dataset)
    if config.split not in SPLITS:
        raise DatasetError(f"unknown split {config.split!r}: choose one of {', '.join(SPLITS)}")
    if config.imagenet_source not in _IMAGENET_LAYOUTS:
        raise DatasetError(f"unknown imagenet_source {config.imagenet_source!r}: "
                           f"choose one of {', '.join(_IMAGENET_LAYOUTS)}")
    if config.imagenet_source != "npz32" and config.dataset != "imagenet32":
        raise DatasetError(f"imagenet_source={config.imagenet_source!r} applies to imagenet32 only: "
                           f"drop it for {config.dataset}")
    return info.build(config)


# ---------------------------------------------------------------------------
# Infinite, seeded, DDP-aware batches


def batches_per_epoch(dataset_size: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches one rank draws per epoch (DistributedSampler and batching both drop the remainder)."""
    return (dataset_size // world_size) // batch_size


def _batch_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(parts).generate_state(1)[0])


class _ResumableBatches(Sampler):
    """One rank's endless batches, epoch after epoch from ``start_iteration``, each tagged with its own seed."""

    def __init__(self, sampler: DistributedSampler, batch_size: int, seed: int, rank: int, start_iteration: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.start_iteration = start_iteration

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        per_epoch = len(self.sampler) // self.batch_size
        epoch, first_batch = divmod(self.start_iteration, per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for batch in range(first_batch, per_epoch):
                start = batch * self.batch_size
                yield _batch_seed(self.seed, self.rank, epoch, batch), indices[start : start + self.batch_size]
            epoch, first_batch = epoch + 1, 0


class _BatchFetch(Dataset):
    """Fetches and collates one tagged batch.

    Items with random transforms (the flips) are drawn with the global torch RNG
    seeded from the batch's tag, so they depend only on (seed, rank, epoch,
    batch), not on worker count or on how many batches were drawn before, and
    the caller's own RNG stream is left untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    # DataLoader calls __getitems__ with whatever the batch sampler yields.
    def __getitems__(self, tagged_batch: tuple[int, list[int]]) -> tuple[Tensor, Tensor]:
        batch_seed, indices = tagged_batch
        if isinstance(self.dataset, TensorPairDataset):  # no random transforms
            return self.dataset.take(indices)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed)
            x, labels = default_collate([self.dataset[index] for index in indices])
        return x, labels


def _collated(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch


def infinite_batches(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_iteration: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless ``(x, labels)`` batches of ``batch_size`` items for one DDP rank.

    Epoch ``e`` shuffles with ``DistributedSampler(seed=seed).set_epoch(e)`` and
    drops incomplete batches, so every epoch has
    ``P = batches_per_epoch(len(dataset), batch_size, world_size)`` batches per
    rank. Resuming: pass the number of batches this rank has already consumed
    as ``start_iteration = i``; the stream restarts at epoch ``i // P``, batch
    ``i % P`` and yields exactly the batches (indices and flips) the uninterrupted
    stream would have yielded next, for the same seed, rank, world_size and
    batch_size, whatever ``num_workers`` is.
    """
    if not 0 <= rank < world_size:
        raise DatasetError(f"rank {rank} is outside world_size {world_size}")
    per_epoch = batches_per_epoch(len(dataset), batch_size, world_size)
    if per_epoch == 0:
        raise DatasetError(
            f"dataset of {len(dataset)} items gives no full batch of {batch_size} on each of {world_size} ranks: "
            f"lower the batch size"
        )
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    # One loader for the whole run: its workers live as long as the stream.
    loader = DataLoader(
        _BatchFetch(dataset),
        batch_sampler=_ResumableBatches(sampler, batch_size, seed, rank, start_iteration),
        collate_fn=_collated,  # _BatchFetch already collates
        num_workers=num_workers,
        pin_memory=pin_memory,
        # Workers' base seed comes from here instead of the global RNG (flips are seeded per batch anyway).
        generator=torch.Generator().manual_seed(_batch_seed(seed, rank)),
    )
    # Not a generator function, so the checks above raise at the call; pin_memory turns tuples into lists.
    return ((x, labels) for x, labels in loader)
