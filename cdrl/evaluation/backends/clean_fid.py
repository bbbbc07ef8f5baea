"""The clean-fid backend: its resizer and batch features, statistics, Fréchet distance and KID.

A TorchScript FID Inception runs in clean-fid as the ``custom_feat_extractor``-style callable
that clean-fid's ``get_batch_features`` calls on images its own resizer produced. clean-fid
has no Inception Score and reports no KID std.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from cdrl.evaluation.backends.base import Backend, ExtractorSpec
from cdrl.evaluation.errors import EvaluationError
from cdrl.evaluation.inception import CLEAN, LEGACY_TENSORFLOW, TorchScriptInception, offline_hint, resize_for_inception
from cdrl.evaluation.weights import cache_dir

NAME = "clean-fid"
LIBRARY_EXTRACTOR = "clean-fid inception-2015-12-05"

UNAVAILABLE = {
    "inception_score": "clean-fid does not implement the Inception Score (use backend torch-fidelity)",
    "kid_std": "clean-fid's kernel_distance reports the KID mean only",
}
"""Metrics the clean-fid backend never gives, whatever the weights."""


def library_extractor(mode: str) -> tuple[Path, str, bool]:
    return _download_weights(), LIBRARY_EXTRACTOR, False


def _download_weights() -> Path:
    from cleanfid import downloads_helper

    folder = cache_dir() / "library-weights" / NAME
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "inception-2015-12-05.pt"
    try:
        return Path(downloads_helper.check_download_inception(fpath=str(folder)))
    except OSError as error:
        # clean-fid writes straight to the target: drop a partial file so the next call retries.
        target.unlink(missing_ok=True)
        raise offline_hint(NAME, error) from error


class CleanFidTorchScriptExtractor(torch.nn.Module):
    """clean-fid custom feature extractor: takes what clean-fid's resizer produced, float NCHW in [0, 255].

    In ``clean`` mode clean-fid has already resized to 299; in ``legacy_tensorflow`` its resizer
    is the identity and the resize happens here, as in clean-fid's own legacy mode.
    """

    def __init__(self, path: Path, mode: str):
        super().__init__()
        self.mode = mode
        self.inception = TorchScriptInception(path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.mode == LEGACY_TENSORFLOW:
            images = resize_for_inception(images, LEGACY_TENSORFLOW, fast=self.inception.fast_cpu)
        return self.inception(images)


def extract(
    batches: Iterator[torch.Tensor], extractor: ExtractorSpec, device: torch.device, batch_size: int
) -> Iterator[tuple[np.ndarray, None]]:
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer

    if extractor.name == LIBRARY_EXTRACTOR:
        from cleanfid.inception_torchscript import InceptionV3W

        # clean-fid's own wrapper, built directly: its feature_extractor() would add DataParallel.
        model = InceptionV3W(
            str(extractor.weights_path.parent), download=False, resize_inside=extractor.mode == LEGACY_TENSORFLOW
        )
    else:
        model = CleanFidTorchScriptExtractor(extractor.weights_path, extractor.mode)
    model = model.to(device).eval()
    resize = build_resizer(extractor.mode)
    for batch in batches:
        for start in range(0, batch.shape[0], batch_size):
            channels_last = batch[start : start + batch_size].permute(0, 2, 3, 1).numpy()
            # As cleanfid.utils.ResizeDataset does per image: resize, then a float CHW tensor in [0, 255].
            resized = np.stack([np.asarray(resize(image), dtype=np.float32) for image in channels_last])
            yield get_batch_features(torch.from_numpy(resized).permute(0, 3, 1, 2), model, device), None


def feature_statistics(pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # clean-fid computes them inline (fid_from_feats, make_custom_stats) with exactly these calls.
    return np.mean(pool, axis=0), np.cov(pool, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """clean-fid's ``frechet_distance``: scipy ``sqrtm``, tens of seconds for 2048-d on a CPU."""
    from cleanfid.fid import frechet_distance as clean_fid_frechet_distance

    with warnings.catch_warnings():
        # clean-fid 0.1.35 passes sqrtm's `disp`, which SciPy >= 1.16 deprecates; harmless here.
        warnings.filterwarnings("ignore", message="The `disp` argument is deprecated", category=DeprecationWarning)
        try:
            return float(clean_fid_frechet_distance(mu1, sigma1, mu2, sigma2))
        except ValueError as error:
            raise EvaluationError(
                f"clean-fid's Fréchet distance failed ({error}); the covariances are too ill-conditioned, usually "
                f"from too few images: use more images or backend torch-fidelity"
            ) from error


def kernel_distance(
    generated: np.ndarray, reference: np.ndarray, subsets: int, subset_size: int, seed: int
) -> tuple[float, None]:
    from cleanfid.fid import kernel_distance as clean_fid_kernel_distance

    # clean-fid draws subsets from numpy's global RNG: seed it for a reproducible KID, then restore it.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return clean_fid_kernel_distance(generated, reference, num_subsets=subsets, max_subset_size=subset_size), None
    finally:
        np.random.set_state(state)


BACKEND = Backend(
    name=NAME,
    native_mode=CLEAN,
    unavailable=UNAVAILABLE,
    library_extractor=library_extractor,
    extract=extract,
    feature_statistics=feature_statistics,
    frechet_distance=frechet_distance,
    kernel_distance=kernel_distance,
)
