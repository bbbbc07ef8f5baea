"""ImageNet 32x32: the downsampled npz batches (login required, so never downloaded).

DataConfig.imagenet_source picks the 32x32 batches as they are ("npz32") or the 64x64
batches resized as the published CDRL code resizes them ("npz64-resized").
"""

from __future__ import annotations

import re
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from cdrl.datasets.common import ImageArrayDataset, check_photo_options, data_root, labels_for, photo_flip
from cdrl.datasets.config import IMAGENET_SOURCES, DataConfig, DatasetError
from cdrl.datasets.registry import DatasetInfo, register

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
assert tuple(_IMAGENET_LAYOUTS) == IMAGENET_SOURCES, "one layout per DataConfig.imagenet_source value"
IMAGENET_TRAIN_BATCHES = 10
_IMAGENET_TRAIN_PATTERN = re.compile(r"train_data_batch_(\d+)\.npz")
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, 22 skipped bytes, name and extra lengths


def _npz_array(path: Path, key: str) -> np.ndarray:
    """Array ``key`` of an .npz file: memory-mapped when stored uncompressed (np.savez), else read into memory."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
        with archive.open(info) as member:
            if info.compress_type != zipfile.ZIP_STORED:
                return np.lib.format.read_array(member, allow_pickle=False)
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(member)
            if dtype.hasobject:  # object arrays are pickles; never unpickled from a data file
                raise DatasetError(f"{path} stores {key} as Python objects (a pickle), not numbers: "
                                   "re-extract it from its downsampled-ImageNet zip")
            npy_header_size = member.tell()
    with path.open("rb") as raw:
        raw.seek(info.header_offset)
        signature, name_size, extra_size = _ZIP_LOCAL_HEADER.unpack(raw.read(_ZIP_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise DatasetError(f"{path} is not a valid npz (zip) file: re-extract it from its downsampled-ImageNet zip")
    offset = info.header_offset + _ZIP_LOCAL_HEADER.size + name_size + extra_size + npy_header_size
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")


def _imagenet_files(config: DataConfig, layout: _ImagenetLayout) -> list[Path]:
    root = data_root(config)
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
        with np.load(path, allow_pickle=False) as npz:  # an object array would be a pickle: refused
            labels = np.asarray(npz["labels"], dtype=np.int64)
        data = _npz_array(path, "data")
    except DatasetError:  # a ValueError too, already worded
        raise
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


IMAGENET_CLASS_NAMES = tuple(str(index) for index in range(1000))


def _build_imagenet32(config: DataConfig) -> Dataset:
    check_photo_options(config, "imagenet32")
    layout = _IMAGENET_LAYOUTS[config.imagenet_source]
    batches = [_read_imagenet_file(path, layout) for path in _imagenet_files(config, layout)]
    # The train batches' 'mean' image is not used: images are scaled to [-1, 1] like CIFAR-10.
    return ImageArrayDataset(
        chunks=[data for data, _ in batches],
        labels=labels_for(config, np.concatenate([labels for _, labels in batches])),
        image_shape=(3, layout.side, layout.side),
        horizontal_flip=photo_flip(config),
        classes=IMAGENET_CLASS_NAMES,
        resize=layout.resize,
    )


def _reference_name(config: DataConfig) -> str:
    # Another image pipeline is another reference: a non-default source gets its own statistics,
    # while the npz32 statistics keep the plain name they were cached under before the option.
    if config.imagenet_source != "npz32":
        return f"{config.dataset}-{config.imagenet_source}"
    return config.dataset


register(DatasetInfo("imagenet32", "ImageNet 32x32 RGB (downsampled npz batches, see imagenet_source), "
                     "1.28M train / 50k val; --data-dir",
                     (3, 32, 32), 1000, True, None, _build_imagenet32, class_names=IMAGENET_CLASS_NAMES,
                     takes_imagenet_source=True, reference_name=_reference_name))
