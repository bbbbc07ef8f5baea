"""One home per metric (cdrl.metrics) and per evaluation backend (cdrl.evaluation.backends)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import benchmarks.tables as tables
from benchmarks.regression import Comparison
from benchmarks.suite import SuiteError, load_suite
from cdrl.config import preset
from cdrl.datasets import toy_sample
from cdrl.evaluation import (BACKENDS, DEFAULT_BACKEND, MODES, EvaluationError, backend, feature_statistics,
                             frechet_distance, resolve_extractor)
from cdrl.metrics import METRICS, TOY_2D, DataKind, Measured, Metric, MetricPass, ScoreRequest
from cdrl.scoring import score_samples
from cdrl.tags import TAG_GUIDANCE, TAG_MODEL, TAG_RUN_KEY, TAG_SEED, TAG_SOURCE, TAG_STEPS

SUITES = Path(__file__).resolve().parents[1] / "benchmarks" / "suites"


def named_metrics(path: Path) -> set[str]:
    """Every metric a suite file names: its table, its plot and its regression floors."""
    document = tomllib.loads(path.read_text())
    plot = document.get("plot", {})
    return {*document.get("metrics", []), *document.get("check", {}).get("tolerance_floors", {}),
            *(plot[key] for key in ("metric", "secondary") if key in plot)}


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.toml")), ids=lambda path: path.stem)
def test_every_metric_a_suite_names_is_registered_with_a_direction_and_a_format(path):
    names = named_metrics(path)
    assert names, f"{path.name} names no metric"
    for name in names:
        assert name in METRICS, f"{path.name} names {name!r}, which cdrl.metrics does not register"
        metric = METRICS[name]
        assert metric.name == name and metric.label
        assert isinstance(metric.higher_is_better, bool)
        assert isinstance(metric.decimals, int) and metric.decimals >= 0
        assert isinstance(metric.data, DataKind) and isinstance(metric.computed_by, MetricPass)


def test_directions():
    assert {name for name, metric in METRICS.items() if metric.higher_is_better} == {
        "inception_score", "in_support_fraction", "mode_coverage", "class_accuracy", "concept_a_accuracy",
        "concept_b_accuracy", "joint_accuracy", "auroc"}
    assert {name for name, metric in METRICS.items() if metric.proportion} == {
        "in_support_fraction", "class_accuracy", "concept_a_accuracy", "concept_b_accuracy", "joint_accuracy",
        "fpr95"}


SUITE_WITH_SPREAD = """
name = "spread-test"
version = 1
title = "a suite tabulating a metric registered by a test"
metrics = ["energy_distance", "sample_spread"]

[train]
preset = "toy-checkerboard"
global_batch = 32

[eval]
checkpoint = "last"

[profiles.full]
iterations = 3
n_samples = 64
seeds = [0, 1]

[[models]]
key = "cdrl"
label = "CDRL"
steps = [2]
"""


def test_a_metric_registered_in_one_place_is_scored_checked_and_tabulated(monkeypatch, tmp_path):
    passes = []

    def spread(request: ScoreRequest) -> Measured:
        passes.append(request.dataset)
        value = float(request.samples.std())
        return Measured({"sample_spread": value}, {"spread_of": "both coordinates"},
                        METRICS["sample_spread"].show(value))

    suite_file = tmp_path / "spread-test.toml"
    suite_file.write_text(SUITE_WITH_SPREAD)
    with pytest.raises(SuiteError, match="unknown metric 'sample_spread': use one of"):
        load_suite(suite_file)
    monkeypatch.setitem(METRICS, "sample_spread",
                        Metric("sample_spread", "spread", False, 3, TOY_2D, MetricPass("spread", spread)))

    samples, _ = toy_sample("toy-checkerboard", 64, torch.Generator().manual_seed(0), 4.0)
    scores = score_samples(samples, preset("toy-checkerboard"))
    metrics, protocol, line = scores.metrics, scores.protocol, scores.line
    assert scores.feature_seconds == 0 and scores.metric_seconds > 0
    assert passes == ["toy-checkerboard"]  # its pass ran once
    assert list(metrics) == ["in_support_fraction", "mode_coverage", "energy_distance", "sample_spread"]
    assert metrics["sample_spread"] == pytest.approx(float(samples.std()))
    assert protocol["spread_of"] == "both coordinates" and protocol["backend"] == "exact-2d"
    assert line.endswith(f"fresh toy-checkerboard draws | spread {metrics['sample_spread']:.3f}")

    # Lower is better: a larger spread than the baseline's is a regression.
    assert Comparison("cdrl/K2", "sample_spread", (1.0, 1.1, 0.9), (2.0,), k=4.0).regressed
    assert not Comparison("cdrl/K2", "sample_spread", (1.0, 1.1, 0.9), (0.5,), k=4.0).regressed

    suite = load_suite(suite_file)
    runs = pd.DataFrame([{f"tags.{TAG_RUN_KEY}": f"cdrl/K2/seed{seed}", f"tags.{TAG_MODEL}": "cdrl",
                          f"tags.{TAG_STEPS}": "2", f"tags.{TAG_GUIDANCE}": "0", f"tags.{TAG_SOURCE}": "trained",
                          f"tags.{TAG_SEED}": str(seed), "metrics.sample_spread": value,
                          "metrics.energy_distance": 0.01}
                         for seed, value in enumerate((2.3, 2.5))])
    monkeypatch.setattr(tables, "finished_eval_runs", lambda *args, **kwargs: runs)
    table = tables.build_table(suite)
    assert list(table.display["measured spread ↓"]) == ["2.400 ± 0.100"]
    assert "2.400 ± 0.100" in tables.render(table, "markdown")


def test_an_unknown_backend_is_refused_in_one_line_naming_the_known_ones():
    with pytest.raises(EvaluationError) as refused:
        backend("tensorflow")
    assert str(refused.value) == "unknown backend 'tensorflow'; choose one of torch-fidelity, clean-fid"
    for entry_point in (lambda: resolve_extractor("tensorflow"),
                        lambda: frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), backend="tensorflow"),
                        lambda: feature_statistics(np.zeros((3, 2)), "tensorflow")):
        with pytest.raises(EvaluationError, match="^unknown backend 'tensorflow'; choose one of"):
            entry_point()
    assert DEFAULT_BACKEND in BACKENDS
    for name in BACKENDS:
        assert backend(name).name == name and backend(name).native_mode in MODES
