"""Reference statistics (mu, sigma and a capped feature subset for KID), cached per key.

A key is (dataset, split, backend, mode, weights sha256, number of images); its file is
``<cache>/reference-stats/<key filename>.npz``, written atomically (temporary file in the
same directory, then ``os.replace``), so a crash never leaves a truncated cache entry.

Bundled reference features: for a data set that ships with a package (scikit-learn's digits)
the project ships the Inception features of its reference split under the same key
(``cdrl/evaluation/reference_features/``, written by ``python -m tools.bundle_reference_features``),
as clean-fid and torch-fidelity publish statistics of their data sets. On a cache miss the
statistics are computed from them, exactly as from freshly extracted features, and cached:
a fresh machine's first digits FID then reads no image (minutes of CPU Inception saved).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cdrl.evaluation.backends import DEFAULT_BACKEND
from cdrl.evaluation.errors import EvaluationError
from cdrl.evaluation.backends.base import ExtractorSpec
from cdrl.evaluation.extractors import extract_features, resolve_extractor
from cdrl.evaluation.images import ImageArray, as_uint8_nchw
from cdrl.evaluation.inception import FEATURE_DIM
from cdrl.evaluation.statistics import feature_statistics
from cdrl.evaluation.weights import cache_dir
from cdrl.files import atomic_write

BUNDLED_FEATURES_DIR = Path(__file__).parent / "reference_features"
"""Where the shipped reference features are (package data)."""
KID_FEATURES_CAP = 10_000
"""Reference features kept for KID: 10k × 2048 float32 is 80 MB; KID subsets hold 1000."""
REFERENCE_STATS_DIRNAME = "reference-stats"
_UNSAFE_FILENAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ReferenceKey:
    """What a reference statistics file depends on, and so its cache file name."""

    dataset: str
    split: str
    backend: str
    mode: str
    weights_sha256: str
    n_images: int

    @classmethod
    def for_extractor(cls, dataset: str, split: str, n_images: int, extractor: ExtractorSpec) -> ReferenceKey:
        if n_images < 2:
            raise EvaluationError(f"reference statistics need at least 2 images, got n_images={n_images}")
        return cls(dataset, split, extractor.backend, extractor.mode, extractor.weights_sha256, int(n_images))

    def filename(self) -> str:
        parts = (self.dataset, self.split, self.backend, self.mode, self.weights_sha256[:16], f"n{self.n_images}")
        return "_".join(_UNSAFE_FILENAME_CHARACTERS.sub("-", part) for part in parts) + ".npz"

    def path(self, cache_root: Path | None = None) -> Path:
        return (cache_dir() if cache_root is None else Path(cache_root)) / REFERENCE_STATS_DIRNAME / self.filename()


@dataclass(frozen=True, eq=False)
class ReferenceStatistics:
    """mu and sigma of a reference set's 2048-d features, plus up to KID_FEATURES_CAP of the features."""

    key: ReferenceKey
    extractor_name: str
    mu: np.ndarray
    sigma: np.ndarray
    kid_features: np.ndarray

    def save(self, path: Path) -> None:
        metadata = json.dumps({"key": asdict(self.key), "extractor_name": self.extractor_name})
        atomic_write(path, lambda stream: np.savez(stream, metadata=np.array(metadata), mu=self.mu,
                                                   sigma=self.sigma, kid_features=self.kid_features))

    @classmethod
    def load(cls, path: Path) -> ReferenceStatistics:
        try:
            with np.load(path, allow_pickle=False) as stored:
                metadata = json.loads(str(stored["metadata"]))
                return cls(
                    key=ReferenceKey(**metadata["key"]),
                    extractor_name=metadata["extractor_name"],
                    mu=stored["mu"],
                    sigma=stored["sigma"],
                    kid_features=stored["kid_features"],
                )
        except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as error:
            raise EvaluationError(
                f"reference statistics file {path} is unreadable ({error}); delete it to rebuild"
            ) from error


def load_reference_statistics(key: ReferenceKey, cache_root: Path | None = None) -> ReferenceStatistics | None:
    """The cached statistics for ``key``, or None when there are none."""
    path = key.path(cache_root)
    if not path.is_file():
        return None
    statistics = ReferenceStatistics.load(path)
    if statistics.key != key:
        raise EvaluationError(f"{path} holds statistics for {statistics.key}, not {key}; delete it to rebuild")
    return statistics


def build_reference_statistics(
    key: ReferenceKey,
    batches: ImageArray | Iterable,
    *,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    kid_features_cap: int = KID_FEATURES_CAP,
    cache_root: Path | None = None,
) -> ReferenceStatistics:
    """Extract features of the first ``key.n_images`` images, compute statistics, cache them under the key.

    ``batches``: uint8 image batches (NCHW or NHWC; ``(images, labels)`` pairs are fine), or one array.
    The weights are resolved again and must have the key's sha256. Always rebuilds and overwrites.
    """
    extractor = resolve_extractor(key.backend, key.mode, weights)
    if extractor.weights_sha256 != key.weights_sha256:
        raise EvaluationError(
            f"the key was made for weights sha256 {key.weights_sha256[:12]}… but {extractor.weights_path} has "
            f"{extractor.weights_sha256[:12]}…; pass the same weights the key was made with"
        )
    return _build(key, batches, extractor, device, batch_size, kid_features_cap, cache_root)


def _build(
    key: ReferenceKey,
    batches: ImageArray | Iterable,
    extractor: ExtractorSpec,
    device: str | torch.device | None,
    batch_size: int,
    kid_features_cap: int,
    cache_root: Path | None,
) -> ReferenceStatistics:
    _check_kid_features_cap(kid_features_cap)
    extracted = extract_reference_features(key, batches, extractor, device=device, batch_size=batch_size)
    return _cache(extracted, kid_features_cap, cache_root)


def extract_reference_features(key: ReferenceKey, batches: ImageArray | Iterable, extractor: ExtractorSpec, *,
                               device: str | torch.device | None = None, batch_size: int = 64) -> ReferenceFeatures:
    """The pool features of the first ``key.n_images`` reference images, as the statistics are built from."""
    features = extract_features(batches, extractor, device=device, batch_size=batch_size, n_images=key.n_images)
    return ReferenceFeatures(key=key, extractor_name=extractor.name, features=features.pool)


def _check_kid_features_cap(kid_features_cap: int) -> None:
    if kid_features_cap < 0:
        raise EvaluationError(f"kid_features_cap must be >= 0, got {kid_features_cap}")


def _cache(reference: ReferenceFeatures, kid_features_cap: int, cache_root: Path | None) -> ReferenceStatistics:
    """The statistics of a reference's pool features, however they were obtained, saved where
    :func:`load_reference_statistics` finds them."""
    pool = reference.features
    mu, sigma = feature_statistics(pool, reference.key.backend)
    kept = pool
    if len(pool) > kid_features_cap:
        # A seeded random subset: loaders are often sorted by class, so the first rows would be biased.
        rows = np.sort(np.random.default_rng(0).choice(len(pool), kid_features_cap, replace=False))
        kept = pool[rows]
    statistics = ReferenceStatistics(key=reference.key, extractor_name=reference.extractor_name, mu=mu, sigma=sigma,
                                     kid_features=kept)
    statistics.save(reference.key.path(cache_root))
    return statistics


@dataclass(frozen=True, eq=False)
class ReferenceFeatures:
    """The pool features of a whole reference set, as shipped for a bundled data set."""

    key: ReferenceKey
    extractor_name: str
    features: np.ndarray

    def save(self, directory: Path) -> Path:
        if self.features.shape != (self.key.n_images, FEATURE_DIM) or self.features.dtype != np.float32:
            raise EvaluationError(f"reference features must be float32 ({self.key.n_images}, {FEATURE_DIM}), "
                                  f"got {self.features.dtype} {tuple(self.features.shape)}")
        metadata = json.dumps({"key": asdict(self.key), "extractor_name": self.extractor_name})
        path = Path(directory) / self.key.filename()
        atomic_write(path, lambda stream: np.savez_compressed(stream, metadata=np.array(metadata),
                                                              features=self.features))
        return path


def load_reference_features(key: ReferenceKey, directory: Path | None = None) -> ReferenceFeatures | None:
    """The features for ``key`` shipped in ``directory`` (default: the bundled ones), or None when none are."""
    path = Path(BUNDLED_FEATURES_DIR if directory is None else directory) / key.filename()
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            metadata = json.loads(str(stored["metadata"]))
            bundled = ReferenceFeatures(key=ReferenceKey(**metadata["key"]), extractor_name=metadata["extractor_name"],
                                        features=stored["features"])
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as error:
        raise EvaluationError(f"bundled reference features {path} are unreadable ({error}); "
                              "reinstall cdrl-bench") from error
    # The file name keeps 16 hex digits of the weights' sha256; the stored key has all of it.
    if bundled.key != key or bundled.features.shape != (key.n_images, FEATURE_DIM):
        raise EvaluationError(f"{path} holds {tuple(bundled.features.shape)} features for {bundled.key}, not for "
                              f"{key}: rebuild it with python -m tools.bundle_reference_features")
    return bundled


def reference_statistics(
    name: str,
    images: ImageArray | Iterable,
    *,
    split: str = "train",
    n_images: int | None = None,
    backend: str = DEFAULT_BACKEND,
    mode: str | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    kid_features_cap: int = KID_FEATURES_CAP,
    cache_root: Path | None = None,
) -> ReferenceStatistics:
    """Load the cached statistics for this reference, or build and cache them.

    ``images`` is one uint8 array (``n_images`` defaults to its length) or an iterable of batches
    (then ``n_images`` is required: it is part of the key, known before any image is read).
    On a cache hit no image is read and no feature is extracted.
    """
    _check_kid_features_cap(kid_features_cap)
    extractor = resolve_extractor(backend, mode, weights)
    if n_images is None:
        if not isinstance(images, (torch.Tensor, np.ndarray)):
            raise EvaluationError("pass n_images when the reference images come as an iterable of batches")
        n_images = as_uint8_nchw(images, "reference images").shape[0]
    key = ReferenceKey.for_extractor(name, split, n_images, extractor)
    cached = load_reference_statistics(key, cache_root)
    if cached is not None:
        return cached
    bundled = load_reference_features(key)
    if bundled is not None:
        return _cache(bundled, kid_features_cap, cache_root)
    return _build(key, images, extractor, device, batch_size, kid_features_cap, cache_root)
