"""Evaluation backends: one metric library each, behind one small interface, one module each.

A :class:`Backend` is what :mod:`cdrl.evaluation` needs from a library: its name, its native
resize mode, the metrics it never gives, its own Inception (downloaded on first use), its
feature extraction loop, and its own code for the feature statistics, the Fréchet distance,
KID and IS. Everything else (weights resolution, resize modes, the TorchScript Inception,
reference caching, the protocol record) is shared, so the numbers of two backends differ only
by what is declared here. A new backend is one module defining ``BACKEND``, plus its name in
the registration at the bottom of this file.

Each library is imported only inside the functions that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cdrl.evaluation.errors import EvaluationError

if TYPE_CHECKING:
    from cdrl.evaluation.extractors import ExtractorSpec

DEFAULT_BACKEND = "torch-fidelity"
"""The backend of every evaluation that names none."""


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


def backend(name: str) -> Backend:
    """The registered backend called ``name``; an unknown name is refused with the known ones."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise EvaluationError(f"unknown backend {name!r}; choose one of {', '.join(_BACKENDS)}") from None


# Registration, after Backend: each module builds its BACKEND from the class above.
from cdrl.evaluation.backends import clean_fid, torch_fidelity  # noqa: E402

_BACKENDS: dict[str, Backend] = {module.BACKEND.name: module.BACKEND for module in (torch_fidelity, clean_fid)}
BACKENDS = tuple(_BACKENDS)
"""The names of the registered backends."""
