"""FID / KID / IS from Inception features, the protocol record, and the one-call API."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from cdrl.evaluation import backends
from cdrl.evaluation.backends import BACKENDS, DEFAULT_BACKEND
from cdrl.evaluation.errors import EvaluationError
from cdrl.evaluation.backends.base import ExtractorSpec
from cdrl.evaluation.extractors import FeatureSet, extract_features, resolve_extractor, unavailable_metrics
from cdrl.evaluation.images import ImageArray
from cdrl.evaluation.inception import CLEAN, MODE_DESCRIPTIONS
from cdrl.evaluation.reference import ReferenceStatistics
from cdrl.evaluation.statistics import feature_statistics, frechet_distance

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
ISC_SPLITS = 10
SEED = 2020
"""torch-fidelity's defaults (its rng_seed is 2020); clean-fid uses the same KID subsets."""


@dataclass(frozen=True)
class Protocol:
    """Everything needed to say how a number was obtained."""

    backend: str
    backend_version: str
    mode: str
    extractor: str
    weights_file: str
    weights_sha256: str
    weights_source: str
    n_generated: int
    n_reference: int
    reference_name: str
    reference_split: str
    kid_subsets: int | None = None
    kid_subset_size: int | None = None
    #: Reference features KID's subsets were drawn from: cached statistics keep at most a cap of
    #: them, fewer than n_reference (the images behind FID's mean and covariance).
    kid_reference: int | None = None
    isc_splits: int | None = None

    def line(self) -> str:
        """One human line: backend, extractor and weights, image counts, reference, resize."""
        weights = f"{Path(self.weights_file).name}, sha256 {self.weights_sha256[:12]}…, from {self.weights_source}"
        text = (
            f"{self.backend} {self.backend_version}, {self.extractor} ({weights}), "
            f"{self.n_generated} gen vs {self.n_reference} {self.reference_name}/{self.reference_split} ref, "
            f"resize={self.mode} ({MODE_DESCRIPTIONS[self.mode]})"
        )
        if self.kid_subset_size is not None:
            text += f", KID {self.kid_subsets}×{self.kid_subset_size} of {self.kid_reference} ref"
        return text


@dataclass(frozen=True)
class MetricResult:
    """Metric values; ``None`` where not requested or unavailable (then ``unavailable`` says why)."""

    fid: float
    kid_mean: float | None
    kid_std: float | None
    inception_score: float | None
    inception_score_std: float | None
    protocol: Protocol
    unavailable: dict[str, str] = field(default_factory=dict)
    #: Wall seconds :func:`compute_metrics` spent extracting Inception features (the rest is the metrics' math).
    feature_seconds: float = 0.0

    def line(self) -> str:
        """'FID 12.34 | KID 0.01234 ± 0.00056 | IS n/a (why) | <protocol line>'."""
        parts = [f"FID {self.fid:.2f}"]
        if self.kid_mean is not None:
            std = f" ± {self.kid_std:.5f}" if self.kid_std is not None else ""
            parts.append(f"KID {self.kid_mean:.5f}{std}")
        if self.inception_score is not None:
            parts.append(f"IS {self.inception_score:.2f} ± {self.inception_score_std:.2f}")
        elif "inception_score" in self.unavailable:
            parts.append(f"IS n/a ({self.unavailable['inception_score']})")
        parts.append(self.protocol.line())
        return " | ".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready: metric values, ``unavailable`` and the protocol as a nested dict."""
        return dataclasses.asdict(self)


Reference = FeatureSet | ReferenceStatistics


def _check_compatible(generated: ExtractorSpec, reference: Reference) -> None:
    built = reference.key if isinstance(reference, ReferenceStatistics) else reference.extractor
    if (built.backend, built.mode, built.weights_sha256) != (
        generated.backend,
        generated.mode,
        generated.weights_sha256,
    ):
        raise EvaluationError(
            f"reference was built with backend {built.backend}, mode {built.mode}, weights sha256 "
            f"{built.weights_sha256[:12]}… but the generated features use {generated.describe()}; "
            f"rebuild the reference with the same backend, mode and weights"
        )


def metrics_from_features(
    generated: FeatureSet,
    reference: Reference,
    *,
    kid: bool = True,
    isc: bool = True,
    reference_name: str = "reference",
    reference_split: str = "custom",
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    isc_splits: int = ISC_SPLITS,
    seed: int = SEED,
) -> MetricResult:
    """FID (and KID, IS when asked and available) of generated features against a reference.

    ``reference`` is a FeatureSet or cached ReferenceStatistics (whose key then names the reference).
    """
    extractor = generated.extractor
    _check_compatible(extractor, reference)
    backend = extractor.backend
    library = backends.backend(backend)
    mu, sigma = feature_statistics(generated.pool, backend)
    if isinstance(reference, ReferenceStatistics):
        reference_mu, reference_sigma = reference.mu, reference.sigma
        reference_pool, n_reference = reference.kid_features, reference.key.n_images
        reference_name, reference_split = reference.key.dataset, reference.key.split
    else:
        reference_mu, reference_sigma = feature_statistics(reference.pool, backend)
        reference_pool, n_reference = reference.pool, len(reference)
    fid = frechet_distance(mu, sigma, reference_mu, reference_sigma, backend=backend)

    unavailable: dict[str, str] = {}
    kid_mean = kid_std = used_subset_size = used_subsets = kid_reference = None
    if kid:
        kid_mean, kid_std, used_subsets, used_subset_size, kid_reference = _kernel_distance(
            generated, reference_pool, library, kid_subsets, kid_subset_size, seed, unavailable)
    inception_score = inception_score_std = used_splits = None
    if isc:
        inception_score, inception_score_std, used_splits = _inception_score(generated, library, isc_splits, seed,
                                                                             unavailable)
    protocol = Protocol(
        backend=backend, backend_version=metadata.version(backend),  # backend names are the PyPI distribution names
        mode=extractor.mode, extractor=extractor.name, weights_file=str(extractor.weights_path),
        weights_sha256=extractor.weights_sha256, weights_source=extractor.weights_source,
        n_generated=len(generated), n_reference=n_reference, reference_name=reference_name,
        reference_split=reference_split, kid_subsets=used_subsets, kid_subset_size=used_subset_size,
        kid_reference=kid_reference, isc_splits=used_splits,
    )
    return MetricResult(fid=fid, kid_mean=kid_mean, kid_std=kid_std, inception_score=inception_score,
                        inception_score_std=inception_score_std, protocol=protocol, unavailable=unavailable)


def _kernel_distance(generated: FeatureSet, reference_pool, library, subsets: int, subset_size: int, seed: int,
                     unavailable: dict[str, str]):
    """KID's mean and spread with the subsets, subset size and reference count it used; what it could not give is
    noted in ``unavailable``."""
    if reference_pool.shape[0] < 2:
        unavailable["kid"] = "the reference statistics hold no features; rebuild them with kid_features_cap > 0"
        return None, None, None, None, None
    subset_size = min(subset_size, len(generated), reference_pool.shape[0])
    kid_mean, kid_std = library.kernel_distance(generated.pool, reference_pool, subsets, subset_size, seed)
    if kid_std is None:
        unavailable["kid_std"] = unavailable_metrics(generated.extractor)["kid_std"]
    return kid_mean, kid_std, subsets, subset_size, reference_pool.shape[0]


def _inception_score(generated: FeatureSet, library, splits: int, seed: int, unavailable: dict[str, str]):
    """IS, its spread and the splits it used; None where the extractor has no logits (noted in ``unavailable``)."""
    cannot = unavailable_metrics(generated.extractor)
    if "inception_score" in cannot:
        unavailable["inception_score"] = cannot["inception_score"]
        return None, None, None
    splits = min(splits, len(generated))
    return (*library.inception_score(generated.logits, splits, seed), splits)


def compute_metrics(
    generated: ImageArray | Iterable,
    reference: ImageArray | Iterable | ReferenceStatistics,
    *,
    backend: str = DEFAULT_BACKEND,
    mode: str | None = None,
    kid: bool = True,
    isc: bool = True,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    reference_name: str = "reference",
    reference_split: str = "custom",
    seed: int = SEED,
) -> MetricResult:
    """FID (+ KID, IS) of uint8 generated images against reference images or cached ReferenceStatistics.

    ``mode`` defaults to the backend's native resize (``Backend.native_mode``; torch-fidelity:
    legacy_tensorflow, clean-fid: clean). ``weights``: see ``cdrl.evaluation.weights`` for the resolution order.
    """
    extractor = resolve_extractor(backend, mode, weights)
    if isinstance(reference, ReferenceStatistics):
        _check_compatible(extractor, reference)
    started = time.monotonic()
    generated_features = extract_features(generated, extractor, device=device, batch_size=batch_size)
    if not isinstance(reference, ReferenceStatistics):
        reference = extract_features(reference, extractor, device=device, batch_size=batch_size)
    feature_seconds = time.monotonic() - started
    result = metrics_from_features(
        generated_features,
        reference,
        kid=kid,
        isc=isc,
        reference_name=reference_name,
        reference_split=reference_split,
        seed=seed,
    )
    return dataclasses.replace(result, feature_seconds=feature_seconds)


@dataclass(frozen=True)
class BackendAgreement:
    """FID of the same images from every backend with the same resize mode and weights."""

    mode: str
    results: dict[str, MetricResult]

    @property
    def relative_difference(self) -> float:
        """(largest FID − smallest FID) / the mean |FID|: for two backends, |FID_1 − FID_2| / their mean."""
        fids = [result.fid for result in self.results.values()]
        return (max(fids) - min(fids)) / max(sum(abs(fid) for fid in fids) / len(fids), np.finfo(float).tiny)

    def line(self) -> str:
        values = ", ".join(f"{backend} {result.fid:.4f}" for backend, result in self.results.items())
        difference = self.relative_difference
        return f"FID {values} (mode {self.mode}): relative difference {100 * difference:.4f}% ({difference:.1e})"


def compare_backends(
    generated: ImageArray,
    reference: ImageArray,
    *,
    mode: str = CLEAN,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> BackendAgreement:
    """Run every backend on the same images with matched preprocessing (same mode, same weights)."""
    results = {
        backend: compute_metrics(
            generated,
            reference,
            backend=backend,
            mode=mode,
            kid=False,
            isc=False,
            weights=weights,
            device=device,
            batch_size=batch_size,
        )
        for backend in BACKENDS
    }
    return BackendAgreement(mode=mode, results=results)
