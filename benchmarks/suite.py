"""Benchmark suites: versioned, declarative TOML files under ``benchmarks/suites/``, expanded into runs.

A suite names the models to train (a preset, a method, ablations and overrides), where to
evaluate each (Langevin steps per level, guidance weights), the seeds and sample counts of
its two profiles (``full`` and ``quick``), the metrics of its table, the paper's table it
is compared with (a CSV of ``results/paper/``) and, for CI, the tolerances of its regression
check. ``benchmarks/suites/README.md`` describes every key.

:func:`expand` turns a suite into a :class:`Plan`: one :class:`TrainingJob` per (model,
seed) and one :class:`EvalJob` per (model, steps, guidance, seed), each with a stable run
key (``cdrl/seed0``, ``cdrl/K5/seed0``, ``cond/K15/w0.3/seed0``). With a checkpoint instead
of training, every model whose preset and method the checkpoint matches is evaluated from
it, under keys prefixed by the checkpoint's hash.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from baselines import ablation_overrides, apply_method
from cdrl.config import ConfigError, ExperimentConfig, apply_overrides, preset
from cdrl.errors import CdrlBenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

REPO_FOLDER = Path(__file__).resolve().parent.parent
#: A wheel carries results/paper and results/gate as benchmarks/results/... (pyproject.toml).
INSTALLED_RESULTS = Path(__file__).resolve().parent / "results"


def results_path(relative: str | os.PathLike) -> Path:
    """``results/...`` of this checkout, or the copy an installed wheel carries when there is no checkout."""
    checkout = REPO_FOLDER / relative
    parts = Path(relative).parts
    if checkout.exists() or not parts or parts[0] != "results":
        return checkout
    return INSTALLED_RESULTS.joinpath(*parts[1:])


SUITES_FOLDER = Path(__file__).resolve().parent / "suites"
PAPER_FOLDER = results_path("results/paper")
PROFILES = ("full", "quick")
CHECKPOINT_SELECTIONS = ("best", "last")


class SuiteError(CdrlBenchError):
    """A suite file that cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class MetricInfo:
    label: str
    higher_is_better: bool
    #: Decimal places in tables.
    decimals: int
    #: A share of samples: its seed-to-seed std is at least the binomial sqrt(p (1 - p) / n).
    proportion: bool = False


#: Every metric a suite can tabulate or check; the one source of their directions.
METRICS: dict[str, MetricInfo] = {
    "fid": MetricInfo("FID", False, 2),
    "kid_mean": MetricInfo("KID", False, 4),
    "inception_score": MetricInfo("IS", True, 2),
    "in_support_fraction": MetricInfo("in-support", True, 3, proportion=True),
    "mode_coverage": MetricInfo("mode coverage", True, 3),
    "energy_distance": MetricInfo("energy distance", False, 4),
    "class_accuracy": MetricInfo("class accuracy", True, 3, proportion=True),
}


@dataclass(frozen=True)
class Profile:
    """Budget of one way of running a suite: ``full`` (the suite's own) or ``quick`` (``--quick``)."""

    #: Training iterations; None keeps the preset's.
    iterations: int | None
    n_samples: int
    seeds: tuple[int, ...]
    #: Reference images for image metrics; None: the whole split.
    n_reference: int | None = None
    #: Extra training overrides of this profile (e.g. a smaller batch).
    overrides: tuple[str, ...] = ()
    #: Best-checkpoint selection: score every this many iterations on this many samples (None: the preset's).
    select_every: int | None = None
    select_samples: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One trained model of a suite and where it is evaluated."""

    key: str
    label: str
    method: str
    preset: str
    ablations: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    #: Langevin steps per level to sample with; empty: the training count.
    steps: tuple[int, ...] = ()
    guidance: tuple[float, ...] = (0.0,)
    #: Columns and values that pick this model's row in the reference CSV (e.g. method = "CDRL").
    paper: dict[str, str] = field(default_factory=dict)
    #: A stored checkpoint (relative to the repository) sampled instead of training the model.
    checkpoint: str | None = None
    #: The data-vs-data floor: real data scored as if it were samples (the preset names the data).
    floor: bool = False
    #: At most this many samples per evaluation (e.g. fewer images than 2-D points in one suite).
    n_samples: int | None = None
    #: The global training batch (all processes together); None: the suite's.
    global_batch: int | None = None
    #: Score the trainings of that model (by key) instead of training one: another protocol, one model.
    scores: str | None = None
    #: This row's evaluation protocol where it differs from the suite's: the reference split, the
    #: number of reference images, and overrides of the reference data (e.g. another image pipeline).
    reference_split: str | None = None
    n_reference: int | None = None
    reference_overrides: tuple[str, ...] = ()

    def samples(self, profile: "Profile") -> int:
        return min(profile.n_samples, self.n_samples or profile.n_samples)

    @property
    def checkpoint_path(self) -> Path | None:
        if self.checkpoint is None:
            return None
        path = Path(self.checkpoint)
        return path if path.is_absolute() else results_path(path)


PLOT_AXES = ("total_steps", "guidance")


@dataclass(frozen=True)
class PlotSpec:
    #: Measured metric on the y axis.
    metric: str
    #: Reference CSV column drawn beside it (on a second axis when it is another metric).
    paper: str | None = None
    #: x axis: total Langevin steps (levels x steps per level) or the guidance weight.
    x: str = "total_steps"
    #: A second measured metric on the right axis (e.g. class accuracy against FID: a trade-off).
    secondary: str | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    title: str
    path: Path
    experiment: str
    models: tuple[ModelSpec, ...]
    metrics: tuple[str, ...]
    profiles: dict[str, Profile]
    #: Training overrides shared by every model.
    overrides: tuple[str, ...] = ()
    backend: str = "torch-fidelity"
    reference_split: str = "train"
    batch_size: int = 256
    #: The global training batch of every model without its own (``training.batch_size``).
    global_batch: int | None = None
    #: Which checkpoint of a training is scored: "best" (by the selection score) or "last".
    checkpoint_selection: str = "best"
    #: CSV of results/paper/ with the paper's numbers; None: no paper column.
    reference: str | None = None
    #: Heading of the paper columns (e.g. "paper CIFAR-10" for a CPU-scale trend study).
    reference_label: str = "paper"
    #: Also list the reference rows no model matches (the rest of the paper's table).
    context_rows: bool = False
    plot: PlotSpec | None = None
    #: Regression check: a metric fails when worse than the baseline's mean by more than
    #: k standard errors of the difference of means (seed-to-seed std measured in the baseline).
    check_k: float = 4.0
    #: Smallest tolerance per metric, for metrics whose seed-to-seed std can be 0 (e.g. coverage).
    tolerance_floors: dict[str, float] = field(default_factory=dict)
    #: Also compare numerical fingerprints of the stored checkpoints (benchmarks.fingerprint): the
    #: largest relative drift allowed; None: no fingerprints.
    fingerprint_tolerance: float | None = None
    notes: str = ""

    @property
    def reference_path(self) -> Path | None:
        return PAPER_FOLDER / self.reference if self.reference else None


@dataclass(frozen=True)
class TrainingJob:
    key: str
    model: ModelSpec
    seed: int
    config: ExperimentConfig


@dataclass(frozen=True)
class EvalJob:
    key: str
    model: ModelSpec
    #: The run that produces the checkpoint; None when evaluating a given or stored checkpoint, or data.
    training: TrainingJob | None
    steps_per_level: int
    noise_levels: int
    guidance: float
    seed: int
    n_samples: int
    #: "trained", "checkpoint-<sha256 prefix>" (a given or stored checkpoint) or "data" (a floor row).
    source: str = "trained"
    #: The checkpoint to sample when there is no training.
    checkpoint: Path | None = None
    #: The config of a floor row (its data); None otherwise.
    floor_config: ExperimentConfig | None = None
    #: The config saved in ``checkpoint``, when there is no training.
    checkpoint_config: ExperimentConfig | None = None

    def training_summary(self, policy: str) -> tuple[str, str]:
        """(global batch, checkpoint selection) of the model this job scores, for plans and tables."""
        if self.floor_config is not None:
            return "", "data"
        if self.training is None:
            batch = self.checkpoint_config.training.batch_size if self.checkpoint_config else None
            return (str(batch) if batch else "?"), "given"
        config = self.training.config
        return str(config.training.batch_size), selection_rule(config, policy)

    @property
    def point(self) -> tuple[str, int, float]:
        """The table row this run contributes to (seeds are averaged)."""
        return self.model.key, self.steps_per_level, self.guidance


@dataclass(frozen=True)
class Plan:
    suite: Suite
    profile: str
    #: "trained", or "checkpoint-<sha256 prefix>" when a given checkpoint is evaluated.
    source: str
    trainings: tuple[TrainingJob, ...]
    evaluations: tuple[EvalJob, ...]
    #: Models left out because the given checkpoint does not match them, with the reason.
    skipped: tuple[str, ...] = ()


# --------------------------------------------------------------------------- loading

def available_suites() -> list[str]:
    return sorted(path.stem for path in SUITES_FOLDER.glob("*.toml"))


def suite_path(name: str | os.PathLike) -> Path:
    """The file of suite ``name`` (a name under benchmarks/suites/, or a path to a .toml file)."""
    path = Path(name)
    if path.suffix == ".toml":
        if not path.is_file():
            raise SuiteError(f"suite file {path} does not exist: pass a suite name ({', '.join(available_suites())}) "
                             "or the path of a .toml file")
        return path
    path = SUITES_FOLDER / f"{name}.toml"
    if not path.is_file():
        raise SuiteError(f"unknown suite {name!r}: choose one of {', '.join(available_suites())}")
    return path


class _Table:
    """Typed access to one TOML table; every error names the file and the key."""

    def __init__(self, values: dict[str, Any], path: Path, where: str):
        self.values, self.path, self.where = values, path, where

    def _fail(self, key: str, problem: str) -> SuiteError:
        return SuiteError(f"{self.path.name}: {self.where}{key} {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        """The value of ``key``; ``default`` when absent (no default: the key is required)."""
        if key not in self.values:
            if default is ...:
                raise self._fail(key, "is missing: add it (see benchmarks/suites/README.md)")
            return default
        value = self.values[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise self._fail(key, f"must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
        return value

    def items(self, key: str, kind: type | tuple[type, ...], default: tuple = ()) -> tuple:
        values = self.get(key, list, list(default))
        kinds = kind if isinstance(kind, tuple) else (kind,)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise self._fail(key, f"must hold {' or '.join(k.__name__ for k in kinds)} values, got {value!r}")
        return tuple(values)

    def table(self, key: str) -> "_Table":
        return _Table(self.get(key, dict, {}), self.path, f"{self.where}{key}.")

    def check_known(self, known: set[str]) -> None:
        unknown = sorted(set(self.values) - known)
        if unknown:
            raise self._fail(unknown[0], f"is not a suite key: use one of {', '.join(sorted(known))}")


def _profile(table: _Table, fallback: Profile | None) -> Profile:
    table.check_known({"iterations", "n_samples", "seeds", "n_reference", "overrides", "select_every",
                       "select_samples"})
    base = fallback or Profile(iterations=None, n_samples=5000, seeds=(0,))
    profile = Profile(
        iterations=table.get("iterations", int, base.iterations),
        n_samples=table.get("n_samples", int, base.n_samples),
        seeds=table.items("seeds", int, base.seeds),
        n_reference=table.get("n_reference", int, base.n_reference),
        overrides=table.items("overrides", str, base.overrides),
        select_every=table.get("select_every", int, base.select_every),
        select_samples=table.get("select_samples", int, base.select_samples),
    )
    if profile.select_every is not None and profile.select_every < 0:
        raise table._fail("select_every", f"must be 0 (no selection) or more, got {profile.select_every}")
    for name in ("iterations", "n_samples", "n_reference", "select_samples"):
        if getattr(profile, name) is not None and getattr(profile, name) < 1:
            raise table._fail(name, f"must be at least 1, got {getattr(profile, name)}")
    if not profile.seeds:
        raise table._fail("seeds", "is empty: list at least one seed, e.g. seeds = [0]")
    return profile


def _model(table: _Table, default_preset: str | None) -> ModelSpec:
    table.check_known({"key", "label", "method", "preset", "ablations", "overrides", "steps", "guidance", "paper",
                       "checkpoint", "floor", "n_samples", "global_batch", "scores", "reference_split",
                       "n_reference", "reference_overrides"})
    key = table.get("key", str)
    if not key or "/" in key or " " in key:
        raise table._fail("key", f"{key!r} must be a non-empty word without '/' or spaces")
    model_preset = table.get("preset", str, default_preset)
    if model_preset is None and "checkpoint" not in table.values:
        raise table._fail("preset", "is missing: set [train] preset or the model's own preset")
    paper = table.get("paper", dict, {})
    if any(steps < 1 for steps in table.items("steps", int)):
        raise table._fail("steps", "must all be at least 1 (Langevin steps per level)")
    checkpoint, floor = table.get("checkpoint", str, None), table.get("floor", bool, False)
    if checkpoint is not None and floor:
        raise table._fail("floor", "and checkpoint exclude each other: a floor row scores data, not a model")
    spec = ModelSpec(
        key=key, label=table.get("label", str, key), method=table.get("method", str, "cdrl"),
        preset=model_preset or "",
        ablations=table.items("ablations", str), overrides=table.items("overrides", str),
        steps=table.items("steps", int),
        guidance=tuple(float(w) for w in table.items("guidance", (int, float), (0.0,))),
        paper={str(k): str(v) for k, v in paper.items()}, checkpoint=checkpoint, floor=floor,
        n_samples=table.get("n_samples", int, None), global_batch=table.get("global_batch", int, None),
        scores=table.get("scores", str, None), reference_split=table.get("reference_split", str, None),
        n_reference=table.get("n_reference", int, None),
        reference_overrides=table.items("reference_overrides", str),
    )
    if spec.scores is not None and (checkpoint is not None or floor):
        raise table._fail("scores", "excludes checkpoint and floor: it scores another model's trainings")
    if any(not override.startswith("data.") for override in spec.reference_overrides):
        raise table._fail("reference_overrides", "may only change data.* settings (the reference images)")
    for name in ("n_samples", "global_batch", "n_reference"):
        if getattr(spec, name) is not None and getattr(spec, name) < 1:
            raise table._fail(name, f"must be at least 1, got {getattr(spec, name)}")
    if spec.checkpoint_path is not None and not spec.checkpoint_path.is_file():
        raise table._fail("checkpoint", f"names {checkpoint}, which does not exist: fix the path (relative to the "
                                        "repository) or train it with the command in results/gate/README.md")
    return spec


def load_suite(name: str | os.PathLike) -> Suite:
    """Read and validate a suite (by name or path); every config it names is built once to catch typos."""
    path = suite_path(name)
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise SuiteError(f"{path.name} is not valid TOML ({error}): fix the file") from None
    top = _Table(values, path, "")
    top.check_known({"name", "version", "title", "notes", "experiment", "metrics", "reference", "reference_label",
                     "context_rows", "plot", "train", "eval", "profiles", "models", "check"})
    train, evaluation = top.table("train"), top.table("eval")
    profiles, check = top.table("profiles"), top.table("check")
    train.check_known({"preset", "overrides", "global_batch"})
    evaluation.check_known({"backend", "reference_split", "batch_size", "checkpoint"})
    profiles.check_known(set(PROFILES))
    check.check_known({"k", "tolerance_floors", "fingerprint_tolerance"})
    full = _profile(profiles.table("full"), None)
    suite_name = top.get("name", str)
    default_preset = train.get("preset", str, None)
    models_raw = top.get("models", list)
    models = tuple(_model(_Table(item if isinstance(item, dict) else {}, path, f"models[{index}]."), default_preset)
                   for index, item in enumerate(models_raw))
    if not models:
        raise top._fail("models", "is empty: add at least one [[models]] table")
    keys = [model.key for model in models]
    if len(set(keys)) != len(keys):
        raise top._fail("models", f"repeat a key ({', '.join(sorted({k for k in keys if keys.count(k) > 1}))}): "
                                  "give every model its own key")
    for model in (model for model in models if model.scores is not None):
        target = next((other for other in models if other.key == model.scores), None)
        if target is None or target.scores is not None or target.checkpoint is not None or target.floor:
            raise SuiteError(f"{path.name}: model {model.key!r}: scores = {model.scores!r} must name a model of this "
                             "suite that is trained here")
    metrics = top.items("metrics", str, ("fid",))
    plot = None
    if "plot" in values:
        plot_table = top.table("plot")
        plot_table.check_known({"metric", "paper", "x", "secondary"})
        plot = PlotSpec(plot_table.get("metric", str), plot_table.get("paper", str, None),
                        plot_table.get("x", str, "total_steps"), plot_table.get("secondary", str, None))
        if plot.x not in PLOT_AXES:
            raise plot_table._fail("x", f"must be one of {', '.join(PLOT_AXES)}, got {plot.x!r}")
        if plot.secondary and plot.paper not in (None, plot.metric):
            raise plot_table._fail("secondary", "and a paper column of another metric would share the right "
                                                "axis: keep one of them")
    floors = {str(k): float(v) for k, v in check.get("tolerance_floors", dict, {}).items()}
    check_k = float(check.get("k", (int, float), 4.0))
    if check_k <= 0:
        raise check._fail("k", f"must be positive (standard errors of tolerance), got {check_k}")
    fingerprint_tolerance = check.get("fingerprint_tolerance", float, None)
    if fingerprint_tolerance is not None and not fingerprint_tolerance > 0:
        raise check._fail("fingerprint_tolerance", f"must be positive, got {fingerprint_tolerance}")
    for metric in (*metrics, *floors, *([plot.metric, plot.secondary or plot.metric] if plot else [])):
        if metric not in METRICS:
            raise SuiteError(f"{path.name}: unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    suite = Suite(
        name=suite_name, version=top.get("version", int), title=top.get("title", str, suite_name),
        path=path, experiment=top.get("experiment", str, f"cdrl-suite-{suite_name}"), models=models,
        metrics=metrics, profiles={"full": full, "quick": _profile(profiles.table("quick"), full)},
        overrides=train.items("overrides", str), backend=evaluation.get("backend", str, "torch-fidelity"),
        reference_split=evaluation.get("reference_split", str, "train"),
        batch_size=evaluation.get("batch_size", int, 256), global_batch=train.get("global_batch", int, None),
        checkpoint_selection=evaluation.get("checkpoint", str, "best"), reference=top.get("reference", str, None),
        reference_label=top.get("reference_label", str, "paper"), context_rows=top.get("context_rows", bool, False),
        plot=plot, check_k=check_k, tolerance_floors=floors,
        fingerprint_tolerance=fingerprint_tolerance,
        notes=top.get("notes", str, ""),
    )
    if suite.checkpoint_selection not in CHECKPOINT_SELECTIONS:
        raise evaluation._fail("checkpoint", f"must be one of {', '.join(CHECKPOINT_SELECTIONS)}, "
                                             f"got {suite.checkpoint_selection!r}")
    if suite.global_batch is not None and suite.global_batch < 1:
        raise train._fail("global_batch", f"must be at least 1, got {suite.global_batch}")
    if plot is not None and plot.x == "guidance" and not any(len(model.guidance) > 1 for model in models):
        raise SuiteError(f"{path.name}: plot.x = \"guidance\" needs a model with several guidance weights")
    if suite.reference_path is not None and not suite.reference_path.is_file():
        raise top._fail("reference", f"names {suite.reference}, which is not in results/paper/: fix the file name")
    for model in models:  # bad presets, methods, ablations and overrides fail here, not mid-suite
        if model.checkpoint is not None or model.floor or model.scores:
            continue
        if any(override.startswith("training.batch_size=")
               for override in (*suite.overrides, *model.overrides,
                                *(o for p in suite.profiles.values() for o in p.overrides))):
            raise SuiteError(f"{path.name}: model {model.key!r}: set the batch with global_batch, not an override of "
                             "training.batch_size")
        if (model.global_batch or suite.global_batch) is None:
            raise SuiteError(f"{path.name}: model {model.key!r} declares no global batch: add global_batch = N to "
                             "[train] (all processes together; the paper: 256) or to the model")
        try:
            for profile in PROFILES:
                config = model_config(suite, model, profile, seed=0)
                if suite.checkpoint_selection == "best" and config.run.select_every == 0:
                    raise SuiteError(f"[eval] checkpoint = \"best\" but the {profile} profile selects no checkpoint: "
                                     "set select_every and select_samples in [profiles." + profile + "], or "
                                     "checkpoint = \"last\"")
        except CdrlBenchError as error:
            raise SuiteError(f"{path.name}: model {model.key!r}: {error}") from None
    return suite


# --------------------------------------------------------------------------- expansion

def base_config(suite: Suite, model: ModelSpec, profile: str) -> ExperimentConfig:
    """The model's preset with the suite's and the profile's overrides: what its method and ablations change."""
    return apply_overrides(preset(model.preset), [*suite.overrides, *suite.profiles[profile].overrides])


def model_config(suite: Suite, model: ModelSpec, profile: str, seed: int) -> ExperimentConfig:
    """base_config -> method -> ablations -> model overrides -> global batch, selection, budget, seed."""
    settings = suite.profiles[profile]
    config = apply_method(base_config(suite, model, profile), model.method)
    config = apply_overrides(config, [*ablation_overrides(model.ablations), *model.overrides])
    budget = [f"training.seed={seed}"]
    if model.global_batch or suite.global_batch:
        budget.append(f"training.batch_size={model.global_batch or suite.global_batch}")
    if settings.iterations is not None:
        budget.append(f"training.iterations={settings.iterations}")
    if settings.select_every is not None:
        budget.append(f"run.select_every={settings.select_every}")
    if settings.select_samples is not None:
        budget.append(f"run.select_samples={settings.select_samples}")
    return apply_overrides(config, budget)


def config_delta(suite: Suite, model: ModelSpec, profile: str = "full") -> list[str]:
    """``key=value`` of every setting the model's method, ablations and overrides change from its base config."""
    base = base_config(suite, model, profile)
    changed = apply_overrides(apply_method(base, model.method), [*ablation_overrides(model.ablations),
                                                                 *model.overrides]).flat()
    before = base.flat()
    return [f"{key}={value}" for key, value in changed.items() if before.get(key) != value]


def selection_rule(config: ExperimentConfig, policy: str) -> str:
    """How a training's scored checkpoint is chosen, briefly: "last", or "best FID (5k every 20k it)"."""
    if policy == "last" or config.run.select_every == 0:
        return "last"
    from cdrl.train_loop import selection_metric

    metric = selection_metric(config)
    return (f"best {METRICS[metric].label} ({_count(config.run.select_samples)} every "
            f"{_count(config.run.select_every)} it)")


def _count(value: int) -> str:
    return f"{value // 1000}k" if value >= 1000 and value % 1000 == 0 else str(value)


def eval_steps(model: ModelSpec, config: ExperimentConfig) -> tuple[int, ...]:
    return model.steps or (config.sampler.steps(config.langevin),)


def _eval_key(prefix: str, model: ModelSpec, steps: int, guidance: float, seed: int) -> str:
    parts = [model.key, f"K{steps}"] + ([f"w{guidance:g}"] if len(model.guidance) > 1 or guidance else [])
    return prefix + "/".join([*parts, f"seed{seed}"])


def checkpoint_source(path: Path) -> str:
    """A stable name for a given checkpoint: its content hash, so a renamed copy resumes too."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return f"checkpoint-{digest.hexdigest()[:12]}"


def expand(suite: Suite, *, quick: bool = False, seeds: int | None = None, seed_offset: int = 0,
           checkpoint: str | os.PathLike | None = None) -> Plan:
    """The runs of a suite: trainings and evaluations, or only evaluations of ``checkpoint``.

    ``seeds`` replaces the profile's seeds by 0..N-1; ``seed_offset`` adds to every seed (a
    rerun on other seeds, e.g. to measure false alarms of the regression check).
    """
    profile = "quick" if quick else "full"
    settings = suite.profiles[profile]
    if seeds is not None:
        if seeds < 1:
            raise SuiteError(f"--seeds must be at least 1, got {seeds}")
        settings = replace(settings, seeds=tuple(range(seeds)))
    if seed_offset < 0:
        raise SuiteError(f"--seed-offset must be at least 0, got {seed_offset}")
    settings = replace(settings, seeds=tuple(seed + seed_offset for seed in settings.seeds))
    if checkpoint is not None:
        return _expand_checkpoint(suite, profile, settings, Path(checkpoint))
    trainings = {(model.key, seed): TrainingJob(f"{model.key}/seed{seed}", model, seed,
                                                model_config(suite, model, profile, seed))
                 for model in suite.models if model.checkpoint is None and not model.floor and model.scores is None
                 for seed in settings.seeds}
    evaluations = []
    for model in suite.models:
        if model.checkpoint is not None or model.floor:
            evaluations += _untrained_evaluations(suite, model, profile, settings)
            continue
        for seed in settings.seeds:
            job = trainings[model.scores or model.key, seed]
            for steps in eval_steps(model, job.config):
                for guidance in model.guidance:
                    evaluations.append(EvalJob(_eval_key("", model, steps, guidance, seed), model, job, steps,
                                               job.config.schedule.n_levels, guidance, seed, model.samples(settings)))
    return Plan(suite, profile, "trained", tuple(trainings.values()), tuple(evaluations))


def _untrained_evaluations(suite: Suite, model: ModelSpec, profile: str, settings: Profile) -> list[EvalJob]:
    """A stored checkpoint's evaluations at each of its points, or a floor row's (data scored as samples)."""
    if model.floor:
        config = model_config(suite, model, profile, seed=0)
        return [EvalJob(f"{model.key}/seed{seed}", model, None, 0, 0, 0.0, seed, model.samples(settings), source="data",
                        floor_config=config) for seed in settings.seeds]
    from cdrl.checkpoint import load_checkpoint

    saved, _ = load_checkpoint(model.checkpoint_path)
    source = checkpoint_source(model.checkpoint_path)
    return [EvalJob(_eval_key("", model, steps, guidance, seed), model, None, steps, saved.schedule.n_levels,
                    guidance, seed, model.samples(settings), source=source, checkpoint=model.checkpoint_path,
                    checkpoint_config=saved)
            for seed in settings.seeds for steps in eval_steps(model, saved) for guidance in model.guidance]


def _expand_checkpoint(suite: Suite, profile: str, settings: Profile, path: Path) -> Plan:
    from cdrl.checkpoint import load_checkpoint

    saved, _ = load_checkpoint(path)
    source = checkpoint_source(path)
    evaluations, skipped, stored = [], [], []
    for model in suite.models:
        if model.checkpoint is not None or model.floor:
            stored += _untrained_evaluations(suite, model, profile, settings)
            continue
        trained = next(other for other in suite.models if other.key == model.scores) if model.scores else model
        if trained.preset != saved.name or trained.method != saved.training.method or trained.ablations:
            skipped.append(f"{model.label} (needs a {trained.method} model of preset {trained.preset}"
                           f"{' with ' + ', '.join(trained.ablations) if trained.ablations else ''})")
            continue
        for seed in settings.seeds:
            for steps in eval_steps(model, saved):
                for guidance in model.guidance:
                    evaluations.append(EvalJob(_eval_key(f"{source}/", model, steps, guidance, seed), model, None,
                                               steps, saved.schedule.n_levels, guidance, seed, model.samples(settings),
                                               source=source, checkpoint=path, checkpoint_config=saved))
    if not evaluations:
        raise SuiteError(f"checkpoint {path} ({saved.training.method}, preset {saved.name}) matches no model of suite "
                         f"{suite.name}: pass a checkpoint of one of its presets "
                         f"({', '.join(sorted({m.preset for m in suite.models if m.preset}))})")
    return Plan(suite, profile, source, (), tuple(evaluations + stored), skipped=tuple(skipped))


def plan_rows(plan: Plan, world_size: int = 1) -> list[dict[str, str]]:
    """One row per training (and per untrained model) of a plan: what ``cdrl-bench plan`` prints."""
    from cdrl.train_loop import per_process_batch
    if world_size < 1:
        raise SuiteError(f"--world-size must be at least 1, got {world_size}")
    rows = []
    for key, jobs in _by_source(plan).items():
        first = jobs[0]
        global_batch, selection = first.training_summary(plan.suite.checkpoint_selection)
        config = first.training.config if first.training else first.checkpoint_config or first.floor_config
        per_process = ""
        if first.training is not None:
            try:
                per_process = str(per_process_batch(config.training.batch_size, world_size))
            except ConfigError:  # the run itself would refuse this world size
                per_process = "does not split"
        rows.append({
            "run": key, "preset": config.name if config else "",
            "iterations": f"{config.training.iterations:,}" if first.training else "",
            "batch": global_batch, "per process": per_process, "checkpoint": selection, "evals": str(len(jobs)),
            "points": _points_line(jobs) if first.floor_config is None else "data floor",
        })
    return rows


def _points_line(jobs: list[EvalJob]) -> str:
    """Evaluation points per model, briefly: "cdrl 6x3/5/8/15", "cond 6x15, 13 w from 0 to 3"."""
    parts = []
    for model in dict.fromkeys(job.model.key for job in jobs):
        mine = [job for job in jobs if job.model.key == model]
        steps = "/".join(str(k) for k in sorted({job.steps_per_level for job in mine}))
        weights = sorted({job.guidance for job in mine})
        guidance = (f", {len(weights)} w from {weights[0]:g} to {weights[-1]:g}" if len(weights) > 1
                    else f", w {weights[0]:g}" if weights[0] else "")
        parts.append(f"{model} {mine[0].noise_levels}x{steps}{guidance}")
    return "; ".join(parts)


def _by_source(plan: Plan) -> dict[str, list[EvalJob]]:
    groups: dict[str, list[EvalJob]] = {job.key: [] for job in plan.trainings}
    for job in plan.evaluations:
        groups.setdefault(job.training.key if job.training else f"{job.model.key} ({job.source})", []).append(job)
    return {key: jobs for key, jobs in groups.items() if jobs}
