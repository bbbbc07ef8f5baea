"""Score samples someone already has (``cdrl-bench score``) under the protocol ``eval`` records.

Three kinds of file are read, each checked before any metric runs (:class:`SampleFileError`,
one line naming the problem and the fix):

* a folder of PNGs (what ``cdrl-bench sample --out DIR`` writes; torch-fidelity's and
  pytorch-fid's input), 8-bit grayscale or RGB, all of one size, taken in file-name order;
* a ``.npz``: ``images`` (uint8, N x H x W x C, what ``sample --out FILE.npz`` writes) or
  ``arr_0`` (the same layout, as ``numpy.savez`` names an unnamed array: the released
  samples of OpenAI's diffusion code, for example), or ``points`` (float N x 2, 2-D toys);
* a ``.pt`` tensor (``torch.save``): float N x C x H x W in [-1, 1] (what
  :func:`cdrl.generation.generate` returns), uint8 N x C x H x W, or float N x 2 points.

Images are scored exactly as ``eval`` scores its own samples (:func:`cdrl.scoring.score_samples`:
quantised by :func:`cdrl.evaluation.to_uint8`, against the cached statistics of the named
reference), so the same pixels give the same numbers.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cdrl.config import ExperimentConfig, apply_overrides
from cdrl.datasets import DataConfig, DatasetError, build_dataset, dataset_info
from cdrl.errors import CdrlBenchError
from cdrl.networks import EnergyNetConfig, InitializerConfig
# The figure sizes of eval's runs, so that both kinds of run show the same.
from cdrl.scoring import (Recording, ScoreResult, ScoringRequest, log_sample_figure, overrides_entry,
                          score_samples)
from cdrl.tags import TAG_KIND
from cdrl.tracking import tracked_run

#: Image channels a sample file may hold: grayscale or RGB, as the reference datasets.
IMAGE_CHANNELS = (1, 3)
#: The npz keys read, in order of preference (module docstring).
NPZ_IMAGE_KEYS = ("images", "arr_0")


class SampleFileError(CdrlBenchError):
    """A samples file that cannot be scored; the message names the problem and the fix."""


@dataclass(frozen=True)
class SampleFile:
    """Samples read from a file, in cdrl-bench's convention, and where they came from."""

    #: Images (N, C, H, W) float in [-1, 1] (uint8 pixels p read as p / 127.5 - 1, which quantise back
    #: to p), or 2-D points (N, 2).
    samples: torch.Tensor
    path: Path
    #: "png-folder", "npz" or "pt".
    format: str
    #: sha256 of the samples as scored (uint8 pixels, or the points' float32 bytes): names them in MLflow.
    sha256: str

    @property
    def is_image(self) -> bool:
        return self.samples.dim() == 4

    def protocol(self) -> dict[str, Any]:
        return {"samples_file": str(self.path.resolve()), "samples_format": self.format,
                "samples_sha256": self.sha256}


def read_sample_file(path: str | Path) -> SampleFile:
    """The samples of a PNG folder, ``.npz`` or ``.pt`` file, checked (module docstring)."""
    path = Path(path)
    if path.is_dir():
        pixels, kind = _read_png_folder(path), "png-folder"
    elif not path.is_file():
        raise SampleFileError(f"{path} does not exist: pass a folder of PNGs, a .npz or a .pt file of samples")
    elif path.suffix == ".npz":
        pixels, kind = _read_npz(path), "npz"
    elif path.suffix == ".pt":
        pixels, kind = _read_pt(path), "pt"
    else:
        raise SampleFileError(f"{path} is neither a folder of PNGs, a .npz nor a .pt file: write the samples as one "
                              "of those (cdrl-bench sample writes the first two)")
    if len(pixels) < 2:
        raise SampleFileError(f"{path} holds {len(pixels)} sample(s): FID and KID need at least 2")
    if pixels.dtype == torch.uint8:
        digest = hashlib.sha256(pixels.contiguous().numpy().tobytes()).hexdigest()
        return SampleFile(pixels.float() / 127.5 - 1.0, path, kind, digest)
    return SampleFile(pixels, path, kind, hashlib.sha256(pixels.contiguous().numpy().tobytes()).hexdigest())


def _read_png_folder(folder: Path) -> torch.Tensor:
    from PIL import Image

    files = sorted(file for file in folder.iterdir() if file.suffix.lower() == ".png")
    if not files:
        raise SampleFileError(f"{folder} holds no .png files: pass a folder of PNG samples (cdrl-bench sample --out "
                              "DIR writes one)")
    images, size = [], None
    for file in files:
        try:
            with Image.open(file) as image:
                mode, pixels = image.mode, np.asarray(image)
        except (OSError, ValueError) as error:
            raise SampleFileError(f"{file} is not a readable PNG ({error}): rewrite or remove it") from None
        if mode not in ("L", "RGB"):
            raise SampleFileError(f"{file} is a {mode} PNG: write 8-bit grayscale (L) or RGB PNGs")
        if size is None:
            size = pixels.shape
        elif pixels.shape != size:
            raise SampleFileError(f"{file} is {_shape_text(pixels.shape)} where {files[0].name} is "
                                  f"{_shape_text(size)}: every sample must have one size")
        images.append(pixels if pixels.ndim == 3 else pixels[..., None])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _read_npz(path: Path) -> torch.Tensor:
    try:
        with np.load(path, allow_pickle=False) as stored:
            key = next((key for key in (*NPZ_IMAGE_KEYS, "points") if key in stored.files), None)
            if key is None:
                raise SampleFileError(f"{path} holds {', '.join(stored.files) or 'no arrays'}: store the samples as "
                                      f"'images' (uint8 N x H x W x C) or 'points' (float N x 2)")
            array = stored[key]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise SampleFileError(f"{path} is not a readable .npz ({error}): write it with numpy.savez") from None
    if key == "points":
        return _points(torch.from_numpy(array), path, key)
    if array.dtype != np.uint8:
        raise SampleFileError(f"{path}: '{key}' is {array.dtype}: an npz holds images as uint8 pixels (0-255); "
                              "write float samples in [-1, 1] as a .pt tensor instead")
    if array.ndim != 4 or array.shape[-1] not in IMAGE_CHANNELS:
        raise SampleFileError(f"{path}: '{key}' has shape {_shape_text(array.shape)}: write N x H x W x C with C "
                              f"1 or 3 (channels last, as cdrl-bench sample and numpy images do)")
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def _read_pt(path: Path) -> torch.Tensor:
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a file it cannot read
        raise SampleFileError(f"{path} is not a readable torch file ({type(error).__name__}): write one tensor "
                              "with torch.save") from None
    if not isinstance(tensor, torch.Tensor):
        raise SampleFileError(f"{path} holds a {type(tensor).__name__}, not a tensor: torch.save the samples tensor "
                              "itself")
    if tensor.dim() == 2:
        return _points(tensor, path, "tensor")
    if tensor.dim() != 4 or tensor.shape[1] not in IMAGE_CHANNELS:
        raise SampleFileError(f"{path}: the tensor has shape {_shape_text(tensor.shape)}: write N x C x H x W with C "
                              "1 or 3 (channels first, as cdrl-bench's samples)")
    if tensor.dtype == torch.uint8:
        return tensor.contiguous()
    if not tensor.is_floating_point():
        raise SampleFileError(f"{path}: the tensor is {tensor.dtype}: write float samples in [-1, 1] or uint8 pixels")
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise SampleFileError(f"{path}: the tensor holds non-finite values: remove or redraw those samples")
    low, high = float(tensor.min()), float(tensor.max())
    if low < -1.0 or high > 1.0:
        raise SampleFileError(f"{path}: values span [{low:.3g}, {high:.3g}], outside [-1, 1]: scale the images to "
                              "[-1, 1] (pixels p: p / 127.5 - 1)")
    return tensor.contiguous()


def _points(tensor: torch.Tensor, path: Path, key: str) -> torch.Tensor:
    if tensor.dim() != 2 or tensor.shape[1] != 2 or not tensor.is_floating_point():
        raise SampleFileError(f"{path}: '{key}' is {tensor.dtype} of shape {_shape_text(tensor.shape)}: 2-D points "
                              "are float N x 2")
    if not torch.isfinite(tensor).all():
        raise SampleFileError(f"{path}: '{key}' holds non-finite points: remove or redraw those samples")
    return tensor.float().contiguous()


def reference_config(samples: SampleFile, dataset: str, reference_overrides: Sequence[str] = ()) -> ExperimentConfig:
    """What the samples are scored against: ``dataset`` at their image size and channels.

    Scoring reads ``config.data`` alone; the networks are the defaults and never built.
    """
    info = dataset_info(dataset)  # an unknown name is refused here, naming the choices
    if samples.is_image != info.is_image:
        wanted = "images (N x C x H x W)" if info.is_image else "2-D points (N x 2)"
        raise SampleFileError(f"{samples.path} holds {'images' if samples.is_image else '2-D points'} but {dataset} "
                              f"is scored on {wanted}: pass the reference dataset the samples are of")
    data = DataConfig(dataset=dataset)
    if samples.is_image:
        shape = tuple(samples.samples.shape[1:])
        native = info.item_shape(data)
        data = replace(data, channels=shape[0], image_size=shape[-1])
        if shape[1] != shape[2]:
            raise SampleFileError(f"{samples.path} holds {_shape_text(shape)} images (C x H x W): the references are "
                                  f"square, pass square samples ({dataset}: {_shape_text(native)})")
        if shape != native:
            try:  # the dataset's own rule for other sizes: digits are upsampled, photos are used as they are
                build_dataset(data)
            except DatasetError as error:
                reason = str(error).rsplit(": ", 1)[0]  # its fix names training options; the fix here is below
                raise SampleFileError(f"{samples.path} holds {_shape_text(shape)} images (C x H x W), which {dataset} "
                                      f"is not scored at ({reason}): pass samples of its shape, "
                                      f"{_shape_text(native)}") from None
    overrides = list(reference_overrides)
    if any(not override.startswith("data.") for override in overrides):
        raise SampleFileError(f"--set takes data.* settings of the reference only, got {', '.join(overrides)}: e.g. "
                              "--set data.imagenet_source=npz64-resized")
    config = ExperimentConfig(name=f"samples-{dataset}", description=f"samples scored against {dataset}", data=data,
                              energy=EnergyNetConfig(), initializer=InitializerConfig())
    return apply_overrides(config, overrides)


def score_sample_file(path: str | Path, dataset: str, scoring: ScoringRequest = ScoringRequest(), *, seed: int = 0,
                      device: str | torch.device | None = None, record: Recording | None = None) -> ScoreResult:
    """Score the samples of ``path`` against ``dataset`` as ``eval`` scores a checkpoint's (``scoring``'s reference
    is ``dataset``); with a ``record``, as one MLflow run (``cdrl.kind=eval``) holding the protocol, the metrics
    and a figure of the first samples."""
    dataset_info(dataset)  # an unknown reference is refused before the samples are read
    sample_file = read_sample_file(path)
    scoring = replace(scoring, reference=None)  # the config's own dataset is the reference
    config = reference_config(sample_file, dataset, scoring.reference_overrides)
    scores = score_samples(sample_file.samples, config, scoring, seed=seed, device=device)
    protocol = {**scores.protocol, **sample_file.protocol(), "seed": seed, **overrides_entry(scoring)}
    line = f"{scores.line} | {sample_file.format} {sample_file.path} (sha256 {sample_file.sha256[:12]})"
    run_id = None
    if record is not None:
        with tracked_run(tracking_uri=record.store, experiment_name=record.experiment,
                         tags={TAG_KIND: "eval", **record.tags},
                         run_name=f"score {sample_file.path.name} vs {dataset}") as run:
            run.log_params({**{key: value for key, value in config.flat().items() if key.startswith("data.")},
                            **{f"eval.{key}": str(value) for key, value in protocol.items()}})
            run.log_metrics(scores.metrics)
            log_sample_figure(run, sample_file.samples, config, f"{sample_file.path.name} ({dataset})")
            run_id = run.run_id
    return ScoreResult(scores.metrics, protocol, line, run_id)
