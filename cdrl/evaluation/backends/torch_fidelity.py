"""The torch-fidelity backend: its extraction loop, statistics, Fréchet distance, KID and Inception Score.

A TorchScript FID Inception runs in torch-fidelity as a ``FeatureExtractorBase`` subclass
registered with ``torch_fidelity.register_feature_extractor`` and driven by torch-fidelity's
own extraction loop. Its own Inception (``inception-v3-compat``) has the logits, so with
``weights="library"`` it gives the Inception Score; it resizes in ``legacy_tensorflow`` only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from cdrl.evaluation.backends.base import Backend, ExtractorSpec
from cdrl.evaluation.errors import EvaluationError
from cdrl.evaluation.inception import (
    FEATURE_DIM,
    LEGACY_TENSORFLOW,
    TORCHSCRIPT_EXTRACTOR,
    UNAVAILABLE_WITH_TORCHSCRIPT,
    TorchScriptInception,
    check_mode,
    offline_hint,
    resize_for_inception,
)
from cdrl.evaluation.weights import WEIGHTS_ENV_VAR, cache_dir

NAME = "torch-fidelity"
LIBRARY_EXTRACTOR = "inception-v3-compat"


def library_extractor(mode: str) -> tuple[Path, str, bool]:
    if mode != LEGACY_TENSORFLOW:
        raise EvaluationError(
            f"torch-fidelity's own Inception only resizes in mode {LEGACY_TENSORFLOW}; for mode {mode!r} use a "
            f"TorchScript FID Inception (pass weights=<file> or set {WEIGHTS_ENV_VAR})"
        )
    return _download_weights(), LIBRARY_EXTRACTOR, True


def _download_weights() -> Path:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    target = cache_dir() / "library-weights" / NAME / os.path.basename(URL_INCEPTION_V3)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # torch.hub downloads to a temporary file and renames it: no partial file is left behind.
        try:
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(target), progress=False)
        except OSError as error:
            raise offline_hint(NAME, error) from error
    return target


def register_torch_fidelity_extractor(mode: str) -> str:
    """Register the TorchScript FID Inception with torch-fidelity for ``mode`` (once); return its name.

    Pass the name as ``feature_extractor=`` and the TorchScript file as
    ``feature_extractor_weights_path=`` to ``torch_fidelity.calculate_metrics``.
    """
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    check_mode(mode)
    name = f"cdrl-{TORCHSCRIPT_EXTRACTOR}-{mode}"
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(name, _extractor_class(mode))
    return name


def _extractor_class(mode: str) -> type:
    from torch_fidelity import FeatureExtractorBase

    class TorchScriptInceptionExtractor(FeatureExtractorBase):
        """torch-fidelity feature extractor over a TorchScript FID Inception; takes uint8 Bx3xHxW like its own."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise EvaluationError(
                    f"feature extractor {name} needs feature_extractor_weights_path=<TorchScript FID Inception file>"
                )
            self.inception = TorchScriptInception(Path(feature_extractor_weights_path))

        def forward(self, images):
            if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
                raise EvaluationError(
                    f"expected uint8 images of shape Bx3xHxW, got {images.dtype} {tuple(images.shape)}"
                )
            return (self.inception(resize_for_inception(images.float(), mode, fast=self.inception.fast_cpu)),)

        @staticmethod
        def get_provided_features_list():
            return (str(FEATURE_DIM),)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            if metric == "isc":
                raise EvaluationError(f"Inception Score unavailable: {UNAVAILABLE_WITH_TORCHSCRIPT['inception_score']}")
            return str(FEATURE_DIM)

        @staticmethod
        def can_be_compiled():
            # A TorchScript graph is already compiled; torch.compile over it is not what the weights were checked with.
            return False

    TorchScriptInceptionExtractor.__name__ = f"TorchScriptInceptionExtractor_{mode}"
    return TorchScriptInceptionExtractor


class _UInt8ImageDataset(torch.utils.data.Dataset):
    """The images of one batch as a Dataset, since torch-fidelity's loop takes a Dataset of tensors."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def extract(
    batches: Iterator[torch.Tensor], extractor: ExtractorSpec, device: torch.device, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    cuda = device.type == "cuda"
    pool_layer, logits_layer = str(FEATURE_DIM), "logits_unbiased"
    if extractor.provides_logits:
        name, layers = LIBRARY_EXTRACTOR, [pool_layer, logits_layer]
    else:
        name, layers = register_torch_fidelity_extractor(extractor.mode), [pool_layer]
    # torch-fidelity has no DataParallel; cuda=False keeps everything on the CPU.
    model = create_feature_extractor(
        name, layers, cuda=cuda, feature_extractor_weights_path=str(extractor.weights_path), verbose=False
    )
    for batch in batches:
        # save_cpu_ram=True: no DataLoader worker processes for images already in memory.
        features = get_featuresdict_from_dataset(
            _UInt8ImageDataset(batch), model, batch_size, cuda, save_cpu_ram=True, verbose=False
        )
        yield features[pool_layer].numpy(), (features[logits_layer].numpy() if extractor.provides_logits else None)


def feature_statistics(pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from torch_fidelity.metric_fid import fid_features_to_statistics

    statistics = fid_features_to_statistics(torch.from_numpy(pool))
    return statistics["mu"], statistics["sigma"]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``fid_statistics_to_metric``: the trace of the sqrt via eigenvalues of sigma1·sigma2, seconds for 2048-d."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    result = fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False)
    return float(result[KEY_METRIC_FID])


def kernel_distance(
    generated: np.ndarray, reference: np.ndarray, subsets: int, subset_size: int, seed: int
) -> tuple[float, float | None]:
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    result = kid_features_to_metric(
        torch.from_numpy(generated),
        torch.from_numpy(reference),
        kid_subsets=subsets,
        kid_subset_size=subset_size,
        rng_seed=seed,
        verbose=False,
    )
    return result[KEY_METRIC_KID_MEAN], result[KEY_METRIC_KID_STD]


def inception_score(logits: np.ndarray, splits: int, seed: int) -> tuple[float, float]:
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    scores = isc_features_to_metric(torch.from_numpy(logits), splits=splits, shuffle=True, rng_seed=seed)
    return scores[KEY_METRIC_ISC_MEAN], scores[KEY_METRIC_ISC_STD]


BACKEND = Backend(
    name=NAME,
    native_mode=LEGACY_TENSORFLOW,
    unavailable={},
    library_extractor=library_extractor,
    extract=extract,
    feature_statistics=feature_statistics,
    frechet_distance=frechet_distance,
    kernel_distance=kernel_distance,
    inception_score=inception_score,
)
