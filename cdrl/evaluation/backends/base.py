"""What a backend is: the :class:`Backend` interface, and the :class:`ExtractorSpec` it is handed.

The registry (:mod:`cdrl.evaluation.backends`), the backend modules and
:mod:`cdrl.evaluation.extractors` all import from here, and this module from none of them, so
no import runs in a circle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class ExtractorSpec:
    """A resolved feature extractor: backend, resize mode and the exact weights file."""

    backend: str
    mode: str
    name: str
    weights_path: Path
    weights_sha256: str
    weights_source: str
    provides_logits: bool

    def describe(self) -> str:
        return f"backend {self.backend}, mode {self.mode}, weights sha256 {self.weights_sha256[:12]}…"


@dataclass(frozen=True)
class Backend:
    """One metric library's code for each step from uint8 images to FID, KID and IS."""

    #: The library's PyPI distribution name: what users pass as ``backend``, and whose version a protocol records.
    name: str
    #: The resize mode the library uses on its own, used when a call names none.
    native_mode: str
    #: Metrics the library never gives, whatever the weights, with the reason.
    unavailable: Mapping[str, str]
    #: ``mode`` → (weights file, extractor name, whether it has logits) of the library's own Inception,
    #: downloaded on first use; raises when the library cannot resize in ``mode``.
    library_extractor: Callable[[str], tuple[Path, str, bool]]
    #: (uint8 batches, extractor, device, batch size) → (pool features, logits or None) per chunk of images.
    extract: Callable[[Iterator[torch.Tensor], ExtractorSpec, torch.device, int],
                      Iterator[tuple[np.ndarray, np.ndarray | None]]]
    #: Pool features (N, d) → (mu, sigma), as the library computes them.
    feature_statistics: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    #: (mu1, sigma1, mu2, sigma2), validated float64 → the Fréchet distance, by the library's code.
    frechet_distance: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]
    #: (generated, reference features, subsets, subset size, seed) → (KID mean, KID std or None).
    kernel_distance: Callable[[np.ndarray, np.ndarray, int, int, int], tuple[float, float | None]]
    #: (logits, splits, seed) → (IS mean, IS std); None when the library has none (``unavailable`` says why).
    inception_score: Callable[[np.ndarray, int, int], tuple[float, float]] | None = None
