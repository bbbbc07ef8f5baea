"""Regression check of a suite against a stored baseline: a test over seeds, plus fingerprints.

A results document (JSON, format 2) holds one suite's measured values, one per seed, at
every evaluation point::

    {"suite": "gate", "suite_version": 1, "profile": "full", "format": 2,
     "points": {"toy-cdrl/K15@checkpoint-3f2a…": {"seeds": [0, 1, 2],
                                                  "metrics": {"energy_distance": [0.0021, 0.0009, 0.0017]}}},
     "fingerprints": {"samples:toy-cdrl/K15/w0": [...], ...},
     "recorded": {"date": ..., "torch": ..., "threads": ..., ...}}

``results/baselines/<suite>.json`` is such a file, written by ``cdrl-bench check --update``.

The test: a metric regresses when the current mean is worse than the baseline's mean, in the
metric's own direction, by more than ``k`` standard errors of the difference of two means,
``k * sigma * sqrt(1/n_baseline + 1/n_current)``, where sigma is the seed-to-seed standard
deviation measured in the baseline (so a baseline needs at least :data:`MIN_BASELINE_SEEDS`
seeds; for a share of samples, such as the in-support fraction, at least the binomial
sqrt(p (1 - p) / n), which a few seeds can underestimate) and k is the suite's ``[check] k``;
a metric whose sigma can be 0 gets the suite's ``tolerance_floors`` as its smallest tolerance. Fingerprints (:mod:`benchmarks.fingerprint`)
fail when they drift by more than the suite's ``fingerprint_tolerance``.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from benchmarks.records import TAG_GUIDANCE, TAG_MODEL, TAG_SEED, TAG_SOURCE, TAG_STEPS, finished_eval_runs, \
    latest_per_key
from benchmarks.results_schema import check_results_file
from benchmarks.suite import Suite, SuiteError
from cdrl.metrics import METRICS

FORMAT = 2
#: A tolerance derived from the seed-to-seed spread needs that spread measured on this many seeds.
MIN_BASELINE_SEEDS = 3


def point_key(model: str, steps: int, guidance: float, source: str) -> str:
    """A table row's key: ``model/K15`` (+ ``/w2``) (+ ``@checkpoint-…`` for a given or stored checkpoint)."""
    if source == "data":
        return f"{model}/floor"
    key = f"{model}/K{steps}" + (f"/w{guidance:g}" if guidance else "")
    return key if source in ("", "trained") else f"{key}@{source}"


def results_from_runs(suite: Suite, profile: str, tracking_uri: str | None = None) -> dict:
    """Every finished evaluation of a suite profile, per point and seed, as a results document."""
    runs = latest_per_key(finished_eval_runs(suite.experiment, suite.name, suite.version, profile, tracking_uri))
    points: dict[str, dict] = {}
    if not runs.empty:
        runs = runs.assign(_seed=runs[f"tags.{TAG_SEED}"].astype(int)).sort_values("_seed")
        for _, run in runs.iterrows():
            key = point_key(run[f"tags.{TAG_MODEL}"], int(run[f"tags.{TAG_STEPS}"]),
                            float(run[f"tags.{TAG_GUIDANCE}"]), run[f"tags.{TAG_SOURCE}"])
            point = points.setdefault(key, {"seeds": [], "metrics": {}})
            point["seeds"].append(int(run["_seed"]))
            generated = run.get("params.eval.n_generated")
            if isinstance(generated, str) and generated.isdigit():
                point["n_samples"] = int(generated)
            for metric in suite.metrics:
                # Not finite: not reported. A point whose metric no seed reported fails the check.
                value = run.get(f"metrics.{metric}")
                if value is not None and math.isfinite(value):
                    point["metrics"].setdefault(metric, []).append(round(float(value), 7))
    return {"suite": suite.name, "suite_version": suite.version, "profile": profile, "format": FORMAT,
            "points": points, "recorded": _environment()}


def _environment() -> dict:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_description(),
            "threads": torch.get_num_threads()}


def cpu_description() -> str:
    """The processor and the vector code PyTorch runs on it, e.g. "Intel(R) Xeon(R) Processor (AVX512)"."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as lines:
            name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def other_machine(recorded: dict) -> str:
    """How the machine that recorded a baseline differs from this one ("" when they agree, or it is unknown)."""
    here = {"torch": torch.__version__, "cpu": cpu_description()}
    differences = [f"{key} {recorded[key]} there, {value} here" for key, value in here.items()
                   if recorded.get(key) not in (None, value)]
    return "; ".join(differences)


def write_results(document: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def read_results(path: Path, option: str = "--baseline") -> dict:
    """A results document, given as ``option``; refused with the fix when it cannot be checked against.

    ``check --update --baseline PATH`` writes one (the current runs); ``--results`` reads such a file
    instead of the runs.
    """
    rewrite = f"`cdrl-bench check --update --baseline {path}` writes the current runs there"
    if not path.is_file():
        instead = ", or drop --results to check the runs in MLflow" if option == "--results" else ""
        raise SuiteError(f"{option} {path} does not exist: {rewrite}{instead}")
    check_results_file(path, option, FORMAT, rewrite)
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SuiteError(f"{option} {path} is not valid JSON ({error}): {rewrite}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SuiteError(f"{option} {path} is not a format-{FORMAT} results file (per-seed values): {rewrite}")
    if not isinstance(document.get("points"), dict) or not any(
            point.get("metrics") for point in document["points"].values()):
        raise SuiteError(f"{option} {path} checks nothing (no points with metrics): {rewrite} after running the "
                         "suite")
    for point, values in document["points"].items():
        for metric, measured in values.get("metrics", {}).items():
            if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in measured):
                raise SuiteError(f"{option} {path}: {metric} of {point} holds a value that is not a finite number "
                                 f"({measured}): {rewrite}")
    return document


def seed_spread(values: Sequence[float], metric: str, n_samples: int | None = None) -> float:
    """Seed-to-seed standard deviation of a metric's values (NaN below two seeds); for a share of
    ``n_samples`` independent samples at least the binomial sqrt(p (1 - p) / n), which a few seeds can
    underestimate (and one seed cannot measure), unless the values do not vary with the seed."""
    measured = statistics.stdev(values) if len(values) > 1 else math.nan
    # Equal at every seed: the same samples each time (a data floor's fixed images), no sampling noise to bound.
    if not METRICS[metric].proportion or not n_samples or measured == 0:
        return measured
    share = min(max(statistics.fmean(values), 0.0), 1.0)
    binomial = math.sqrt(share * (1 - share) / n_samples)
    return binomial if math.isnan(measured) else max(measured, binomial)


def standard_error(values: Sequence[float], metric: str, n_samples: int | None = None) -> float:
    """Standard error of the mean of a metric's values over seeds: :func:`seed_spread` / sqrt(seeds)."""
    return seed_spread(values, metric, n_samples) / math.sqrt(len(values)) if values else math.nan


@dataclass(frozen=True)
class Comparison:
    point: str
    metric: str
    baseline: tuple[float, ...]
    current: tuple[float, ...]
    k: float
    floor: float = 0.0
    #: Samples per evaluation, for the binomial bound of a proportion's std (None: unknown).
    n_samples: int | None = None
    #: Seeds evaluated at this point now; fewer values than seeds means some were not finite.
    seeds: int = 0

    @property
    def baseline_mean(self) -> float:
        return statistics.fmean(self.baseline)

    @property
    def current_mean(self) -> float:
        return statistics.fmean(self.current) if self.current else math.nan

    @property
    def sigma(self) -> float:
        """Seed-to-seed standard deviation measured in the baseline (:func:`seed_spread`)."""
        return seed_spread(self.baseline, self.metric, self.n_samples)

    @property
    def tolerance(self) -> float:
        standard_error = self.sigma * math.sqrt(1 / len(self.baseline) + 1 / max(len(self.current), 1))
        return max(self.k * standard_error, self.floor)

    @property
    def worse_by(self) -> float:
        difference = self.current_mean - self.baseline_mean
        return -difference if METRICS[self.metric].higher_is_better else difference

    @property
    def missing_seeds(self) -> int:
        """Seeds that were evaluated but reported no finite value (a diverged run logs none)."""
        return max(self.seeds - len(self.current), 0)

    @property
    def regressed(self) -> bool:
        return not math.isfinite(self.current_mean) or self.missing_seeds > 0 or self.worse_by > self.tolerance

    def describe(self) -> str:
        direction = "higher" if METRICS[self.metric].higher_is_better else "lower"
        if self.missing_seeds:
            return (f"{self.metric} of {self.point} is not finite at {self.missing_seeds} of its {self.seeds} seeds "
                    "(diverged, or the metric failed): the method's numbers broke")
        return (f"{self.metric} of {self.point} is {self.current_mean:.4g} over {len(self.current)} seeds, worse "
                f"than the baseline's {self.baseline_mean:.4g} by {self.worse_by:.3g} > tolerance "
                f"{self.tolerance:.3g} ({direction} is better)")


@dataclass(frozen=True)
class FingerprintComparison:
    name: str
    drift: float
    tolerance: float
    #: How many samples the fingerprint holds (its drift is the median sample's); 1: a training fingerprint.
    samples: int = 1

    @property
    def regressed(self) -> bool:
        return not self.drift <= self.tolerance

    def describe(self) -> str:
        measured = f"the median of {self.samples} samples" if self.samples > 1 else "the largest entry"
        return (f"fingerprint {self.name} drifted by {self.drift:.3g} (relative, {measured}) > tolerance "
                f"{self.tolerance:g}: the method's numbers changed")


def compare(suite: Suite, baseline: dict, current: dict, k: float | None = None) -> list[Comparison]:
    """Every (point, metric) of the baseline, compared with the current results; refuses what cannot be compared."""
    for document, name in ((baseline, "baseline"), (current, "results")):
        if (document.get("suite"), document.get("suite_version")) != (suite.name, suite.version):
            raise SuiteError(f"the {name} are of suite {document.get('suite')} v{document.get('suite_version')}, "
                             f"not {suite.name} v{suite.version}: regenerate the baseline with "
                             f"`cdrl-bench check --suite {suite.name} --update --baseline FILE`")
    if baseline.get("profile") != current.get("profile"):
        flag = " --quick" if baseline.get("profile") == "quick" else ""
        raise SuiteError(f"the baseline is of the {baseline.get('profile')} profile and the results of the "
                         f"{current.get('profile')} profile: pass a {current.get('profile')}-profile baseline, "
                         f"or check with `cdrl-bench check{flag}` after `cdrl-bench run{flag}`")
    missing = [point for point in baseline["points"] if not current["points"].get(point, {}).get("metrics")]
    if missing:
        raise SuiteError(f"no current result for {len(missing)} baseline point(s) ({', '.join(missing[:4])}"
                         f"{', …' if len(missing) > 4 else ''}): run `cdrl-bench run --suite {suite.name}"
                         f"{' --quick' if current.get('profile') == 'quick' else ''}` first")
    _refuse_unchecked(suite, baseline, current)
    comparisons = []
    for point, values in baseline["points"].items():
        for metric, measured in values["metrics"].items():
            if metric not in METRICS:
                raise SuiteError(f"the baseline names an unknown metric {metric!r}: regenerate it with --update")
            if len(measured) < MIN_BASELINE_SEEDS:
                raise SuiteError(f"the baseline has {len(measured)} seed(s) of {metric} at {point}: a tolerance needs "
                                 f"the seed-to-seed spread of at least {MIN_BASELINE_SEEDS}; rebuild it with "
                                 f"`cdrl-bench run --suite {suite.name} --seeds 10` and `check --update`")
            now = current["points"][point]
            found = now["metrics"].get(metric, [])
            comparisons.append(Comparison(point, metric, tuple(measured), tuple(found), suite.check_k if k is None
                                          else k, suite.tolerance_floors.get(metric, 0.0),
                                          values.get("n_samples"), len(now.get("seeds", found))))
    return comparisons


def _refuse_unchecked(suite: Suite, baseline: dict, current: dict) -> None:
    """Results the baseline cannot check are refused, not passed: points or metrics it lacks, another sample count."""
    rebuild = (f"rebuild the baseline from this code (`cdrl-bench run --suite {suite.name} --seeds 8`, then "
               "`check --update`) so that they are checked")
    new = []
    for point, values in current["points"].items():
        if point not in baseline["points"]:
            new.append(point)
        else:
            new += [f"{metric} of {point}" for metric in values.get("metrics", {})
                    if metric not in baseline["points"][point]["metrics"]]
    if new:
        raise SuiteError(f"the results hold {len(new)} point(s) or metric(s) the baseline lacks "
                         f"({', '.join(new[:4])}{', …' if len(new) > 4 else ''}): {rebuild}")
    for point, values in baseline["points"].items():
        stored, now = values.get("n_samples"), current["points"][point].get("n_samples")
        if stored and now and stored != now:
            raise SuiteError(f"{point} was scored on {now} samples, the baseline on {stored}: FID and KID depend "
                             f"on the count; score as many, or {rebuild}")


def compare_fingerprints(suite: Suite, baseline: dict, current: dict[str, list[float]]
                         ) -> list[FingerprintComparison]:
    from benchmarks.fingerprint import drift, samples_per_fingerprint

    stored = baseline.get("fingerprints") or {}
    if suite.fingerprint_tolerance is None:
        return []
    if not stored:
        raise SuiteError(f"suite {suite.name} checks fingerprints but the baseline has none: rewrite it with "
                         "`cdrl-bench check --update`")
    samples = samples_per_fingerprint(suite)
    return [FingerprintComparison(name, drift(current.get(name, []), values, samples.get(name, 1)),
                                  suite.fingerprint_tolerance, samples.get(name, 1)) for name, values in stored.items()]
