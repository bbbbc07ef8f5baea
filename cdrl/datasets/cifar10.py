"""CIFAR-10: the python archive cifar-10-python.tar.gz, extracted to cifar-10-batches-py/ (downloaded if absent)."""

from __future__ import annotations

import codecs
import importlib
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import download_and_extract_archive

from cdrl.datasets.common import ImageArrayDataset, check_photo_options, data_root, labels_for, photo_flip
from cdrl.datasets.config import DataConfig, DatasetError
from cdrl.datasets.registry import DatasetInfo, register

CIFAR10_FOLDER = CIFAR10.base_folder  # "cifar-10-batches-py"
_CIFAR10_FILES = {
    "train": [name for name, _md5 in CIFAR10.train_list],
    "test": [name for name, _md5 in CIFAR10.test_list],
}
_CIFAR10_META = CIFAR10.meta["filename"]  # "batches.meta"


def _numpy_function(module: str, name: str) -> Any:
    """``numpy._core.MODULE.NAME`` (NumPy 2) or ``numpy.core.MODULE.NAME`` (NumPy 1), without NumPy 2's warning."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except (ImportError, AttributeError):  # NumPy 1 before 1.26
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


#: Everything a CIFAR-10 pickle may name: NumPy array reconstruction (pickled by Python 2 as
#: numpy.core.*, by NumPy 2 as numpy._core.*; protocol 5 uses _frombuffer) and the builtins
#: Python 3 uses for bytes in protocols 0-2. Lists, dicts, str and int need no global.
_CIFAR_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _numpy_function("multiarray", "_reconstruct")
       for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _numpy_function("numeric", "_frombuffer")
       for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    ("builtins", "bytes"): bytes,
}


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        shown = f"{module}.{name}"
        if not shown.isprintable() or len(shown) > 80:  # the message stays one readable line
            shown = ascii(shown[:80])
        super().__init__(shown)
        self.shown = shown


class _CifarUnpickler(pickle.Unpickler):
    """Reads NumPy arrays, lists, dicts, strings and numbers; any other global (os.system, builtins.exec, ...)
    is refused before it is imported, so a crafted batch file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # Python 2's name, also in protocols 0-2
        found = _CIFAR_PICKLE_GLOBALS.get((module, name))
        if found is None:
            raise _RefusedGlobal(module, name)
        return found


def read_cifar_pickle(path: Path, name: str = "CIFAR-10", archive: str = CIFAR10.filename) -> dict:
    """A dict pickled in a CIFAR python archive (CIFAR-10 or CIFAR-100), read without running code."""
    # latin1 decodes the Python 2 pickles of the official archive; keys are then
    # normalised so files pickled by Python 3 (bytes keys) read the same way.
    try:
        with path.open("rb") as file:
            content = _CifarUnpickler(file, encoding="latin1").load()
    except _RefusedGlobal as err:
        raise DatasetError(f"{path} tries to load {err.shown}: not a {name} batch; delete {path.parent} and "
                           "download again") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RecursionError) as err:
        raise DatasetError(f"cannot read {name} file {path} ({err}): re-extract {archive}") from err
    if not isinstance(content, dict):
        raise DatasetError(f"{name} file {path} holds no dict: re-extract {archive}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    content = read_cifar_pickle(path)
    try:
        data = np.asarray(content.get("data"))
        labels = np.asarray(content.get("labels"), dtype=np.int64).reshape(-1)
    except (ValueError, TypeError, OverflowError) as err:
        raise DatasetError(f"CIFAR-10 file {path} is not a batch of the python archive ({err}): "
                           "re-extract cifar-10-python.tar.gz") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DatasetError(
            f"CIFAR-10 file {path} is not a batch of the python archive (expected 'data' uint8 (N, 3072) "
            f"and N 'labels'; got data {data.dtype} {data.shape}, {len(labels)} labels): re-extract cifar-10-python.tar.gz"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"CIFAR-10 file {path} has labels outside 0..9: re-extract cifar-10-python.tar.gz")
    return data, labels


def ensure_cifar(config: DataConfig, archive: type[CIFAR10], names: list[str], name: str) -> Path:
    """The extracted folder of a CIFAR python archive (torchvision's ``archive`` class: CIFAR10 or CIFAR100)
    holding ``names``: an existing copy (accepted by structure) or a fresh, md5-verified download."""
    root = data_root(config)
    folder = root / archive.base_folder
    if all((folder / file).is_file() for file in names):
        return folder
    fix = f"pass --data-dir pointing at a folder containing {archive.base_folder}/ (extracted from {archive.filename})"
    if not config.download:
        raise DatasetError(f"{name} not found in {root} and download is off: {fix}, or allow download")
    created = not root.exists()
    try:
        # torchvision's URL and archive md5: a corrupted or tampered download fails here.
        download_and_extract_archive(archive.url, str(root), filename=archive.filename, md5=archive.tgz_md5)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        if created:  # the folder the download made, with its partial archive: a failed command leaves nothing
            shutil.rmtree(root, ignore_errors=True)
        raise DatasetError(f"{name} not found in {root} and download failed (no network?): {fix}") from err
    if not all((folder / file).is_file() for file in names):
        raise DatasetError(f"{name} download to {root} did not produce {archive.base_folder}/: {fix}")
    return folder


def _build_cifar10(config: DataConfig) -> Dataset:
    check_photo_options(config, "cifar10")
    folder = ensure_cifar(config, CIFAR10, _CIFAR10_FILES["train"] + _CIFAR10_FILES["test"] + [_CIFAR10_META],
                          "CIFAR-10")
    batches = [_read_cifar_batch(folder / name) for name in _CIFAR10_FILES[config.split]]
    names = read_cifar_pickle(folder / _CIFAR10_META).get("label_names", [])
    classes = [name.decode("latin1") if isinstance(name, bytes) else name for name in names]
    return ImageArrayDataset(
        chunks=[np.concatenate([data for data, _ in batches])],
        labels=labels_for(config, np.concatenate([labels for _, labels in batches])),
        image_shape=(3, 32, 32),
        horizontal_flip=photo_flip(config),
        classes=classes,
    )


register(DatasetInfo("cifar10", "CIFAR-10 32x32 RGB, 50k train / 10k test; downloaded or --data-dir",
                     (3, 32, 32), 10, True, None, _build_cifar10))
