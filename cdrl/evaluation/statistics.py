"""The statistics behind FID, delegated to the backend libraries' own code."""

from __future__ import annotations

import numpy as np

from cdrl.evaluation import backends
from cdrl.evaluation.backends import DEFAULT_BACKEND
from cdrl.evaluation.errors import EvaluationError


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, backend: str = DEFAULT_BACKEND
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed by the backend library.

    Each backend's ``frechet_distance`` says how its library computes it. Inputs are cast to
    float64 so statistics from any source combine.
    """
    library = backends.backend(backend)
    mu1, mu2 = (np.asarray(mu, dtype=np.float64) for mu in (mu1, mu2))
    sigma1, sigma2 = (np.asarray(sigma, dtype=np.float64) for sigma in (sigma1, sigma2))
    dim = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != mu1.shape or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise EvaluationError(
            f"Fréchet distance needs means of shape (d,) and covariances of shape (d, d), got "
            f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}; pass statistics of the same features"
        )
    if not all(np.isfinite(array).all() for array in (mu1, sigma1, mu2, sigma2)):
        raise EvaluationError("Fréchet distance inputs contain NaN or inf; check the features they came from")
    return library.frechet_distance(mu1, sigma1, mu2, sigma2)


def feature_statistics(pool: np.ndarray, backend: str = DEFAULT_BACKEND) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of pool features, as the backend library computes them."""
    if pool.ndim != 2 or pool.shape[0] < 2:
        raise EvaluationError(f"statistics need at least 2 feature rows, got shape {pool.shape}; pass more images")
    return backends.backend(backend).feature_statistics(pool)
