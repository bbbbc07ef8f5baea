"""CIFAR-100: the python archive cifar-100-python.tar.gz, extracted to cifar-100-python/ (downloaded if absent).

Out-of-distribution data for a CIFAR-10 model (the paper's OOD table); 100 fine classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR100

from cdrl.datasets.cifar10 import ensure_cifar, read_cifar_pickle
from cdrl.datasets.common import ImageArrayDataset, check_photo_options, labels_for, photo_flip
from cdrl.datasets.config import DataConfig, DatasetError
from cdrl.datasets.registry import DatasetInfo, register

_FILES = {"train": CIFAR100.train_list[0][0], "test": CIFAR100.test_list[0][0]}  # "train", "test"
_META = CIFAR100.meta["filename"]  # "meta"


def _read_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    content = read_cifar_pickle(path, "CIFAR-100", CIFAR100.filename)
    try:
        data = np.asarray(content.get("data"))
        labels = np.asarray(content.get("fine_labels"), dtype=np.int64).reshape(-1)
    except (ValueError, TypeError, OverflowError) as err:
        raise DatasetError(f"CIFAR-100 file {path} is not a split of the python archive ({err}): "
                           f"re-extract {CIFAR100.filename}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(f"CIFAR-100 file {path} is not a split of the python archive (expected 'data' uint8 "
                           f"(N, 3072) and N 'fine_labels'; got data {data.dtype} {data.shape}, {len(labels)} "
                           f"labels): re-extract {CIFAR100.filename}")
    if len(labels) and (labels.min() < 0 or labels.max() > 99):
        raise DatasetError(f"CIFAR-100 file {path} has labels outside 0..99: re-extract {CIFAR100.filename}")
    return data, labels


def _build_cifar100(config: DataConfig) -> Dataset:
    check_photo_options(config, "cifar100")
    folder = ensure_cifar(config, CIFAR100, [*_FILES.values(), _META], "CIFAR-100")
    data, labels = _read_split(folder / _FILES[config.split])
    names = read_cifar_pickle(folder / _META, "CIFAR-100", CIFAR100.filename).get("fine_label_names", [])
    classes = [name.decode("latin1") if isinstance(name, bytes) else name for name in names]
    return ImageArrayDataset(chunks=[data], labels=labels_for(config, labels), image_shape=(3, 32, 32),
                             horizontal_flip=photo_flip(config), classes=classes)


register(DatasetInfo("cifar100", "CIFAR-100 32x32 RGB (fine labels), 50k train / 10k test; downloaded or "
                                 "--data-dir (out-of-distribution data for CIFAR-10)",
                     (3, 32, 32), 100, True, None, _build_cifar100))
