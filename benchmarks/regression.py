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
a metric whose sigma can be 0 gets the suite's ``tolerance_floors`` as its smallest tolerance.
A point whose inputs are fixed (a stored or given checkpoint, a data floor) is checked in both
directions: only the code can move it, so a number that got *better* by more than the
tolerance fails too. Trained points stay one-sided: a better training is no finding.

What else must equal the baseline's: each point's recorded protocol (backend, resize mode,
Inception weights, reference split and counts, sampler options: everything but paths, seeds
and library versions); the fingerprints (:mod:`benchmarks.fingerprint`: fixed-seed samples of
the stored models, within ``fingerprint_tolerance``; :mod:`benchmarks.ruler`: the metrics and
dataset pipelines on fixed inputs, within ``ruler_tolerance``); and, with ``[check] configs``,
the resolved config of every preset and suite model (:mod:`benchmarks.resolved_configs`).
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

from benchmarks.records import finished_eval_runs, latest_per_key
from benchmarks.results_schema import check_results_file
from benchmarks.ruler import PREFIX as RULER_PREFIX
from benchmarks.suite import EvalPoint, Suite, SuiteError, results_path
from cdrl.metrics import METRICS
from cdrl.tags import TAG_GUIDANCE, TAG_MODEL, TAG_SEED, TAG_SOURCE, TAG_STEPS
from cdrl.store import Store

FORMAT = 2
#: A tolerance derived from the seed-to-seed spread needs that spread measured on this many seeds.
MIN_BASELINE_SEEDS = 3
#: How to rebuild a baseline after an intended change: on a trusted commit, from every seed the suite asks.
REBUILD = "results/gate/README.md, 'Rebuilding the baseline'"


def rebuild_hint(suite: Suite) -> str:
    return (f"on a trusted commit, `cdrl-bench run --suite {suite.name} --seeds {suite.check.baseline_seeds}` then "
            f"`cdrl-bench check --suite {suite.name} --update` (results/gate/README.md)")


#: Protocol entries that say where or when rather than how a number was measured: the machine's
#: paths, the seed (one per run; the points' seeds are compared apart), the library's version.
_PROTOCOL_LOCAL = ("checkpoint", "seed", "weights_file", "weights_source", "backend_version")
_PROTOCOL_PREFIX = "params.eval."


def _protocol(run) -> dict[str, str]:
    """A run's protocol entries in name order (a baseline's diff shows only what changed)."""
    return {name[len(_PROTOCOL_PREFIX):]: value for name, value in sorted(run.items())
            if name.startswith(_PROTOCOL_PREFIX) and isinstance(value, str)
            and name[len(_PROTOCOL_PREFIX):] not in _PROTOCOL_LOCAL}


def results_from_runs(suite: Suite, profile: str, tracking_uri: Store | str | None = None) -> dict:
    """Every finished evaluation of a suite profile, per point and seed, as a results document."""
    runs = latest_per_key(finished_eval_runs(suite.experiment, suite.name, suite.version, profile, tracking_uri))
    points: dict[str, dict] = {}
    if not runs.empty:
        runs = runs.assign(_seed=runs[f"tags.{TAG_SEED}"].astype(int)).sort_values("_seed")
        for _, run in runs.iterrows():
            key = EvalPoint(run[f"tags.{TAG_MODEL}"], int(run[f"tags.{TAG_STEPS}"]), float(run[f"tags.{TAG_GUIDANCE}"]),
                            run[f"tags.{TAG_SOURCE}"]).key()
            point = points.setdefault(key, {"seeds": [], "metrics": {}, "protocol": _protocol(run)})
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

    A baseline is built on a trusted commit from every seed its suite asks (:data:`REBUILD`);
    ``--results`` reads a results file written the same way instead of the runs in MLflow.
    """
    fix = (f"pass the suite's stored baseline (the default), or build one on a trusted commit ({REBUILD})"
           if option == "--baseline" else "drop --results to check the runs in MLflow")
    if not path.is_file():
        raise SuiteError(f"{option} {path} does not exist: {fix}")
    document = check_results_file(path, option, FORMAT, fix)
    if not any(point.get("metrics") for point in document["points"].values()):
        raise SuiteError(f"{option} {path} checks nothing (no points with metrics): {fix}")
    for point, values in document["points"].items():
        for metric, measured in values.get("metrics", {}).items():
            if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in measured):
                raise SuiteError(f"{option} {path}: {metric} of {point} holds a value that is not a finite number "
                                 f"({measured}): {fix}")
    return document


def refuse_thin_baseline(suite: Suite, document: dict) -> None:
    """A baseline's tolerances are its seed-to-seed spread: ``--update`` refuses points with fewer seeds than
    the suite's ``[check] baseline_seeds``."""
    wanted = suite.check.baseline_seeds
    thin = {point: len(values["seeds"]) for point, values in document["points"].items()
            if len(values["seeds"]) < wanted}
    if thin:
        shown = ", ".join(f"{point} ({count})" for point, count in list(thin.items())[:3])
        raise SuiteError(f"--update writes a baseline, whose tolerances are the seed-to-seed spread of "
                         f"{wanted} seeds, but the runs hold fewer at {len(thin)} point(s): {shown}"
                         f"{', …' if len(thin) > 3 else ''}: {rebuild_hint(suite)}")


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
    #: Fixed inputs (:meth:`EvalPoint.fixed_inputs`): a change in either direction beyond the tolerance fails.
    two_sided: bool = False

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
    def changed_for_the_better(self) -> bool:
        """Better than the baseline beyond the tolerance, on fixed inputs: the code that measures changed."""
        return self.two_sided and -self.worse_by > self.tolerance

    @property
    def missing_seeds(self) -> int:
        """Seeds that were evaluated but reported no finite value (a diverged run logs none)."""
        return max(self.seeds - len(self.current), 0)

    @property
    def regressed(self) -> bool:
        return (not math.isfinite(self.current_mean) or self.missing_seeds > 0 or self.worse_by > self.tolerance
                or self.changed_for_the_better)

    @property
    def status(self) -> str:
        if not self.regressed:
            return "ok"
        return "CHANGED (better)" if self.changed_for_the_better else "REGRESSED"

    def describe(self) -> str:
        direction = "higher" if METRICS[self.metric].higher_is_better else "lower"
        if self.missing_seeds:
            return (f"{self.metric} of {self.point} is not finite at {self.missing_seeds} of its {self.seeds} seeds "
                    "(diverged, or the metric failed): the method's numbers broke")
        if self.changed_for_the_better:
            return (f"{self.metric} of {self.point} changed beyond noise, better: {self.current_mean:.4g} over "
                    f"{len(self.current)} seeds against the baseline's {self.baseline_mean:.4g}, by {-self.worse_by:.3g} "
                    f"> tolerance {self.tolerance:.3g} ({direction} is better); its inputs are fixed, so the code that "
                    f"samples or measures them changed: if intended, rebuild the baseline ({REBUILD})")
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
        changed = ("the ruler's numbers changed (a metric, the image pipeline or a dataset's)"
                   if self.name.startswith(RULER_PREFIX) else "the method's numbers changed")
        return (f"fingerprint {self.name} drifted by {self.drift:.3g} (relative, {measured}) > tolerance "
                f"{self.tolerance:g}: {changed}")


def compare(suite: Suite, baseline: dict, current: dict, k: float | None = None) -> list[Comparison]:
    """Every (point, metric) of the baseline, compared with the current results; refuses what cannot be compared."""
    for document, name in ((baseline, "baseline"), (current, "results")):
        if (document.get("suite"), document.get("suite_version")) != (suite.name, suite.version):
            raise SuiteError(f"the {name} are of suite {document.get('suite')} v{document.get('suite_version')}, "
                             f"not {suite.name} v{suite.version}: rebuild the baseline {rebuild_hint(suite)}")
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
                raise SuiteError(f"the baseline names an unknown metric {metric!r}: rebuild it ({REBUILD})")
            if len(measured) < MIN_BASELINE_SEEDS:
                raise SuiteError(f"the baseline has {len(measured)} seed(s) of {metric} at {point}: a tolerance needs "
                                 f"the seed-to-seed spread of at least {MIN_BASELINE_SEEDS}; rebuild it "
                                 f"{rebuild_hint(suite)}")
            now = current["points"][point]
            found = now["metrics"].get(metric, [])
            comparisons.append(Comparison(point, metric, tuple(measured), tuple(found), suite.check.k if k is None
                                          else k, suite.check.tolerance_floors.get(metric, 0.0),
                                          values.get("n_samples"), len(now.get("seeds", found)),
                                          two_sided=EvalPoint.fixed_inputs(point)))
    return comparisons


def _refuse_unchecked(suite: Suite, baseline: dict, current: dict) -> None:
    """Results the baseline cannot check are refused, not passed: points or metrics it lacks, another sample count."""
    rebuild = f"rebuild the baseline from this code so that they are checked: {rebuild_hint(suite)}"
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
    """Every stored fingerprint against the current one: a model's within ``fingerprint_tolerance`` (of its
    median sample), the ruler's within ``ruler_tolerance`` (of its largest entry)."""
    from benchmarks.fingerprint import drift, samples_per_fingerprint

    stored = baseline.get("fingerprints") or {}
    if suite.check.fingerprint_tolerance is None and suite.check.ruler_tolerance is None:
        return []
    if not stored:
        raise SuiteError(f"suite {suite.name} checks fingerprints but the baseline has none: rebuild it "
                         f"{rebuild_hint(suite)}")
    new = sorted(current.keys() - stored.keys())
    if new:
        raise SuiteError(f"the baseline lacks {len(new)} fingerprint(s) this code computes ({', '.join(new[:4])}"
                         f"{', …' if len(new) > 4 else ''}): rebuild it {rebuild_hint(suite)}")
    samples = samples_per_fingerprint(suite)
    comparisons = []
    for name, values in stored.items():
        ruler = name.startswith(RULER_PREFIX)
        tolerance = suite.check.ruler_tolerance if ruler else suite.check.fingerprint_tolerance
        if tolerance is None:
            raise SuiteError(f"the baseline holds fingerprint {name} but suite {suite.name} sets no "
                             f"{'ruler' if ruler else 'fingerprint'}_tolerance: rebuild it {rebuild_hint(suite)}")
        count = samples.get(name, 1)
        comparisons.append(FingerprintComparison(name, drift(current.get(name, []), values, count), tolerance, count))
    return comparisons


@dataclass(frozen=True)
class Mismatch:
    """Something that must equal the baseline's and does not: a point's protocol, a resolved config."""

    kind: str
    name: str
    detail: str

    @property
    def regressed(self) -> bool:
        return True  # a mismatch is a failure: nothing of it may differ

    def describe(self) -> str:
        return (f"{self.kind} {self.name} changed: {self.detail}; the same numbers now mean something else: if "
                f"intended, rebuild the baseline ({REBUILD})")


def compare_protocols(baseline: dict, current: dict) -> list[Mismatch]:
    """Each point's recorded protocol against the baseline's, entry by entry."""
    mismatches = []
    for point, values in baseline["points"].items():
        stored, now = values.get("protocol"), current["points"].get(point, {}).get("protocol")
        if stored is None or now is None:
            continue  # results written before protocols were recorded: nothing to compare
        changed = [f"{key} {stored.get(key, 'absent')} → {now.get(key, 'absent')}"
                   for key in sorted(stored.keys() | now.keys()) if stored.get(key) != now.get(key)]
        if changed:
            mismatches.append(Mismatch("protocol of", point, ", ".join(changed)))
    return mismatches


def compare_configs(suite: Suite, baseline: dict, current: dict[str, dict]) -> list[Mismatch]:
    """The resolved configs (:mod:`benchmarks.resolved_configs`) against the baseline's, field by field."""
    from benchmarks.resolved_configs import config_changes

    if not suite.check.configs:
        return []
    if "configs" not in baseline:
        raise SuiteError(f"suite {suite.name} checks resolved configs but the baseline has none: rebuild it "
                         f"{rebuild_hint(suite)}")
    return [Mismatch("config", name, detail) for name, detail in config_changes(baseline["configs"], current)]


def stored_baseline(suite: Suite) -> Path:
    """The baseline shipped for a suite (``results/baselines/NAME.json``, in the checkout or the installed wheel)."""
    return results_path(f"results/baselines/{suite.name}.json")


@dataclass(frozen=True)
class Verdict:
    """Everything ``check`` compared, and what failed."""

    comparisons: list[Comparison]
    fingerprints: list[FingerprintComparison]
    mismatches: list[Mismatch]

    @property
    def failures(self) -> list[Comparison | FingerprintComparison | Mismatch]:
        return [item for item in (*self.comparisons, *self.fingerprints, *self.mismatches) if item.regressed]

    def to_json(self) -> dict:
        return {
            "passed": not self.failures,
            "metrics": [{"point": item.point, "metric": item.metric, "baseline": list(item.baseline),
                         "current": list(item.current), "sigma": item.sigma, "tolerance": item.tolerance,
                         "worse_by": item.worse_by, "two_sided": item.two_sided, "status": item.status}
                        for item in self.comparisons],
            "fingerprints": [{"name": item.name, "drift": item.drift, "tolerance": item.tolerance,
                              "status": "DRIFTED" if item.regressed else "ok"} for item in self.fingerprints],
            "mismatches": [{"kind": item.kind, "name": item.name, "detail": item.detail} for item in self.mismatches],
            "failures": [item.describe() for item in self.failures],
        }


def judge(suite: Suite, baseline: dict, current: dict, k: float | None = None) -> Verdict:
    """The check of current results against a baseline: metrics, protocols, fingerprints and configs."""
    from benchmarks.fingerprint import fingerprints

    comparisons = compare(suite, baseline, current, k)
    mismatches = compare_protocols(baseline, current)
    if suite.check.configs:
        from benchmarks.resolved_configs import resolved_configs

        mismatches += compare_configs(suite, baseline, resolved_configs())
    return Verdict(comparisons, compare_fingerprints(suite, baseline, fingerprints(suite)), mismatches)


def baseline_document(suite: Suite, current: dict) -> dict:
    """Current results as a baseline: refused below the suite's seeds; with fingerprints and configs it checks."""
    from benchmarks.fingerprint import fingerprints

    refuse_thin_baseline(suite, current)
    document = {**current, "fingerprints": fingerprints(suite)}
    if suite.check.configs:
        from benchmarks.resolved_configs import resolved_configs

        document["configs"] = resolved_configs()
    return document


def current_results(suite: Suite, profile: str, results: Path | None, store: Store | None = None,
                    named: str | None = None) -> dict:
    """What ``check`` judges: a results file when given, else the suite's finished runs in the store (refused,
    with the command that makes them, when there are none: ``named`` is the suite as the user named it)."""
    if results is not None:
        return read_results(results, "--results")
    store = Store.resolve(store)
    current = results_from_runs(suite, profile, store)
    if not current["points"]:
        given = f" --tracking-uri {store}" if store.source.startswith("--tracking-uri") else ""
        raise SuiteError(f"no finished runs of suite {suite.name} ({profile} profile) in the MLflow store: run "
                         f"`cdrl-bench run --suite {named or suite.name}{' --quick' if profile == 'quick' else ''}{given}` "
                         "first")
    return current


def update_baseline(suite: Suite, current: dict, path: Path) -> str:
    """Write ``current`` as the suite's baseline at ``path`` (:func:`baseline_document`); the line saying so."""
    document = baseline_document(suite, current)
    configs = f", {len(document['configs'])} configs" if "configs" in document else ""
    return (f"wrote {write_results(document, path)} ({len(document['points'])} points, "
            f"{len(document['fingerprints'])} fingerprints{configs})")


def print_verdict(verdict: Verdict, title: str, console) -> None:
    """The verdict's tables on ``console``: every metric with its tolerance, every fingerprint's drift, every
    mismatch."""
    from rich.markup import escape
    from rich.table import Table

    comparisons = verdict.comparisons
    report = Table(title=title, caption=f"tolerance = k·σ·√(1/n_baseline + 1/n_current), k = {comparisons[0].k:g}; "
                                        "σ: seed-to-seed std in the baseline; ± standard error; ⇅: fixed inputs, "
                                        "checked in both directions", caption_justify="left")
    for column in ("point", "metric", "baseline", "current", "σ", "tolerance", "worse by", "status"):
        report.add_column(column, justify="left" if column in ("point", "metric") else "right")

    def mean_and_error(values: tuple[float, ...], item: Comparison) -> str:
        if not values:
            return "missing"
        error = standard_error(values, item.metric, item.n_samples)  # as the tables compute it
        return f"{statistics.fmean(values):.4g} ± {error:.2g} ({len(values)})"

    for item in comparisons:
        colour = "green" if not item.regressed else "red"
        report.add_row(item.point + (" ⇅" if item.two_sided else ""), item.metric, mean_and_error(item.baseline, item),
                       mean_and_error(item.current, item), f"{item.sigma:.2g}", f"{item.tolerance:.2g}",
                       f"{item.worse_by:+.2g}", f"[{colour}]{item.status}[/]")
    console.print(report, width=max(console.width, 150))  # one line per metric, also in CI logs
    if verdict.fingerprints:
        prints = Table(title="fingerprints: relative drift from the baseline (of the median sample; of the largest "
                             "entry for training and ruler; fixed seeds and inputs)")
        for column in ("fingerprint", "drift", "tolerance", "status"):
            prints.add_column(column, justify="left" if column == "fingerprint" else "right")
        for item in verdict.fingerprints:
            prints.add_row(item.name, f"{item.drift:.2g}", f"{item.tolerance:g}",
                           "[red]DRIFTED[/]" if item.regressed else "[green]ok[/]")
        console.print(prints, width=max(console.width, 150))
    for item in verdict.mismatches:
        console.print(f"[red]CHANGED[/] {escape(item.kind)} {escape(item.name)}: {escape(item.detail)}",
                      highlight=False, soft_wrap=True)


def print_failures(verdict: Verdict, baseline: dict, errors) -> None:
    """Each failure on ``errors``, one line each, and a note when the baseline was recorded on another machine."""
    from rich.markup import escape

    for item in verdict.failures:
        errors.print(f"[bold red]regression:[/] {escape(item.describe())}", highlight=False, soft_wrap=True)
    elsewhere = other_machine(baseline.get("recorded") or {})
    if elsewhere and any(item.regressed for item in verdict.fingerprints):  # one machine's kernels
        errors.print(f"note: the baseline was recorded on another machine ({elsewhere}); if the code did not change, "
                     "the drift is the machines': rebuild the baseline on the machine CI runs on "
                     "(results/gate/README.md)", highlight=False, soft_wrap=True)


def passed_line(suite: Suite, verdict: Verdict) -> str:
    """What ``check`` says when nothing failed."""
    prints = f", {len(verdict.fingerprints)} fingerprints unchanged" if verdict.fingerprints else ""
    return (f"check passed: {len(verdict.comparisons)} metrics within tolerance{prints}, "
            f"protocols{' and resolved configs' if suite.check.configs else ''} equal")
