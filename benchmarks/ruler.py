"""Fingerprints of the ruler: every metric and dataset pipeline, measured on fixed inputs.

The gate's rows measure models with the ruler, so a change of the ruler (a resize, the
quantisation, a normalisation constant, the covariance of FID, an estimator, a dataset's
layout) would read as a change of the models, or hide inside their seed noise. Here the
inputs are fixed, so any change of these numbers beyond float32 rounding is a change of the
code that measures:

* ``ruler:features/BACKEND/MODE``: Inception features of fixed images through each backend
  and resize mode, from float samples as a model gives them (``to_uint8``: the rounding, the
  clamp) to the 2048-d pool: per image its mean, norm and four fixed projections.
* ``ruler:statistics/BACKEND``: FID and KID of two fixed feature arrays through
  ``metrics_from_features`` (feature statistics, the Fréchet distance, KID's subsets).
* ``ruler:exact-2d/DENSITY``: the exact toy metrics of a fixed point set and of a displaced
  one, through the metric registry's pass, and the density's first fresh draws.
* ``ruler:class-accuracy/SIZEpx``: the digit CNN's verdicts on fixed real digits (the
  registry's pass, from float samples) and its logits.
* ``ruler:data/NAME``: the first items of each dataset pipeline, read by ``cdrl.datasets`` from
  small archives written in the real on-disk formats (:mod:`benchmarks.archives`) or, for digits
  and toys, from what ships: per image its channel means, its first and last column means and
  fixed pixels, and its label.

:func:`ruler_fingerprints` computes them all (about 20 s on one CPU thread, mostly the
Inception); the check compares them with the baseline's like the model fingerprints, at the
suite's ``[check] ruler_tolerance`` (``results/gate/README.md`` says how it was measured).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks.archives import asymmetric_images, write_cifar10, write_imagenet32, write_imagenet64
from cdrl.config import preset
from cdrl.datasets import DataConfig, build_dataset, toy_sample
from cdrl.evaluation import BACKENDS, MODES, FeatureSet, extract_features, metrics_from_features, resolve_extractor, \
    to_uint8
from cdrl.metrics import METRICS, ScoreRequest, ScoringRequest

#: Every ruler fingerprint's name starts so; the check compares them at ``[check] ruler_tolerance``.
PREFIX = "ruler:"
SEED = 20241207
#: Images per feature fingerprint: real 8x8 digits and synthetic 32x32 photos.
DIGIT_IMAGES, PHOTO_IMAGES = 4, 2
#: Feature arrays of the statistics fingerprint: rows and dimensions (full rank, so the Fréchet
#: distance's matrix square root is well conditioned and cheap; few rows, so that a covariance
#: normalised by n instead of n - 1 moves FID by about 1/96).
FEATURE_ROWS, FEATURE_DIMENSIONS = 96, 32
TOY_POINTS = 512
#: The toy presets whose densities the exact metrics are fingerprinted on.
TOY_PRESETS = ("toy-checkerboard", "toy-8gaussians", "toy-2rings")
CLASSIFIED_DIGITS = 64


def _as_samples(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Real images as a model's float samples: off the uint8 grid by up to half a level, a few beyond [-1, 1],
    so that the rounding and the clamp of the quantisation decide pixels."""
    jitter = (torch.rand(images.shape, generator=generator) - 0.5) / 127.5
    samples = images + jitter
    samples[:, :, 0, 0] = torch.linspace(-1.2, 1.2, len(images))[:, None]
    return samples


def _digits(size: int, split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = build_dataset(DataConfig("digits", split=split, image_size=size, class_conditional=True))
    items = [dataset[index] for index in range(count)]
    return torch.stack([image for image, _ in items]), torch.tensor([int(label) for _, label in items])


def _photos() -> torch.Tensor:
    rows = asymmetric_images(PHOTO_IMAGES, seed=SEED)
    return torch.from_numpy(rows.reshape(-1, 3, 32, 32).astype(np.float32)) / 127.5 - 1.0


def _feature_summary(pool: np.ndarray) -> list[float]:
    directions = np.random.default_rng(SEED).standard_normal((pool.shape[1], 4))
    directions /= np.linalg.norm(directions, axis=0)
    pool = pool.astype(np.float64)
    summary = np.concatenate([pool.mean(axis=1, keepdims=True), np.linalg.norm(pool, axis=1, keepdims=True),
                              pool @ directions], axis=1)
    return summary.flatten().tolist()


def feature_fingerprints() -> dict[str, list[float]]:
    generator = torch.Generator().manual_seed(SEED)
    digits = _as_samples(_digits(8, "test", DIGIT_IMAGES)[0], generator)
    photos = _as_samples(_photos(), generator)
    prints = {}
    for backend in BACKENDS:
        for mode in MODES:
            extractor = resolve_extractor(backend, mode)
            values: list[float] = []
            for images in (digits, photos):
                values += _feature_summary(extract_features(to_uint8(images), extractor, device="cpu").pool)
            prints[f"{PREFIX}features/{backend}/{mode}"] = values
    return prints


def statistics_fingerprints() -> dict[str, list[float]]:
    rng = np.random.default_rng(SEED)
    generated = rng.standard_normal((FEATURE_ROWS, FEATURE_DIMENSIONS))
    mixing = np.eye(FEATURE_DIMENSIONS) + 0.3 * rng.standard_normal((FEATURE_DIMENSIONS, FEATURE_DIMENSIONS))
    reference = rng.standard_normal((FEATURE_ROWS, FEATURE_DIMENSIONS)) @ mixing + 0.2
    prints = {}
    for backend in BACKENDS:
        extractor = resolve_extractor(backend)
        result = metrics_from_features(FeatureSet(generated.astype(np.float32), None, extractor),
                                       FeatureSet(reference.astype(np.float32), None, extractor), isc=False,
                                       kid_subsets=20, kid_subset_size=64, seed=SEED)
        prints[f"{PREFIX}statistics/{backend}"] = [value for value in (result.fid, result.kid_mean, result.kid_std)
                                                 if value is not None]
    return prints


def _request(samples: torch.Tensor, preset_name: str, dataset: str, classes: torch.Tensor | None = None
             ) -> ScoreRequest:
    return ScoreRequest(samples=samples, config=preset(preset_name),
                        scoring=ScoringRequest(dataset, backend=BACKENDS[0]), seed=SEED, device="cpu", classes=classes)


def exact_2d_fingerprints() -> dict[str, list[float]]:
    exact = METRICS["energy_distance"].computed_by
    prints = {}
    for name in TOY_PRESETS:
        config = preset(name)
        density, scale = config.data.dataset, config.data.toy_scale
        points, _ = toy_sample(density, TOY_POINTS, torch.Generator().manual_seed(SEED), scale)
        values: list[float] = points[:4].flatten().tolist()
        for samples in (points, 0.8 * points + 0.1 * scale):
            values += list(exact.run(_request(samples, name, density)).values.values())
        prints[f"{PREFIX}exact-2d/{density}"] = values
    return prints


def class_accuracy_fingerprints() -> dict[str, list[float]]:
    from cdrl.evaluation.digits_classifier import default_classifier

    generator = torch.Generator().manual_seed(SEED)
    prints = {}
    for size in (8, 16):
        images, labels = _digits(size, "test", CLASSIFIED_DIGITS)
        samples = _as_samples(images, generator)
        # Half the requested classes wrong, so that the share depends on every verdict.
        requested = torch.where(torch.arange(len(labels)) % 2 == 0, labels, (labels + 1) % 10)
        accuracy = METRICS["class_accuracy"].computed_by.run(_request(samples, "digits-cond", "digits", requested))
        with torch.no_grad():
            logits = default_classifier(1, size)(images[:8])
        prints[f"{PREFIX}class-accuracy/{size}px"] = [accuracy.values["class_accuracy"], *logits.flatten().tolist()]
    return prints


def _image_summary(image: torch.Tensor, label: int) -> list[float]:
    channels = image.reshape(image.shape[0], -1)
    side = image.shape[-1]
    pixels = [image[channel, row, column] for channel in range(image.shape[0])
              for row, column in ((0, 1), (side // 2, side // 3), (side - 1, side - 2))]
    return [*channels.mean(dim=1).tolist(), *image[..., 0].mean(dim=1).tolist(), *image[..., -1].mean(dim=1).tolist(),
            *map(float, pixels), float(label)]


#: Each dataset pipeline a suite can use: (name, its archive writer or None, the configs read from it).
_PIPELINES: tuple[tuple[str, Callable[[Path], Path] | None, tuple[DataConfig, ...]], ...] = (
    ("cifar10", write_cifar10, (DataConfig("cifar10", horizontal_flip=False, download=False, class_conditional=True),
                                DataConfig("cifar10", split="test", download=False, class_conditional=True))),
    ("imagenet32-npz32", write_imagenet32, (DataConfig("imagenet32", horizontal_flip=False, class_conditional=True),
                                            DataConfig("imagenet32", split="test", class_conditional=True))),
    ("imagenet32-npz64-resized", write_imagenet64,
     (DataConfig("imagenet32", imagenet_source="npz64-resized", horizontal_flip=False, class_conditional=True),
      DataConfig("imagenet32", imagenet_source="npz64-resized", split="test", class_conditional=True))),
    ("digits", None, tuple(DataConfig("digits", split=split, image_size=size, channels=channels,
                                      class_conditional=True)
                           for split in ("train", "test") for size, channels in ((8, 1), (16, 1), (16, 3)))),
)
IMAGES_PER_SPLIT = 5
TOY_DATA_POINTS = 8


def data_fingerprints() -> dict[str, list[float]]:
    import warnings

    prints = {}
    with tempfile.TemporaryDirectory(prefix="cdrl-ruler-") as folder:
        for name, write, configs in _PIPELINES:
            root = write(Path(folder) / name) if write else None
            values: list[float] = []
            for config in configs:
                with warnings.catch_warnings():  # "2 of 10 batch files": the archives are small on purpose
                    warnings.simplefilter("ignore", UserWarning)
                    dataset = build_dataset(replace(config, data_dir=str(root)) if root else config)
                for index in range(min(IMAGES_PER_SPLIT, len(dataset))):
                    values += _image_summary(*dataset[index])
            prints[f"{PREFIX}data/{name}"] = values
    for name in (*TOY_PRESETS, "toy-quadrants-cond"):
        data = replace(preset(name).data, class_conditional=True)
        values = []
        for split in ("train", "test"):
            dataset = build_dataset(replace(data, split=split))
            for index in range(TOY_DATA_POINTS):
                point, label = dataset[index]
                values += [*point.tolist(), float(label)]
        prints[f"{PREFIX}data/{data.dataset}"] = values
    return prints


def ruler_fingerprints() -> dict[str, list[float]]:
    """Every fingerprint of the ruler (module docstring), by name."""
    return {**data_fingerprints(), **exact_2d_fingerprints(), **class_accuracy_fingerprints(),
            **statistics_fingerprints(), **feature_fingerprints()}
