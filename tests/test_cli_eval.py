"""`cdrl-bench sample`, `eval` and `stats` end to end on a tiny digits checkpoint (real Inception, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cdrl.checkpoint import make_checkpoint, save_atomic
from cdrl.config import apply_overrides, preset
from cdrl.datasets import DataConfig, build_dataset
from cdrl.errors import CdrlBenchError
from cdrl.guidance import requested_classes
from cdrl.metrics import reference_images
from cdrl.scoring import ScoringRequest, score_samples
from cdrl.training import CooperativeTrainer
from cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    config = apply_overrides(preset("tiny"), ["sampler.steps_per_level=2"])
    torch.manual_seed(0)
    trainer = CooperativeTrainer(config)
    trainer.step(torch.rand(8, 1, 8, 8) * 2 - 1)
    return str(save_atomic(make_checkpoint(config, trainer.state_dict()),
                           tmp_path_factory.mktemp("run") / "tiny.pt"))


@pytest.fixture()
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CDRL_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_sample_writes_lossless_pngs_and_npz(checkpoint, tmp_path):
    result = runner.invoke(app, ["sample", checkpoint, "--n", "3", "--steps", "1", "--out", str(tmp_path / "pngs")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["000000.png", "000001.png", "000002.png",
                                                                       "samples.json"]
    assert json.loads((tmp_path / "pngs" / "samples.json").read_text())["steps_per_level"] == 1
    result = runner.invoke(app, ["sample", checkpoint, "--n", "3", "--steps", "1", "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "s.npz") as stored:
        assert stored["images"].dtype == np.uint8 and stored["images"].shape == (3, 8, 8, 1)


def test_eval_prints_fid_with_its_protocol_and_logs_it(checkpoint, isolated_cache):
    uri = f"sqlite:///{isolated_cache / 'mlflow.db'}"
    result = runner.invoke(app, ["eval", checkpoint, "--n-samples", "6", "--n-reference", "6", "--steps", "1",
                                 "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "FID" in result.output and "6 gen vs 6 digits-8px/train ref" in result.output and "6x1 steps" in result.output
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cdrl-bench"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["tags.cdrl.kind"] == "eval" and run["status"] == "FINISHED"
    assert np.isfinite(run["metrics.fid"])
    assert run["params.eval.steps_per_level"] == "1" and run["params.eval.backend"] == "torch-fidelity"
    assert run["params.eval.weights_sha256"] and run["params.eval.n_reference"] == "6"
    assert "metrics.class_accuracy" not in runs.columns  # an unconditional model


def test_stats_caches_reference_statistics(isolated_cache):
    result = runner.invoke(app, ["stats", "--dataset", "digits", "--n", "4"])
    assert result.exit_code == 0, result.output
    # Under the name that scoring reads (cdrl.metrics), so a later eval of a 16x16 digits model finds it.
    from cdrl.datasets import DataConfig, reference_name

    assert list((isolated_cache / "cache").rglob(f"{reference_name(DataConfig('digits'))}_train_*n4.npz"))


def test_bad_input_raises_the_cli_error_type(checkpoint, tmp_path):
    for arguments, message in [
        (["eval", str(tmp_path / "missing.pt")], "no such checkpoint"),
        (["stats", "--dataset", "toy-checkerboard"], "scored exactly"),
        (["sample", checkpoint, "--guidance", "1.0", "--out", str(tmp_path / "x")], "class-conditional"),
    ]:
        result = runner.invoke(app, arguments)
        assert isinstance(result.exception, CdrlBenchError) and message in str(result.exception), arguments
    assert not (tmp_path / "x").exists()


TOY_MODEL = Path(__file__).resolve().parents[1] / "results" / "gate" / "toy-cdrl.pt"


@pytest.mark.parametrize("arguments, named", [(["eval", "missing.pt"], "missing.pt"),
                                              (["sample", str(TOY_MODEL), "--out", "points.png"], "points.npz")])
def test_the_console_script_prints_one_line_and_exits_2(tmp_path, arguments, named):
    """One line in a log too: sample's error passes through its (transient) progress display."""
    completed = subprocess.run([sys.executable, "-m", "cli", *arguments], capture_output=True, text=True,
                               cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert completed.returncode == 2
    lines = completed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], completed.stderr
    assert list(tmp_path.iterdir()) == []


def test_points_asked_for_as_images_are_refused_before_sampling(tmp_path, monkeypatch):
    def generate(*arguments, **options):
        raise AssertionError("samples drawn before the output was checked")

    monkeypatch.setattr("cdrl.scoring.generate", generate)
    result = runner.invoke(app, ["sample", str(TOY_MODEL), "--n", "100000", "--out", str(tmp_path / "points.png")])
    assert isinstance(result.exception, CdrlBenchError), result.output
    assert f"pass --out {tmp_path / 'points.npz'}" in str(result.exception)
    assert list(tmp_path.iterdir()) == []


def test_guided_eval_of_a_conditional_digits_model_reports_class_accuracy(isolated_cache):
    config = apply_overrides(preset("tiny"), ["energy.num_classes=10", "initializer.num_classes=10",
                                              "data.class_conditional=true", "sampler.steps_per_level=2"])
    torch.manual_seed(0)
    trainer = CooperativeTrainer(config)
    trainer.step(torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8))
    path = save_atomic(make_checkpoint(config, trainer.state_dict()), isolated_cache / "cond.pt")
    uri = f"sqlite:///{isolated_cache / 'mlflow.db'}"
    result = runner.invoke(app, ["eval", str(path), "--n-samples", "10", "--n-reference", "10", "--steps", "1",
                                 "--guidance", "1.0", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "class accuracy" in result.output
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["cdrl-bench"]).iloc[0]
    assert 0.0 <= run["metrics.class_accuracy"] <= 1.0
    assert float(run["params.eval.classifier_held_out_accuracy"]) >= 0.9
    assert run["params.eval.guidance"] == "1.0" and run["params.eval.class_label"] == "all"


def test_class_accuracy_is_scored_against_the_requested_classes(isolated_cache):
    config = apply_overrides(preset("tiny"), ["energy.num_classes=10", "initializer.num_classes=10",
                                              "data.class_conditional=true"])
    digits = build_dataset(DataConfig(dataset="digits", split="test", image_size=8, class_conditional=True))
    images, labels = digits.x[:24], digits.labels[:24]
    assert torch.equal(requested_classes(torch.arange(12), None, config), torch.arange(12) % 10)
    assert torch.equal(requested_classes(torch.arange(3), 7, config), torch.full((3,), 7))
    assert requested_classes(torch.arange(3), None, preset("tiny")) is None
    right = score_samples(images, config, ScoringRequest(n_reference=24), classes=labels)
    wrong = score_samples(images, config, ScoringRequest(n_reference=24), classes=(labels + 1) % 10).metrics
    assert right.metrics["class_accuracy"] >= 0.9 and wrong["class_accuracy"] <= 0.2, (right, wrong)
    assert f"class accuracy {right.metrics['class_accuracy']:.3f}" in right.line
    # Inception features (the reference's, then the samples') and the metrics (FID math, the digit CNN) timed apart.
    assert right.feature_seconds > 0 and right.metric_seconds > 0


def test_scoring_against_a_whole_split_counts_its_images(monkeypatch):
    import cdrl.evaluation

    total, batches = reference_images(DataConfig(dataset="digits", split="test", image_size=8), None, batch_size=100)
    sizes = [len(batch) for batch in batches]
    assert total == 360 and sum(sizes) == 360 and sizes[0] == 100
    seen = {}

    def stop(dataset, images, **options):
        seen.update(options)
        raise RuntimeError("stop after the reference")

    monkeypatch.setattr(cdrl.evaluation, "reference_statistics", stop)
    with pytest.raises(RuntimeError, match="stop after the reference"):
        score_samples(torch.zeros(4, 1, 8, 8), preset("tiny"), ScoringRequest(reference_split="test"))
    assert seen["n_images"] == 360


def test_class_accuracy_reads_the_pixels_fid_sees(monkeypatch):
    """The digit CNN scores the clamped, quantised samples (what FID and a saved PNG see), not raw floats."""
    from types import SimpleNamespace

    import cdrl.evaluation.digits_classifier as digits_classifier
    from cdrl.metrics import _class_accuracy

    seen = []
    monkeypatch.setattr(digits_classifier, "class_accuracy",
                        lambda samples, classes, classifier: seen.append(samples) or 1.0)
    _class_accuracy(SimpleNamespace(samples=torch.linspace(-3, 3, 64).reshape(1, 1, 8, 8), classes=torch.tensor([0])))
    levels = (seen[0] + 1) * 127.5
    assert seen[0].min() == -1 and seen[0].max() == 1 and torch.allclose(levels, levels.round(), atol=1e-4)
