"""Inception feature extraction from uint8 images, through one backend's own code.

Every backend (:mod:`cdrl.evaluation.backends`) runs the same TorchScript FID Inception
(:mod:`cdrl.evaluation.inception`) when one is resolved (see ``weights``), inside its
library's own extraction loop; with ``weights="library"`` it runs the library's own
Inception instead. The libraries are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cdrl.evaluation import backends
from cdrl.evaluation.backends import DEFAULT_BACKEND
from cdrl.evaluation.backends.base import ExtractorSpec
from cdrl.evaluation.errors import EvaluationError
from cdrl.evaluation.images import ImageArray, as_uint8_nchw
from cdrl.evaluation.inception import TORCHSCRIPT_EXTRACTOR, UNAVAILABLE_WITH_TORCHSCRIPT, check_mode
from cdrl.progress import stage
from cdrl.evaluation.weights import file_sha256, resolve_weights


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Inception features of one image set: 2048-d pool features, plus logits when the extractor has them."""

    pool: np.ndarray
    logits: np.ndarray | None
    extractor: ExtractorSpec

    def __len__(self) -> int:
        return int(self.pool.shape[0])


def unavailable_metrics(extractor: ExtractorSpec) -> dict[str, str]:
    """Metrics ``extractor`` cannot give, with the reason (the backend's, where both say why)."""
    return {**({} if extractor.provides_logits else UNAVAILABLE_WITH_TORCHSCRIPT),
            **backends.backend(extractor.backend).unavailable}


def check_backend_and_mode(backend: str, mode: str | None) -> str:
    """Validate the backend, and return the mode (the backend's native one when ``None``)."""
    native = backends.backend(backend).native_mode
    return check_mode(native if mode is None else mode)


def resolve_extractor(
    backend: str = DEFAULT_BACKEND, mode: str | None = None, weights: str | os.PathLike | None = None
) -> ExtractorSpec:
    """Resolve backend, mode and weights; downloads the library's weights only when they are chosen."""
    mode = check_backend_and_mode(backend, mode)
    choice = resolve_weights(weights)
    if not choice.is_library:
        return ExtractorSpec(
            backend=backend,
            mode=mode,
            name=TORCHSCRIPT_EXTRACTOR,
            weights_path=choice.path,
            weights_sha256=file_sha256(choice.path),
            weights_source=choice.source,
            provides_logits=False,
        )
    path, name, logits = backends.backend(backend).library_extractor(mode)
    return ExtractorSpec(
        backend=backend,
        mode=mode,
        name=name,
        weights_path=path,
        weights_sha256=file_sha256(path),
        weights_source=choice.source,
        provides_logits=logits,
    )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _on_device(device: torch.device) -> contextlib.AbstractContextManager:
    # torch-fidelity moves work with .cuda(), i.e. to the current device: make that the requested one.
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def image_batches(images: ImageArray | Iterable, n_images: int | None = None) -> Iterator[torch.Tensor]:
    """Yield validated uint8 NCHW batches from one array or an iterable of batches, stopping at ``n_images``.

    Items of an iterable may be ``(images, labels)`` pairs, as a DataLoader yields; the images are used.
    """
    if isinstance(images, (torch.Tensor, np.ndarray)):
        batch = as_uint8_nchw(images)
        if n_images is not None and batch.shape[0] < n_images:
            raise EvaluationError(
                f"asked for {n_images} images but got {batch.shape[0]}; pass more images or a smaller n"
            )
        yield batch if n_images is None else batch[:n_images]
        return
    remaining = n_images
    for item in images:
        if isinstance(item, (tuple, list)):
            item = item[0]
        batch = as_uint8_nchw(item, "a batch from the image iterable")
        if remaining is not None:
            batch = batch[:remaining]
            remaining -= batch.shape[0]
        yield batch
        if remaining == 0:
            return
    if remaining:
        raise EvaluationError(
            f"the image iterable ended {remaining} images short of the {n_images} requested; pass a smaller n"
        )


def extract_features(
    images: ImageArray | Iterable,
    extractor: ExtractorSpec,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    n_images: int | None = None,
) -> FeatureSet:
    """Extract Inception features of uint8 images (one array or an iterable of batches) with one backend."""
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be at least 1, got {batch_size}")
    device = default_device() if device is None else torch.device(device)
    extract = backends.backend(extractor.backend).extract
    pools, logits = [], []
    total = n_images or (len(images) if isinstance(images, (torch.Tensor, np.ndarray)) else None)
    with _on_device(device), stage(f"{extractor.backend} features", total) as shown:
        for pool, batch_logits in extract(image_batches(images, n_images), extractor, device, batch_size):
            shown(len(pool))
            pools.append(pool)
            if batch_logits is not None:
                logits.append(batch_logits)
    if not pools:
        raise EvaluationError("the image iterable yielded no images; pass at least 2 images")
    return FeatureSet(pool=np.concatenate(pools), logits=np.concatenate(logits) if logits else None,
                      extractor=extractor)
