"""The regression check: tolerances derived from seed-to-seed spread, refusals, fingerprints, the stored gate."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from benchmarks.fingerprint import drift
from benchmarks.regression import (Comparison, FingerprintComparison, compare, compare_fingerprints, read_results,
                                   seed_spread)
from benchmarks.suite import SuiteError, load_suite
from cdrl.datasets import toy_sample
from cdrl.toy_metrics import energy_distance, toy_metrics
from cli import app

REPO = Path(__file__).resolve().parent.parent
GATE_BASELINE = REPO / "results" / "baselines" / "gate.json"

SUITE = """
name = "check-test"
version = 1
metrics = ["in_support_fraction", "mode_coverage", "energy_distance"]

[train]
preset = "toy-checkerboard"
global_batch = 256

[eval]
checkpoint = "last"

[profiles.full]
iterations = 3
n_samples = 64
seeds = [0]

[check]
k = 4
tolerance_floors = { mode_coverage = 0.05 }

[[models]]
key = "cdrl"
steps = [15]
"""


def _document(values: dict[str, list[float]], profile: str = "full") -> dict:
    seeds = list(range(len(next(iter(values.values())))))
    return {"suite": "check-test", "suite_version": 1, "profile": profile, "format": 2,
            "points": {"cdrl/K15": {"seeds": seeds, "metrics": values}}}


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "check-test.toml"
    path.write_text(SUITE)
    return load_suite(path)


BASELINE = {"energy_distance": [0.010, 0.012, 0.011, 0.009, 0.013], "in_support_fraction": [0.90, 0.91, 0.92, 0.90, 0.91],
            "mode_coverage": [1.0] * 5}


def test_the_tolerance_is_k_standard_errors_of_the_difference_of_means(suite):
    current = {"energy_distance": [0.011, 0.012, 0.010], "in_support_fraction": [0.91, 0.90, 0.92],
               "mode_coverage": [1.0] * 3}
    comparisons = {item.metric: item for item in compare(suite, _document(BASELINE), _document(current))}
    distance = comparisons["energy_distance"]
    sigma = statistics.stdev(BASELINE["energy_distance"])
    assert distance.tolerance == pytest.approx(4 * sigma * math.sqrt(1 / 5 + 1 / 3))
    assert not any(item.regressed for item in comparisons.values())
    assert comparisons["mode_coverage"].tolerance == 0.05  # sigma 0: the floor


@pytest.mark.parametrize("metric, shift, fails", [
    ("energy_distance", +0.006, True),    # lower is better: higher by > 4 SE (0.0047) fails
    ("energy_distance", +0.004, False),
    ("energy_distance", -0.050, False),   # better never fails
    ("in_support_fraction", -0.04, True),  # higher is better: lower by > 4 SE (0.024) fails
    ("in_support_fraction", +0.05, False),
    ("mode_coverage", -0.125, True),       # one of 8 modes lost at every seed
])
def test_a_metric_fails_only_when_worse_by_more_than_its_tolerance(suite, metric, shift, fails):
    current = {name: [value + (shift if name == metric else 0.0) for value in values[:3]]
               for name, values in BASELINE.items()}
    regressed = [item.metric for item in compare(suite, _document(BASELINE), _document(current)) if item.regressed]
    assert regressed == ([metric] if fails else [])


def test_a_metric_no_seed_reported_fails(suite):
    current = {"in_support_fraction": [0.9] * 3, "mode_coverage": [1.0] * 3}  # energy distance: NaN, not reported
    failed = [item for item in compare(suite, _document(BASELINE), _document(current)) if item.regressed]
    assert [item.metric for item in failed] == ["energy_distance"]
    assert math.isnan(failed[0].current_mean)


def test_a_metric_some_seeds_did_not_report_fails(suite):
    """A diverged run finishes with no finite metrics: its seed must not just drop out of the mean."""
    current = _document({name: values[:3] for name, values in BASELINE.items()})
    current["points"]["cdrl/K15"]["metrics"]["energy_distance"] = [0.011]  # seeds 1 and 2: not finite
    failed = [item for item in compare(suite, _document(BASELINE), current) if item.regressed]
    assert [item.metric for item in failed] == ["energy_distance"]
    assert failed[0].describe() == ("energy_distance of cdrl/K15 is not finite at 2 of its 3 seeds (diverged, or "
                                    "the metric failed): the method's numbers broke")


def test_results_the_baseline_cannot_check_are_refused(suite):
    same = {name: values[:3] for name, values in BASELINE.items()}
    extra_point = _document(same)
    extra_point["points"]["new-model/K15"] = {"seeds": [0], "metrics": {"energy_distance": [99.0]}}
    with pytest.raises(SuiteError, match=r"the results hold 1 point\(s\) or metric\(s\) the baseline lacks "
                                         r"\(new-model/K15\): rebuild the baseline"):
        compare(suite, _document(BASELINE), extra_point)
    extra_metric = _document({**same, "fid": [1e9] * 3})
    with pytest.raises(SuiteError, match=r"\(fid of cdrl/K15\)"):
        compare(suite, _document(BASELINE), extra_metric)
    fewer_samples, baseline = _document(same), _document(BASELINE)
    baseline["points"]["cdrl/K15"]["n_samples"], fewer_samples["points"]["cdrl/K15"]["n_samples"] = 2000, 500
    with pytest.raises(SuiteError, match="cdrl/K15 was scored on 500 samples, the baseline on 2000"):
        compare(suite, baseline, fewer_samples)


def test_a_proportion_equal_at_every_seed_takes_no_binomial_bound():
    """A data floor scores the same images at every seed: no sampling noise, so its tolerance floor applies."""
    assert seed_spread([0.93] * 8, "class_accuracy", n_samples=100) == 0.0
    share = (0.93 + 0.93 + 0.94) / 3  # seeds that vary: the binomial bound, above their measured 0.006
    assert seed_spread([0.93, 0.93, 0.94], "class_accuracy", n_samples=100) == pytest.approx(
        math.sqrt(share * (1 - share) / 100))


def test_baselines_that_cannot_check_are_refused(suite, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(SuiteError, match="not valid JSON"):
        read_results(empty)
    nothing = tmp_path / "nothing.json"
    nothing.write_text(json.dumps({**_document(BASELINE), "points": {}}))
    with pytest.raises(SuiteError, match="checks nothing"):
        read_results(nothing)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"suite": "check-test", "metrics": {"cdrl/K15": {"fid": 3.0}}}))
    with pytest.raises(SuiteError, match="format-2"):
        read_results(old)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(_document({**BASELINE, "energy_distance": [0.01, float("nan"), 0.012]})))
    with pytest.raises(SuiteError, match=r"energy_distance of cdrl/K15 holds a value that is not a finite number"):
        read_results(broken)
    with pytest.raises(SuiteError, match=r"^--results .*missing.json does not exist: drop --results to check the "
                                         r"runs in MLflow$"):
        read_results(tmp_path / "missing.json", "--results")
    # A missing baseline points at the stored one, never at --update (which would pass by construction).
    with pytest.raises(SuiteError, match=r"^--baseline .*missing.json does not exist: pass the suite's stored "
                                         r"baseline \(the default\), or build one on a trusted commit") as missing:
        read_results(tmp_path / "missing.json")
    assert "--update" not in str(missing.value)
    with pytest.raises(SuiteError, match="at least 3"):
        compare(suite, _document({"energy_distance": [0.01, 0.02]}), _document({"energy_distance": [0.01]}))
    with pytest.raises(SuiteError, match="quick profile"):
        compare(suite, _document(BASELINE, "quick"), _document(BASELINE))
    missing = {**_document(BASELINE), "points": {}}
    with pytest.raises(SuiteError, match="no current result for 1 baseline point"):
        compare(suite, _document(BASELINE), missing)


def test_check_command_exit_codes_and_report(suite, tmp_path):
    baseline, current = tmp_path / "baseline.json", tmp_path / "current.json"
    baseline.write_text(json.dumps(_document(BASELINE)))
    cli = CliRunner()

    def check(values: dict | None, *extra: str):
        if values is not None:
            current.write_text(json.dumps(values))
        return cli.invoke(app, ["check", "--suite", str(suite.path), "--baseline", str(baseline),
                                "--results", str(current), *extra])

    same = check(_document(BASELINE))
    assert same.exit_code == 0 and "check passed: 3 metrics" in same.output
    assert "k = 4" in same.output and " ± " in same.output
    worse = {name: [value + 0.01 for value in values] for name, values in BASELINE.items()}
    failed = check(_document(worse))
    assert failed.exit_code == 1
    assert "regression: energy_distance of cdrl/K15 is 0.021" in " ".join(failed.output.split())
    assert check(None, "--k", "40").exit_code == 0  # the same results, a looser k
    refused = check(_document(BASELINE, "quick"))
    # cli.main turns this error into one `error: ...` line and exit status 2.
    assert isinstance(refused.exception, SuiteError) and "quick-profile baseline" in str(refused.exception)
    empty_store = f"sqlite:///{tmp_path / 'empty.db'}"
    nothing = cli.invoke(app, ["check", "--suite", str(suite.path), "--baseline", str(baseline), "--quick",
                               "--tracking-uri", empty_store])
    assert str(nothing.exception) == (f"no finished runs of suite check-test (quick profile) in the MLflow store: run "
                                      f"`cdrl-bench run --suite {suite.path} --quick --tracking-uri {empty_store}` first")


def test_unbiased_energy_distance_is_centred_on_zero_for_one_density():
    values = []
    for seed in range(20):
        first, _ = toy_sample("toy-checkerboard", 500, torch.Generator().manual_seed(seed))
        second, _ = toy_sample("toy-checkerboard", 500, torch.Generator().manual_seed(1000 + seed))
        values.append(energy_distance(first, second))
    # The V-statistic's bias at n = 500 is about 0.03 here; the U-statistic's mean is 0 within its error.
    assert abs(statistics.fmean(values)) < 3 * statistics.stdev(values) / math.sqrt(len(values))
    assert min(values) < 0 < max(values)
    # Seeded: over 30 seeds, wide noise scores 11 to 20 null standard deviations (the global RNG made it flaky).
    noise = toy_metrics("toy-checkerboard", torch.randn(500, 2, generator=torch.Generator().manual_seed(0)) * 4)
    noise = noise["energy_distance"]
    assert noise > 10 * statistics.stdev(values)


def test_fingerprint_drift_is_relative_and_catches_shape_and_nan():
    assert drift([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert drift([1.0, 2.0002], [1.0, 2.0]) == pytest.approx(1e-4)
    assert drift([1.0], [1.0, 2.0]) == math.inf
    assert drift([float("nan"), 2.0], [1.0, 2.0]) == math.inf
    assert drift([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], samples=2) == math.inf  # entries that are not whole samples


def test_a_sample_fingerprint_drifts_when_most_samples_move_not_one_chain():
    """Another CPU's rounding sends a chain now and then elsewhere; a change of the method moves them all."""
    baseline = [float(value) for value in range(1, 17)]  # 8 samples of 2 coordinates
    one_chain = [value * (1.03 if index < 2 else 1.0 + 1e-6) for index, value in enumerate(baseline)]
    assert drift(one_chain, baseline) == pytest.approx(0.03)  # as one sample: its largest deviation
    assert drift(one_chain, baseline, samples=8) == pytest.approx(1e-6)
    three_chains = [value * (1.03 if index < 6 else 1.0) for index, value in enumerate(baseline)]
    assert drift(three_chains, baseline, samples=8) < 1e-3
    every_chain = [value * 1.01 for value in baseline]
    assert drift(every_chain, baseline, samples=8) == pytest.approx(0.01)
    assert "drifted by 0.01 (relative, the median of 8 samples) > tolerance 0.001" in FingerprintComparison(
        "samples:toy/K15/w0", 0.01, 1e-3, 8).describe()


def test_stored_gate_checks_itself_and_its_fingerprints_are_unchanged(tmp_path):
    """The committed baseline against itself passes through `check` with no --baseline (the shipped one is
    the default): its metrics, protocols, every fingerprint (models and ruler) reproduced here, the configs."""
    from benchmarks.regression import stored_baseline

    gate = load_suite("gate")
    assert stored_baseline(gate) == GATE_BASELINE
    stored = read_results(GATE_BASELINE)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(stored))
    checked = CliRunner().invoke(app, ["check", "--suite", "gate", "--results", str(results), "--format", "json"])
    assert checked.exit_code == 0, checked.output
    verdict = json.loads(checked.output)
    assert verdict["passed"] and not verdict["failures"] and not verdict["mismatches"]
    assert len(verdict["metrics"]) == sum(len(point["metrics"]) for point in stored["points"].values())
    assert {item["name"] for item in verdict["fingerprints"]} == set(stored["fingerprints"])
    assert len(stored["fingerprints"]) >= 30 and len(stored["configs"]) >= 60


def test_the_gate_fingerprints_hold_on_another_cpu_code_path(tmp_path):
    """The fingerprints of a process without vector kernels (PyTorch's scalar code, oneDNN at SSE4.1):
    the rounding of another CPU, which the stored baseline must tolerate without an alarm."""
    import subprocess
    import sys

    out = tmp_path / "fingerprints.json"
    code = ("import json, sys, torch; torch.set_num_threads(1)\n"
            "from benchmarks.fingerprint import fingerprints\nfrom benchmarks.suite import load_suite\n"
            "print(torch.backends.cpu.get_cpu_capability())\n"
            "json.dump(fingerprints(load_suite('gate')), open(sys.argv[1], 'w'))\n")
    result = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                                 "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and result.stdout.split() == ["DEFAULT"], result.stderr[-2000:]
    gate = load_suite("gate")
    drifts = compare_fingerprints(gate, read_results(GATE_BASELINE), json.loads(out.read_text()))
    assert drifts and not [item.describe() for item in drifts if item.regressed]


def test_a_drifted_fingerprint_names_the_machine_the_baseline_was_recorded_on(tmp_path):
    from benchmarks.regression import cpu_description

    stored = read_results(GATE_BASELINE)
    moved = dict(stored["fingerprints"])
    moved["samples:toy-cdrl/K15/w0"] = [value * 1.01 for value in moved["samples:toy-cdrl/K15/w0"]]
    baseline, results = tmp_path / "baseline.json", tmp_path / "results.json"
    results.write_text(json.dumps(stored))

    def check(recorded: dict):
        baseline.write_text(json.dumps({**stored, "fingerprints": moved, "recorded": recorded}))
        return CliRunner().invoke(app, ["check", "--suite", "gate", "--baseline", str(baseline),
                                        "--results", str(results)])

    elsewhere = check({**stored["recorded"], "torch": torch.__version__, "cpu": "Other CPU (AVX2)"})
    assert elsewhere.exit_code == 1
    output = " ".join(elsewhere.output.split())
    assert "fingerprint samples:toy-cdrl/K15/w0 drifted by 0.0099 (relative, the median of 64 samples)" in output
    assert (f"note: the baseline was recorded on another machine (cpu Other CPU (AVX2) there, {cpu_description()} "
            "here); if the code did not change") in output
    here = check({**stored["recorded"], "torch": torch.__version__, "cpu": cpu_description()})
    assert here.exit_code == 1 and "note:" not in here.output


def test_comparison_of_a_nan_mean_regresses():
    item = Comparison("p", "fid", (1.0, 2.0, 3.0), (float("nan"),), k=4)
    assert item.regressed


def test_every_catalogued_mutation_applies_to_the_current_code(tmp_path):
    """The power benchmark's mutations track the code: each snippet is found exactly once."""
    import shutil

    from tools.mutations import MUTATIONS, Mutation, MutationError

    assert len(MUTATIONS) >= 12 and len({mutation.name for mutation in MUTATIONS}) == len(MUTATIONS)
    for mutation in MUTATIONS:
        root = tmp_path / mutation.name
        (root / mutation.path).parent.mkdir(parents=True)
        shutil.copy(REPO / mutation.path, root / mutation.path)
        mutation.apply(root)
        assert (root / mutation.path).read_text() != (REPO / mutation.path).read_text()
    stale = Mutation("stale", "a snippet the code no longer has", "cdrl/langevin.py", "no such line", "")
    with pytest.raises(MutationError, match="0 times"):
        stale.apply(tmp_path / MUTATIONS[0].name)


def test_the_power_table_counts_a_crashed_clean_rerun_as_a_false_alarm():
    from tools.mutations.__main__ import _outcome, _table

    wrapped = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: frozen_spectral_norm "
               "needs the network in eval mode (no power\niterations)\n")
    crashed = _outcome("spectral-norm-in-train-mode", "", -1, wrapped, 1.0, 1, 0, True, "")
    assert crashed.verdict == "crashed" and crashed.first_failure.startswith("RuntimeError: frozen_spectral_norm")
    clean_crash = _outcome("clean-1", "", -1, "error: no space left on device\n", 1.0, 1, 100, False, "")
    assert clean_crash.verdict == "false alarm" and clean_crash.first_failure == "error: no space left on device"
    crashed.area = "method"
    missed = _outcome("floor-against-its-own-split", "", 0, "check passed", 1.0, 1, 0, True, "")
    missed.area, missed.pytest = "datasets", "failed"
    table = _table([crashed, missed, clean_crash])
    assert "| floor-against-its-own-split | datasets | survived (0 metrics or configs, 0 fingerprints) | failed |" in table
    assert table.endswith("non-equivalent mutations: 2; killed by the gate's check 1 (50%; 1 by metrics, protocols, "
                          "configs or a crash), by CI (check or tests) 2; false alarms 1 of 1 clean reruns")


def test_fingerprints_catch_a_bug_that_only_changes_fewer_step_sampling(monkeypatch):
    """Drop the sqrt(15/K) step-size rule in the sampler: 6x15 is untouched, every K < 15 drifts."""
    import cdrl.sampler
    from benchmarks.fingerprint import sample_fingerprints, samples_per_fingerprint

    gate = load_suite("gate")
    stored = read_results(GATE_BASELINE)["fingerprints"]
    monkeypatch.setattr(cdrl.sampler, "multiplier_for_steps", lambda steps, config: config.step_multiplier)
    current, samples = sample_fingerprints(gate), samples_per_fingerprint(gate)
    drifted = {name for name, values in current.items()
               if drift(values, stored[name], samples[name]) > gate.check.fingerprint_tolerance}
    assert drifted == {"samples:toy-cdrl/K8/w0", "samples:toy-cdrl/K5/w0", "samples:toy-cdrl/K3/w0",
                       "samples:toy-drl/K5/w0", "samples:toy-drl-published/K5/w0"}


def test_a_share_of_samples_is_never_given_less_spread_than_binomial():
    """Eight seeds can underestimate the spread of an in-support fraction; sqrt(p (1 - p) / n) bounds it."""
    lucky = (0.835, 0.836, 0.835, 0.834, 0.835, 0.836, 0.835, 0.835)  # std 0.0006 by chance
    item = Comparison("toy/K30", "in_support_fraction", lucky, (0.82,), k=5, n_samples=2000)
    assert item.sigma == pytest.approx(math.sqrt(0.835 * 0.165 / 2000), rel=1e-3)
    assert not item.regressed  # 0.015 below: within 5 binomial standard errors
    assert Comparison("toy/K30", "energy_distance", lucky, (0.82,), k=5, n_samples=2000).sigma < 0.001
