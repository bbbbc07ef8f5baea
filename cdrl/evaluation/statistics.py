"""The statistics behind FID, delegated to the backend libraries' own code."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from cdrl.evaluation.errors import EvaluationError
from cdrl.evaluation.extractors import BACKENDS, TORCH_FIDELITY


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, backend: str = TORCH_FIDELITY
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed by the backend library.

    torch-fidelity: ``fid_statistics_to_metric`` (trace of sqrt via eigenvalues of sigma1·sigma2,
    seconds for 2048-d). clean-fid: ``frechet_distance`` (scipy ``sqrtm``, tens of seconds for
    2048-d on a CPU). Inputs are cast to float64 so statistics from any source combine.
    """
    if backend not in BACKENDS:
        raise EvaluationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
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
    if backend == TORCH_FIDELITY:
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

        result = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False)
        return float(result[KEY_METRIC_FID])
    from cleanfid.fid import frechet_distance as clean_fid_frechet_distance

    with warnings.catch_warnings():
        # clean-fid 0.1.35 passes sqrtm's `disp`, which SciPy >= 1.16 deprecates; harmless here.
        warnings.filterwarnings("ignore", message="The `disp` argument is deprecated", category=DeprecationWarning)
        try:
            return float(clean_fid_frechet_distance(mu1, sigma1, mu2, sigma2))
        except ValueError as error:
            raise EvaluationError(
                f"clean-fid's Fréchet distance failed ({error}); the covariances are too ill-conditioned, usually "
                f"from too few images: use more images or backend {TORCH_FIDELITY}"
            ) from error


def feature_statistics(pool: np.ndarray, backend: str = TORCH_FIDELITY) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of pool features, as the backend library computes them."""
    if pool.ndim != 2 or pool.shape[0] < 2:
        raise EvaluationError(f"statistics need at least 2 feature rows, got shape {pool.shape}; pass more images")
    if backend == TORCH_FIDELITY:
        from torch_fidelity.metric_fid import fid_features_to_statistics

        statistics = fid_features_to_statistics(torch.from_numpy(pool))
        return statistics["mu"], statistics["sigma"]
    # clean-fid computes them inline (fid_from_feats, make_custom_stats) with exactly these calls.
    return np.mean(pool, axis=0), np.cov(pool, rowvar=False)
