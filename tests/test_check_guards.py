"""What `check` guards besides a method that got worse: fixed inputs in both directions, each point's
protocol, the resolved configs, the ruler's fingerprints, sampling's batch layout and the live/EMA
choice at load. Each test plants the bug its guard exists for and watches the check fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cdrl.checkpoint
import cdrl.generation
from benchmarks.fingerprint import sample_fingerprints, samples_per_fingerprint
from benchmarks.regression import (Comparison, compare, compare_configs, compare_fingerprints, compare_protocols,
                                   read_results, refuse_thin_baseline)
from benchmarks.resolved_configs import config_changes, resolved_configs
from benchmarks.suite import SuiteError, load_suite
from cli import app

REPO = Path(__file__).resolve().parent.parent
GATE_BASELINE = REPO / "results" / "baselines" / "gate.json"


@pytest.fixture(scope="module")
def gate():
    return load_suite("gate")


@pytest.fixture(scope="module")
def stored():
    return read_results(GATE_BASELINE)


def _point(stored: dict, prefix: str) -> str:
    return next(point for point in stored["points"] if point.startswith(prefix))


def _drifted(gate, stored: dict, current: dict[str, list[float]]) -> set[str]:
    """The fingerprints among ``current`` that drifted from the baseline's beyond their tolerance."""
    subset = {"fingerprints": {name: stored["fingerprints"][name] for name in current}}
    return {item.name for item in compare_fingerprints(gate, subset, current) if item.regressed}


def test_fixed_inputs_fail_in_both_directions_trained_points_only_when_worse():
    baseline = (32.85,) * 8
    floor = Comparison("digits-floor/floor", "fid", baseline, (31.0,), k=5, floor=0.05, two_sided=True)
    assert floor.regressed and floor.status == "CHANGED (better)"
    assert "changed beyond noise, better: 31 over 1 seeds against the baseline's 32.85" in floor.describe()
    assert "if intended, rebuild the baseline" in floor.describe()
    trained = Comparison("toy-train/K15", "in_support_fraction", (0.56, 0.57, 0.58), (0.9,), k=5, n_samples=2000)
    assert not trained.regressed  # a better training is no finding
    assert Comparison("toy-train/K15", "in_support_fraction", (0.56, 0.57, 0.58), (0.3,), k=5,
                      n_samples=2000).status == "REGRESSED"


def test_the_gate_marks_stored_models_and_floors_two_sided(gate, stored):
    sides = {item.point: item.two_sided for item in compare(gate, stored, stored)}
    assert sides[_point(stored, "toy-train/")] is False
    assert sides[_point(stored, "digits-floor/")] and sides[_point(stored, "toy-cdrl/K15@checkpoint-")]


def test_a_planted_bug_that_improves_the_digits_floor_fails_check(gate, stored, tmp_path, monkeypatch):
    """The floor scored against its own split (a bug that *improves* FID) is caught by the two-sided check."""
    import cdrl.scoring
    from benchmarks.suite import model_config
    from cdrl.scoring import score_data

    floor = next(model for model in gate.models if model.key == "digits-floor")
    config = model_config(gate, floor, "full", seed=0)
    honest = score_data(config, floor.n_samples, record=None).metrics["fid"]
    point = _point(stored, "digits-floor/")
    assert honest == pytest.approx(stored["points"][point]["metrics"]["fid"][0], abs=0.05)

    original = cdrl.scoring.data_as_samples

    def own_split(config, n_samples, seed, reference_split):
        return original(config, n_samples, seed, "test" if reference_split == "train" else "train")

    monkeypatch.setattr(cdrl.scoring, "data_as_samples", own_split)
    improved = score_data(config, floor.n_samples, record=None).metrics["fid"]
    assert improved < honest - 1  # the bug makes the number better
    current = json.loads(json.dumps(stored))
    current["points"][point]["metrics"]["fid"] = [improved]
    current["points"][point]["seeds"] = [0]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(current))
    monkeypatch.setattr(cdrl.scoring, "data_as_samples", original)
    checked = CliRunner().invoke(app, ["check", "--suite", "gate", "--results", str(results)])
    output = " ".join(checked.output.split())
    assert checked.exit_code == 1, output
    assert f"fid of {point} changed beyond noise, better" in output and "CHANGED (better)" in output


def test_a_changed_protocol_entry_fails_naming_it(stored):
    current = json.loads(json.dumps(stored))
    point = _point(stored, "digits-cond/")
    current["points"][point]["protocol"]["mode"] = "clean"
    mismatches = compare_protocols(stored, current)
    assert [(item.name, item.detail) for item in mismatches] == [(point, "mode legacy_tensorflow → clean")]
    assert not compare_protocols(stored, stored)


def test_a_changed_default_fails_naming_the_field(gate, stored, monkeypatch):
    from cdrl.config import PRESETS, apply_overrides

    assert not compare_configs(gate, stored, resolved_configs())
    published = PRESETS["cifar10"]
    monkeypatch.setitem(PRESETS, "cifar10", lambda: apply_overrides(published(), ["schedule.logsnr_max=10.0"]))
    changes = compare_configs(gate, stored, resolved_configs())
    assert ("preset:cifar10", "schedule.logsnr_max 9.8 → 10.0") in [(item.name, item.detail) for item in changes]
    assert "config preset:cifar10 changed: schedule.logsnr_max 9.8 → 10.0; the same numbers now mean something " \
           "else: if intended, rebuild the baseline" in [item.describe() for item in changes if item.name ==
                                                          "preset:cifar10"][0]
    gone = {name: fields for name, fields in stored["configs"].items() if name != "preset:digits"}
    assert ("preset:digits", "new, not in the baseline") in config_changes(gone, resolved_configs())


def test_drl_test_noise_bug_changes_the_resolved_configs_of_drl_rows(gate, stored, monkeypatch):
    """DRL's constants live in baselines/, not in any stored file: only the resolved configs can see them."""
    import baselines

    monkeypatch.setattr(baselines, "DRL_TEST_NOISE_SCALE", 1.0)
    changes = dict((item.name, item.detail) for item in compare_configs(gate, stored, resolved_configs()))
    assert changes["suite:cifar10-steps/drl (full)"] == "sampler.langevin_noise_scale 0.99 → 1.0"
    assert all("drl" in name for name in changes)


def test_the_ruler_drifts_when_fid_statistics_change(gate, stored, monkeypatch):
    from benchmarks.ruler import data_fingerprints, statistics_fingerprints

    assert not _drifted(gate, stored, {**statistics_fingerprints(), **data_fingerprints()})

    import dataclasses

    from cdrl.evaluation import backends

    honest = backends.backend("torch-fidelity")

    def normalised_by_n(pool):  # the planted bug: a covariance normalised by n instead of n - 1
        mu, sigma = honest.feature_statistics(pool)
        return mu, sigma * (len(pool) - 1) / len(pool)

    monkeypatch.setitem(backends._BACKENDS, "torch-fidelity",
                        dataclasses.replace(honest, feature_statistics=normalised_by_n))
    assert _drifted(gate, stored, statistics_fingerprints()) == {"ruler:statistics/torch-fidelity"}


def test_the_ruler_drifts_when_image_normalisation_changes(gate, stored, monkeypatch):
    """CIFAR-10 and ImageNet are never trained on in the gate: their pipelines' fingerprints still see a /128."""
    from benchmarks.ruler import data_fingerprints
    from cdrl.datasets.common import ImageArrayDataset

    getitem = ImageArrayDataset.__getitem__

    def divided_by_128(self, index):
        image, label = getitem(self, index)
        return (image + 1.0) * 127.5 / 128.0 - 1.0, label

    monkeypatch.setattr(ImageArrayDataset, "__getitem__", divided_by_128)
    drifted = _drifted(gate, stored, data_fingerprints())
    assert drifted == {"ruler:data/cifar10", "ruler:data/imagenet32-npz32", "ruler:data/imagenet32-npz64-resized"}


def test_sample_i_does_not_depend_on_its_batch_position(gate, stored, monkeypatch):
    """Noise seeded by the position in a batch leaves one-batch samples alone; the layout fingerprint sees it."""
    from benchmarks.fingerprint import SEED

    run_start = cdrl.generation.example_seed(SEED, 0)

    class SeededByPosition(cdrl.generation.PerExampleNoise):  # example_seed(seed, position), not (seed, index)
        def __init__(self, seeds, device):
            super().__init__([run_start + position for position in range(len(seeds))], device)

    monkeypatch.setattr(cdrl.generation, "PerExampleNoise", SeededByPosition)
    drifted = _drifted(gate, stored, sample_fingerprints(gate))
    assert drifted and all(name.startswith("layout:") for name in drifted), drifted
    assert samples_per_fingerprint(gate)["layout:toy-cdrl/K15/w0"] == 64


def test_loading_the_wrong_weights_moves_the_published_drl_fingerprints(gate, stored, monkeypatch):
    with_ema = cdrl.checkpoint._with_ema
    monkeypatch.setattr(cdrl.checkpoint, "_with_ema",
                        lambda module, state, ema_state, use_ema: with_ema(module, state, ema_state, not use_ema))
    drifted = _drifted(gate, stored, sample_fingerprints(gate))
    assert {"samples:toy-drl-published/K30/w0", "samples-live:toy-drl-published/K30/w0"} <= drifted


def test_update_refuses_a_baseline_of_fewer_seeds_than_the_suite_asks(gate, stored):
    thin = json.loads(json.dumps(stored))
    point = _point(stored, "toy-train/")
    thin["points"][point]["seeds"] = [0]
    with pytest.raises(SuiteError, match=rf"fewer at 1 point\(s\): {point} \(1\): on a trusted commit, `cdrl-bench "
                                         r"run --suite gate --seeds 8`"):
        refuse_thin_baseline(gate, thin)
    refuse_thin_baseline(gate, stored)
