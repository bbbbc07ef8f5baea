"""Benchmark suites: versioned, declarative TOML files under ``benchmarks/suites/``, expanded into runs.

A suite names the models to train (a preset, a method, ablations and overrides), where to
evaluate each (Langevin steps per level, guidance weights), the seeds and sample counts of
its two profiles (``full`` and ``quick``), the metrics of its table, the paper's table it
is compared with (a CSV of ``results/paper/``) and, for CI, the tolerances of its regression
check. ``benchmarks/suites/README.md`` describes every key.

:func:`expand` turns a suite into a :class:`Plan`: one :class:`TrainingJob` per (model,
seed) and one :class:`EvalJob` per (model, steps, guidance, seed), each with a stable run
key (``cdrl/seed0``, ``cdrl/K5/seed0``, ``cond/K15/w0.3/seed0``). With a checkpoint instead
of training, every model that the checkpoint's saved config would have trained (the settings
that define a model: :data:`NOT_MODEL_SETTINGS` aside) is evaluated from it, under keys
prefixed by the checkpoint's hash.

:func:`training_costs` prices a plan's trainings in GPU-hours: seconds per iteration measured
by finished training runs in an MLflow store, else stated in the suite's ``[cost]``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

from baselines import ablation_overrides, apply_method
from cdrl.config import ConfigError, ExperimentConfig, apply_overrides, preset
from cdrl.datasets import DATASETS, dataset_info
from cdrl.errors import CdrlBenchError
from cdrl.evaluation.backends import DEFAULT_BACKEND
from cdrl.metrics import METRICS
from cdrl.ood import INTERPOLATION
from cdrl.typed import FieldError, above, at_least, bounds, build

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

#: Suite names and model keys: they become folder names under --runs-dir, MLflow experiment
#: names and tag values searched for, so letters, digits, '.', '_' and '-' only (and no '..').
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SAFE_NAME_RULE = "letters, digits, '.', '_' and '-' only, starting with a letter or digit, no '..'"


def is_safe_name(text: str) -> bool:
    """A suite name or model key that is one plain path component (no '/', '\\', '..', spaces or quotes)."""
    return _SAFE_NAME.fullmatch(text) is not None and ".." not in text


class SuiteError(CdrlBenchError):
    """A suite file that cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Profile:
    """Budget of one way of running a suite: ``full`` (the suite's own) or ``quick`` (``--quick``)."""

    #: Training iterations; None keeps the preset's.
    iterations: int | None = field(default=None, metadata=at_least(1))
    n_samples: int = field(default=5000, metadata=at_least(1))
    seeds: tuple[int, ...] = field(default=(0,), metadata=at_least(0))
    #: Reference images for image metrics; None: the whole split.
    n_reference: int | None = field(default=None, metadata=at_least(1))
    #: Extra training overrides of this profile (e.g. a smaller batch).
    overrides: tuple[str, ...] = ()
    #: Best-checkpoint selection: score every this many iterations on this many samples (None: the preset's).
    select_every: int | None = field(default=None, metadata=at_least(0))
    select_samples: int | None = field(default=None, metadata=at_least(1))


@dataclass(frozen=True)
class ModelSpec:
    """One trained model of a suite and where it is evaluated."""

    key: str
    #: Row label in tables; empty: the key.
    label: str = ""
    method: str = "cdrl"
    #: The preset to train; empty: [train] preset.
    preset: str = ""
    ablations: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    #: Langevin steps per level to sample with; empty: the training count.
    steps: tuple[int, ...] = field(default=(), metadata=at_least(1))
    #: Classifier-free guidance weights w (the range of the CLI's --guidance).
    guidance: tuple[float, ...] = field(default=(0.0,), metadata=bounds(at_least=0, at_most=1e6))
    #: Columns and values that pick this model's row in the reference CSV (e.g. method = "CDRL").
    paper: dict[str, str] = field(default_factory=dict)
    #: A stored checkpoint (relative to the repository) sampled instead of training the model.
    checkpoint: str | None = None
    #: The data-vs-data floor: real data scored as if it were samples (the preset names the data).
    floor: bool = False
    #: At most this many samples per evaluation (e.g. fewer images than 2-D points in one suite).
    n_samples: int | None = field(default=None, metadata=at_least(1))
    #: The global training batch (all processes together); None: the suite's.
    global_batch: int | None = field(default=None, metadata=at_least(1))
    #: Score the trainings of that model (by key) instead of training one: another protocol, or
    #: another way of sampling (this model's ablations and overrides may change sampler.* only).
    scores: str | None = None
    #: This row's evaluation protocol where it differs from the suite's: the reference split, the
    #: number of reference images, and overrides of the reference data (e.g. another image pipeline).
    reference_split: Literal["train", "test"] | None = None
    n_reference: int | None = field(default=None, metadata=at_least(1))
    reference_overrides: tuple[str, ...] = ()
    #: This model's own stated seconds per training iteration where it differs from [cost]'s (e.g. 30
    #: Langevin steps per level instead of 15), on [cost]'s GPUs; None: [cost]'s.
    seconds_per_iteration: float | None = field(default=None, metadata=above(0))
    #: Attribute composition: the dataset's concepts this row asks of each sample, composed when several
    #: (cdrl.composition), e.g. ["digit", "colour"]; scored by per-concept classifiers.
    concepts: tuple[str, ...] = ()
    #: Out-of-distribution detection: this row scores the model's energy on its test images against this
    #: set's (a dataset, or "interpolation"; cdrl.ood) instead of sampling; n_samples images of each.
    ood: str | None = None

    def samples(self, profile: "Profile") -> int:
        return min(profile.n_samples, self.n_samples or profile.n_samples)

    @property
    def checkpoint_path(self) -> Path | None:
        if self.checkpoint is None:
            return None
        path = Path(self.checkpoint)
        return path if path.is_absolute() else results_path(path)


@dataclass(frozen=True)
class PlotSpec:
    #: Measured metric on the y axis.
    metric: str
    #: Reference CSV column: on the same axes when it measures the same thing, else in a panel of its own.
    paper: str | None = None
    #: x axis: total Langevin steps (levels x steps per level) or the guidance weight.
    x: Literal["total_steps", "guidance"] = "total_steps"
    #: A second measured metric, in a panel of its own (and, against the guidance weight, the other
    #: side of the trade-off curve, e.g. class accuracy against FID).
    secondary: str | None = None


@dataclass(frozen=True)
class CostSpec:
    """``[cost]``: what one training iteration of the suite's models costs, as stated in the suite file.

    ``cdrl-bench plan`` turns it into GPU-hours when no finished training run measured it.
    """

    #: Wall seconds per training iteration on ``gpus`` GPUs, each training its share of the global
    #: batch; None: not stated (a model may still state its own).
    seconds_per_iteration: float | None = field(default=None, metadata=above(0))
    #: GPUs (one process each) per training that the seconds are for; for a CPU suite, processes.
    gpus: int = field(default=1, metadata=at_least(1))
    #: The GPU the seconds are for, e.g. "H100 SXM"; a CPU suite's starts with "CPU" (its costs are then
    #: CPU-hours of one-thread processes, not GPU-hours).
    device: str = ""
    #: Where the seconds come from, briefly (e.g. "FLOP-count estimate"); printed beside every number.
    basis: str = ""

    @property
    def on_cpu(self) -> bool:
        return self.device.lower().startswith("cpu")


@dataclass(frozen=True)
class CheckSpec:
    """How ``cdrl-bench check`` judges a suite (its ``[check]`` section; benchmarks/regression.py)."""

    #: A metric fails when worse than the baseline's mean by more than k standard errors of the
    #: difference of means (seed-to-seed std measured in the baseline); on fixed inputs (stored
    #: models, data floors) also when better by as much.
    k: float = field(default=4.0, metadata=above(0))
    #: Smallest tolerance per metric, for metrics whose seed-to-seed std can be 0 (e.g. coverage).
    tolerance_floors: dict[str, float] = field(default_factory=dict)
    #: Also compare numerical fingerprints of the stored checkpoints (benchmarks.fingerprint): the
    #: largest relative drift allowed; None: no fingerprints.
    fingerprint_tolerance: float | None = field(default=None, metadata=above(0))
    #: Also compare the ruler's fingerprints (benchmarks.ruler: metrics and dataset pipelines on
    #: fixed inputs): the largest relative drift of any entry allowed; None: not compared.
    ruler_tolerance: float | None = field(default=None, metadata=above(0))
    #: Also compare the resolved config of every preset and shipped suite model (benchmarks.resolved_configs).
    configs: bool = False
    #: Seeds per point a baseline must hold: ``check --update`` refuses fewer.
    baseline_seeds: int = field(default=3, metadata=at_least(3))


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
    backend: str = DEFAULT_BACKEND
    reference_split: str = "train"
    #: Samples drawn at once when scoring (None: cdrl.generation's default).
    batch_size: int | None = None
    #: The global training batch of every model without its own (``training.batch_size``).
    global_batch: int | None = None
    #: Which checkpoint of a training is scored: "best" (by the selection score) or "last".
    checkpoint_selection: Literal["best", "last"] = "best"
    #: CSV of results/paper/ with the paper's numbers; None: no paper column.
    reference: str | None = None
    #: Heading of the paper columns (e.g. "paper CIFAR-10" for a CPU-scale trend study).
    reference_label: str = "paper"
    #: Also list the reference rows no model matches (the rest of the paper's table).
    context_rows: bool = False
    plot: PlotSpec | None = None
    check: CheckSpec = CheckSpec()
    notes: str = ""
    #: Stated cost of a training iteration, for ``cdrl-bench plan``'s GPU-hours.
    cost: CostSpec = CostSpec()

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
    #: ``sampler.*`` settings this model samples the checkpoint with, where they differ from its training's.
    sampler_overrides: tuple[str, ...] = ()

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


@dataclass(frozen=True)
class _TrainSection:
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    global_batch: int | None = field(default=None, metadata=at_least(1))


@dataclass(frozen=True)
class _EvalSection:
    backend: str = DEFAULT_BACKEND
    reference_split: Literal["train", "test"] = "train"
    batch_size: int | None = field(default=None, metadata=at_least(1))
    checkpoint: Literal["best", "last"] = "best"




@dataclass(frozen=True)
class _Profiles:
    #: Raw tables: quick is full with quick's keys replaced, read as one Profile.
    full: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _SuiteFile:
    """A suite file as written (benchmarks/suites/README.md describes every key)."""

    name: str
    version: int
    models: tuple[dict[str, Any], ...]
    title: str | None = None
    notes: str = ""
    experiment: str | None = None
    metrics: tuple[str, ...] = ("fid",)
    reference: str | None = None
    reference_label: str = "paper"
    context_rows: bool = False
    plot: PlotSpec | None = None
    train: _TrainSection = _TrainSection()
    eval: _EvalSection = _EvalSection()
    profiles: _Profiles = _Profiles()
    check: CheckSpec = CheckSpec()
    cost: CostSpec = CostSpec()


def _model(values: dict[str, Any], where: str, default_preset: str | None) -> ModelSpec:
    spec = build(ModelSpec, values, where)
    spec = replace(spec, label=spec.label or spec.key, preset=spec.preset or default_preset or "")
    if not is_safe_name(spec.key):
        raise FieldError(f"{where}key", f"{spec.key!r} must be a plain name ({_SAFE_NAME_RULE}): it names run "
                                        "folders, e.g. key = \"cdrl-no-ema\"")
    if not spec.preset and spec.checkpoint is None:
        raise FieldError(f"{where}preset", "is missing: set [train] preset or the model's own preset")
    if spec.checkpoint is not None and spec.floor:
        raise FieldError(f"{where}floor", "and checkpoint exclude each other: a floor row scores data, not a model")
    if spec.scores is not None and (spec.checkpoint is not None or spec.floor):
        raise FieldError(f"{where}scores", "excludes checkpoint and floor: it scores another model's trainings")
    if spec.ood is not None and (spec.floor or spec.concepts):
        raise FieldError(f"{where}ood", "excludes floor and concepts: it scores a model's energy, not samples")
    if spec.ood is not None and spec.ood != INTERPOLATION and spec.ood not in DATASETS:
        raise FieldError(f"{where}ood", f"= {spec.ood!r} is neither a dataset ({', '.join(DATASETS)}) nor "
                                        f"{INTERPOLATION!r}: name one of them")
    if spec.concepts and spec.preset:
        known = [concept.name for concept in dataset_info(preset(spec.preset).data.dataset).concepts]
        unknown = [name for name in spec.concepts if name not in known]
        if unknown or len(set(spec.concepts)) != len(spec.concepts):
            raise FieldError(f"{where}concepts", f"= {list(spec.concepts)} must name each of its concepts once, "
                                                 f"from the dataset's: {', '.join(known) or 'none'}")
    if any(not override.startswith("data.") for override in spec.reference_overrides):
        raise FieldError(f"{where}reference_overrides", "may only change data.* settings (the reference images)")
    if spec.checkpoint_path is not None and not spec.checkpoint_path.is_file():
        raise FieldError(f"{where}checkpoint", f"names {spec.checkpoint}, which does not exist: fix the path "
                                               "(relative to the repository) or train it with the command in "
                                               "results/gate/README.md")
    return spec


def _read_suite(path: Path, values: dict[str, Any]) -> Suite:
    """The suite of a parsed file; a FieldError names the key at fault."""
    written = build(_SuiteFile, values)
    if not is_safe_name(written.name):
        raise FieldError("name", f"{written.name!r} must be a plain name ({_SAFE_NAME_RULE}): it names run folders "
                                 "and the MLflow experiment, e.g. name = \"cifar10-steps\"")
    if written.reference is not None and not (is_safe_name(written.reference) and written.reference.endswith(".csv")):
        raise FieldError("reference", f"{written.reference!r} must be the file name of a CSV in results/paper/ "
                                      "(no folders), e.g. reference = \"cifar10_fid.csv\"")
    full = build(Profile, written.profiles.full, "profiles.full.")
    quick = build(Profile, {**written.profiles.full, **written.profiles.quick}, "profiles.quick.")
    for key, profile in (("profiles.full.seeds", full), ("profiles.quick.seeds", quick)):
        if not profile.seeds:
            raise FieldError(key, "is empty: list at least one seed, e.g. seeds = [0]")
        if len(set(profile.seeds)) != len(profile.seeds):
            raise FieldError(key, f"= {list(profile.seeds)} repeats a seed (every evaluation would run twice): list "
                                  "each seed once")
    models = tuple(_model(item, f"models[{index}].", written.train.preset)
                   for index, item in enumerate(written.models))
    if not models:
        raise FieldError("models", "is empty: add at least one [[models]] table")
    keys = [model.key for model in models]
    if len(set(keys)) != len(keys):
        raise FieldError("models", f"repeat a key ({', '.join(sorted({k for k in keys if keys.count(k) > 1}))}): "
                                   "give every model its own key")
    for model in (model for model in models if model.scores is not None):
        target = next((other for other in models if other.key == model.scores), None)
        if target is None or target.scores is not None or target.checkpoint is not None or target.floor:
            raise FieldError(f"model {model.key!r}: scores", f"= {model.scores!r} must name a model of this suite "
                                                               "that is trained here")
    plot = written.plot
    if plot is not None and plot.x == "guidance" and not any(len(model.guidance) > 1 for model in models):
        raise FieldError("plot.x", "= \"guidance\" needs a model with several guidance weights")
    floors = written.check.tolerance_floors
    for metric in (*written.metrics, *floors, *([plot.metric, plot.secondary or plot.metric] if plot else [])):
        if metric not in METRICS:
            raise FieldError("metrics", f"name an unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    suite = Suite(
        name=written.name, version=written.version, title=written.title or written.name, path=path,
        experiment=written.experiment or f"cdrl-suite-{written.name}", models=models, metrics=written.metrics,
        profiles={"full": full, "quick": quick}, overrides=written.train.overrides, backend=written.eval.backend,
        reference_split=written.eval.reference_split, batch_size=written.eval.batch_size,
        global_batch=written.train.global_batch, checkpoint_selection=written.eval.checkpoint,
        reference=written.reference, reference_label=written.reference_label, context_rows=written.context_rows,
        plot=plot, check=written.check, notes=written.notes, cost=written.cost)
    if suite.reference_path is not None and not suite.reference_path.is_file():
        raise FieldError("reference", f"names {suite.reference}, which is not in results/paper/: fix the file name")
    return suite


def load_suite(name: str | os.PathLike) -> Suite:
    """Read and validate a suite (by name or path); every config it names is built once to catch typos."""
    path = suite_path(name)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise SuiteError(f"{path.name} is not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}), "
                         "as TOML files are: save it as UTF-8") from None
    except OSError as error:
        raise SuiteError(f"suite file {path} cannot be read ({error.strerror or error}): pass a readable file") from None
    except (tomllib.TOMLDecodeError, RecursionError) as error:
        reason = error if isinstance(error, tomllib.TOMLDecodeError) else "nested deeper than a TOML reader follows"
        raise SuiteError(f"{path.name} is not valid TOML ({reason}): fix the file") from None
    try:
        suite = _read_suite(path, values)
    except FieldError as error:
        raise SuiteError(f"{path.name}: {error} (see benchmarks/suites/README.md)") from None
    for model in suite.models:  # bad presets, methods, ablations and overrides fail here, not mid-suite
        if model.scores:
            try:
                for profile in PROFILES:
                    scoring_sampler_overrides(suite, model, profile)
            except CdrlBenchError as error:
                raise SuiteError(f"{path.name}: {error}") from None
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


def split_differences(differences: list[tuple[str, str, str]]
                      ) -> tuple[list[tuple[str, str, str]], tuple[str, ...]]:
    """``differences`` (:func:`model_differences`) as (those a training would have to make, the
    ``sampler.*`` overrides that give a trained model the rest of the wanted config)."""
    trained = [difference for difference in differences if not difference[0].startswith("sampler.")]
    return trained, tuple(f"{key}={wanted}" for key, wanted, _ in differences if key.startswith("sampler."))


def scoring_sampler_overrides(suite: Suite, model: ModelSpec, profile: str) -> tuple[str, ...]:
    """How a model with ``scores`` samples the trainings it scores: the ``sampler.*`` settings in
    which its config (preset, method, ablations, overrides) differs from the scored model's."""
    target = next(other for other in suite.models if other.key == model.scores)
    trained, overrides = split_differences(model_differences(model_config(suite, model, profile, seed=0),
                                                             model_config(suite, target, profile, seed=0)))
    if trained:
        raise SuiteError(f"model {model.key!r} scores {model.scores!r} but would train differently "
                         f"({', '.join(_wanted(trained))}): a model that scores another may change only sampler.* "
                         "settings; drop scores to train it, or the training settings to score that model")
    return overrides


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
        sampler_overrides = scoring_sampler_overrides(suite, model, profile) if model.scores else ()
        for seed in settings.seeds:
            job = trainings[model.scores or model.key, seed]
            for steps in eval_steps(model, apply_overrides(job.config, list(sampler_overrides))):
                for guidance in model.guidance:
                    evaluations.append(EvalJob(_eval_key("", model, steps, guidance, seed), model, job, steps,
                                               job.config.schedule.n_levels, guidance, seed, model.samples(settings),
                                               sampler_overrides=sampler_overrides))
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


#: Settings that do not define a trained model: ``--from-checkpoint`` evaluates a model from a
#: checkpoint when their configs agree on every other setting. Left out: the preset's description;
#: the run's cadences and checkpoint selection (``run.*``); its budget and scale
#: (``training.iterations``: a checkpoint of any iteration; ``training.batch_size``: the global
#: batch, which the plan shows from the checkpoint); its seed (``training.seed``); where the data
#: files are (``data.data_dir``, ``data.download``); and the speed options (``performance.*``).
#: Compared: the preset (``name``), the method, the networks, schedule, Langevin, training
#: recipe and data, and ``sampler.*``, since a checkpoint is sampled with its own sampler settings.
NOT_MODEL_SETTINGS = ("description", "run.", "performance.", "training.iterations", "training.batch_size",
                      "training.seed", "data.data_dir", "data.download")


def defines_model(setting: str) -> bool:
    """Whether ``setting`` (a flat config key) is part of what a trained model is (:data:`NOT_MODEL_SETTINGS`)."""
    return not any(setting == other or (other.endswith(".") and setting.startswith(other))
                   for other in NOT_MODEL_SETTINGS)


def _setting_text(value: Any) -> str:
    """A config value as an override writes it: ``false``, ``none``, ``0.9,0.999``."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(_setting_text, value))
    return str(value)


def model_differences(wanted: ExperimentConfig, saved: ExperimentConfig) -> list[tuple[str, str, str]]:
    """(setting, wanted value, saved value) of every setting defining a model where the two configs differ.

    The preset comes first (as ``preset``), then the method, then the rest in config order.
    """
    mine, theirs = wanted.flat(), saved.flat()
    settings = [key for key in dict.fromkeys([*mine, *theirs]) if defines_model(key)]
    settings.sort(key=lambda key: (key != "name", key != "training.method"))
    return [("preset" if key == "name" else key, _setting_text(mine.get(key)), _setting_text(theirs.get(key)))
            for key in settings if mine.get(key) != theirs.get(key)]


def _mismatch(differences: list[tuple[str, str, str]], shown: int = 3) -> str:
    """"needs training.variance_reduction=false; the checkpoint has true" (the first few, and how many more)."""
    first = differences[:shown]
    more = f" and {len(differences) - shown} more setting{'s' if len(differences) > shown + 1 else ''}" \
        if len(differences) > shown else ""
    return f"needs {', '.join(_wanted(first))}{more}; the checkpoint has {', '.join(saved for _, _, saved in first)}"


def _wanted(differences: list[tuple[str, str, str]]) -> list[str]:
    """"energy.width=128", or "preset cifar10": each difference's wanted value."""
    return [f"{key}={value}" if key != "preset" else f"preset {value}" for key, value, _ in differences]


def _expand_checkpoint(suite: Suite, profile: str, settings: Profile, path: Path) -> Plan:
    from cdrl.checkpoint import load_checkpoint

    saved, _ = load_checkpoint(path)
    source = checkpoint_source(path)
    evaluations, skipped, stored = [], [], []
    for model in suite.models:
        if model.checkpoint is not None or model.floor:
            stored += _untrained_evaluations(suite, model, profile, settings)
            continue
        # A model that differs from the checkpoint in sampler.* alone (no-tweedie-step, or one that
        # scores another) is the checkpoint sampled its way.
        trained, sampler_overrides = split_differences(model_differences(model_config(suite, model, profile, seed=0),
                                                                         saved))
        if trained:
            skipped.append(f"{model.label} ({_mismatch(trained)})")
            continue
        for seed in settings.seeds:
            for steps in eval_steps(model, apply_overrides(saved, list(sampler_overrides))):
                for guidance in model.guidance:
                    evaluations.append(EvalJob(_eval_key(f"{source}/", model, steps, guidance, seed), model, None,
                                               steps, saved.schedule.n_levels, guidance, seed, model.samples(settings),
                                               source=source, checkpoint=path, checkpoint_config=saved,
                                               sampler_overrides=sampler_overrides))
    if not evaluations:
        raise SuiteError(f"checkpoint {path} ({saved.training.method}, preset {saved.name}) matches no model of suite "
                         f"{suite.name}: pass a checkpoint of one of its presets "
                         f"({', '.join(sorted({m.preset for m in suite.models if m.preset}))})")
    return Plan(suite, profile, source, (), tuple(evaluations + stored), skipped=tuple(skipped))


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` (--shard) as (i, N), 0 <= i < N."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise SuiteError(f"--shard {text!r} is not i/N with 0 <= i < N: write e.g. --shard 0/4 (the first of four)")
    return int(index), int(count)


def select(plan: Plan, *, only: str | None = None, shard: tuple[int, int] | None = None) -> Plan:
    """The part of ``plan`` that ``--only MODEL[/seedN]`` and ``--shard i/N`` ask for.

    A shard takes every N-th training from the i-th, with its evaluations, and every N-th of the
    evaluations that need no training: shards are disjoint and together make the whole plan.
    """
    trainings, evaluations = plan.trainings, plan.evaluations
    if only is not None:
        model, _, seed = only.partition("/")
        keys = [spec.key for spec in plan.suite.models]
        if model not in keys:
            raise SuiteError(f"--only {only!r}: the suite has no model {model!r}; choose one of {', '.join(keys)}")
        if seed and not (seed.startswith("seed") and seed[4:].isdigit()):
            raise SuiteError(f"--only {only!r}: write MODEL or MODEL/seedN, e.g. --only {model}/seed0")

        def chosen(job: TrainingJob | EvalJob) -> bool:
            return job.model.key == model and (not seed or job.seed == int(seed[4:]))

        evaluations = tuple(job for job in evaluations
                            if chosen(job) or job.training is not None and chosen(job.training))
        # With the trainings they score: a sampling-only model (e.g. no-tweedie-step) scores another's.
        needed = [job.training for job in evaluations if job.training is not None]
        trainings = tuple(job for job in trainings if chosen(job) or job in needed)
    if shard is not None:
        index, count = shard
        trainings = trainings[index::count]
        alone = [job for job in evaluations if job.training is None]
        evaluations = tuple(job for job in evaluations if job.training in trainings or job in alone[index::count])
    return replace(plan, trainings=trainings, evaluations=evaluations)


# --------------------------------------------------------------------------- cost

#: Settings that set what one training iteration costs, besides the preset and each process's batch
#: (which the cost is scaled by): a finished training run measures a planned training's speed when
#: it trained the same preset and agrees on all of them (performance.threads aside: a machine's
#: setting, like its device). Learning rates, loss weights and the like change no arithmetic.
COST_SETTINGS = ("training.method", "langevin.n_steps", "energy.", "initializer.", "data.dataset",
                 "data.image_size", "data.channels", "performance.")

#: Metric a training logs at every run.log_every iterations (cdrl.train_loop).
SPEED_METRIC = "iterations_per_second"


def _sets_cost(setting: str) -> bool:
    return setting != "performance.threads" and any(
        setting == other or (other.endswith(".") and setting.startswith(other)) for other in COST_SETTINGS)


@dataclass(frozen=True)
class MeasuredRun:
    """The speed of one finished training run, and what it trained where."""

    run_id: str
    preset: str
    device: str
    world_size: int
    per_process_batch: int
    #: Wall seconds per iteration: the mean of 1 / iterations_per_second over its logged intervals
    #: (run.log_every iterations each), so checkpoints, sample grids and selection scores count.
    seconds_per_iteration: float
    #: Its params (the flat config) as MLflow keeps them: str() of each value.
    params: dict[str, str] = field(default_factory=dict)

    @property
    def seconds_per_image(self) -> float:
        """Seconds per iteration per image of one process's batch: what scales to another batch or GPU count."""
        return self.seconds_per_iteration / self.per_process_batch

    def measures(self, config: ExperimentConfig) -> bool:
        """Whether this run trained what ``config`` trains, as far as the cost of an iteration goes."""
        return self.preset == config.name and all(
            self.params.get(key, str(value)) == str(value) for key, value in config.flat().items() if _sets_cost(key))


def measured_runs(tracking_uri: str | None, configs: Sequence[ExperimentConfig]) -> list[MeasuredRun]:
    """FINISHED training runs (tag ``cdrl.kind=train``), in every experiment of the store, that measure one of ``configs``.

    Runs that logged no ``iterations_per_second`` are left out. A SQLite store that does not
    exist holds none (and is not created).
    """
    from benchmarks.records import store_exists
    from cdrl.search_filter import tag_clause
    from cdrl.tracking import TAG_KIND, TAG_PER_PROCESS_BATCH, TAG_PRESET, open_store, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if not configs or not store_exists(uri):
        return []
    client, _ = open_store(uri)
    experiments, token = [], None
    while True:
        page = client.search_experiments(page_token=token)
        experiments += [experiment.experiment_id for experiment in page]
        token = page.token
        if not token:
            break
    found = []
    for name in sorted({config.name for config in configs}):
        query = " AND ".join([tag_clause(TAG_KIND, "train"), tag_clause(TAG_PRESET, name),
                              "attributes.status = 'FINISHED'"])
        token = None
        while experiments:
            page = client.search_runs(experiments, query, page_token=token)
            for run in page:
                tags, params = run.data.tags, run.data.params
                try:
                    world_size = int(tags.get("cdrl.world_size", "1"))
                    batch = tags.get(TAG_PER_PROCESS_BATCH)
                    per_process = int(batch) if batch else int(params.get("training.batch_size", "0")) // world_size
                except (ValueError, ZeroDivisionError):  # not written by cdrl-bench's training
                    continue
                candidate = MeasuredRun(run.info.run_id, name, tags.get("cdrl.device", "an unnamed device"),
                                        world_size, per_process, math.nan, params)
                if per_process < 1 or not any(candidate.measures(config) for config in configs):
                    continue
                rates = [metric.value for metric in client.get_metric_history(run.info.run_id, SPEED_METRIC)
                         if metric.value > 0 and math.isfinite(metric.value)]
                if rates:
                    found.append(replace(candidate, seconds_per_iteration=statistics.fmean(1 / r for r in rates)))
            token = page.token
            if not token:
                break
    return found


@dataclass(frozen=True)
class TrainingCost:
    """What one training of a plan costs: seconds per iteration x iterations x GPUs / 3600 GPU-hours."""

    key: str
    iterations: int
    #: Wall seconds per iteration on ``gpus`` GPUs; None: unknown.
    seconds_per_iteration: float | None
    gpus: int
    #: "given" (--seconds-per-iteration), "measured", "stated" (the suite file) or "unknown".
    kind: str
    #: Where the seconds come from, for people: "measured: 3 runs on NVIDIA H100 80GB HBM3".
    source: str
    #: Seconds of CPU processes rather than of GPUs (a CPU suite's stated cost, or runs measured on a CPU).
    on_cpu: bool = False

    @property
    def gpu_hours(self) -> float | None:
        if self.seconds_per_iteration is None:
            return None
        return self.seconds_per_iteration * self.iterations * self.gpus / 3600

    @property
    def wall_hours(self) -> float | None:
        return None if self.seconds_per_iteration is None else self.seconds_per_iteration * self.iterations / 3600


def _count_list(values: Sequence[float]) -> str:
    return "/".join(f"{value:g}" for value in sorted(set(values)))


def training_costs(plan: Plan, *, runs: Sequence[MeasuredRun] = (), seconds_per_iteration: float | None = None,
                   gpus: int | None = None) -> list[TrainingCost]:
    """The cost of every training of ``plan`` in GPU-hours (seconds/iteration x iterations x GPUs / 3600).

    Seconds per iteration, first that applies: ``seconds_per_iteration`` (given, on ``gpus`` GPUs,
    default the suite's ``[cost] gpus``); measured by those of ``runs`` that trained the same
    preset with the same :data:`COST_SETTINGS` (the runs of one device, a GPU before a CPU, the
    most runs first; the median of their seconds per image of one process's batch); stated by the
    model or the suite's ``[cost]``; else unknown. Measured and stated seconds are scaled to
    ``gpus`` GPUs (default: the measured runs' world size, or ``[cost] gpus``) by each GPU's share
    of the global batch: time per iteration proportional to it, communication not counted.
    """
    if gpus is not None and gpus < 1:
        raise SuiteError(f"--gpus must be at least 1, got {gpus}")
    if seconds_per_iteration is not None and not (math.isfinite(seconds_per_iteration) and seconds_per_iteration > 0):
        raise SuiteError(f"--seconds-per-iteration must be a positive number, got {seconds_per_iteration}")
    stated_cost = plan.suite.cost
    costs = []
    for job in plan.trainings:
        batch, iterations = job.config.training.batch_size, job.config.training.iterations
        stated = job.model.seconds_per_iteration or stated_cost.seconds_per_iteration
        mine = [run for run in runs if run.measures(job.config)]
        if seconds_per_iteration is not None:
            count = gpus or stated_cost.gpus
            costs.append(TrainingCost(job.key, iterations, seconds_per_iteration, count, "given",
                                      "given: --seconds-per-iteration"))
        elif mine:
            by_device: dict[str, list[MeasuredRun]] = {}
            for run in mine:
                by_device.setdefault(run.device, []).append(run)
            device, chosen = max(by_device.items(),
                                 key=lambda item: (item[0].lower() != "cpu", len(item[1]), item[0]))
            count = gpus or statistics.mode(run.world_size for run in chosen)
            share = batch / count
            batches = [run.per_process_batch for run in chosen]
            scaled = (f", scaled from {_count_list(batches)} to {share:g} images per GPU"
                      if set(batches) != {share} else "")
            seconds = statistics.median(run.seconds_per_image for run in chosen) * share
            costs.append(TrainingCost(job.key, iterations, seconds, count, "measured",
                                      f"measured: {len(chosen)} run{'s' if len(chosen) > 1 else ''} on {device}"
                                      f"{scaled}", on_cpu=device.lower() == "cpu"))
        elif stated is not None:
            count = gpus or stated_cost.gpus
            about = ", ".join(part for part in (stated_cost.device, stated_cost.basis) if part)
            scaled = f", scaled from {stated_cost.gpus} to {count} GPUs" if count != stated_cost.gpus else ""
            costs.append(TrainingCost(job.key, iterations, stated * stated_cost.gpus / count, count, "stated",
                                      f"stated{': ' + about if about else ''}{scaled}", on_cpu=stated_cost.on_cpu))
        else:
            costs.append(TrainingCost(job.key, iterations, None, gpus or stated_cost.gpus, "unknown",
                                      "unknown: pass --seconds-per-iteration S"))
    return costs


def _hours(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def cost_units(costs: Sequence[TrainingCost]) -> tuple[str, str]:
    """What the costs count: ("GPUs", "GPU-hours"), or for trainings all on CPUs ("processes", "CPU-hours")."""
    return ("processes", "CPU-hours") if costs and all(cost.on_cpu for cost in costs) else ("GPUs", "GPU-hours")


def cost_rows(costs: Sequence[TrainingCost]) -> list[dict[str, str]]:
    """One row per training: what ``cdrl-bench plan`` prints under the plan."""
    count, hours = cost_units(costs)
    return [{"run": cost.key, "iterations": f"{cost.iterations:,}",
             "s/iteration": "?" if cost.seconds_per_iteration is None else f"{cost.seconds_per_iteration:.3g}",
             count: str(cost.gpus), hours: "?" if cost.gpu_hours is None else _hours(cost.gpu_hours),
             "seconds from": cost.source} for cost in costs]


def cost_total(costs: Sequence[TrainingCost]) -> str:
    """The total line: GPU-hours of every training whose cost is known, by source, and the longest one's wall time."""
    if not costs:
        return "total: no trainings (stored checkpoints and data only)"
    known = [cost for cost in costs if cost.gpu_hours is not None]
    kinds = {kind: sum(cost.kind == kind for cost in costs) for kind in ("given", "measured", "stated", "unknown")}
    count, hours = cost_units(costs)
    line = (f"total: {_hours(sum(cost.gpu_hours for cost in known))} {hours} for {len(known)} of {len(costs)} "
            f"trainings ({', '.join(f'{number} {kind}' for kind, number in kinds.items() if number)})")
    if known:
        longest = max(known, key=lambda cost: cost.wall_hours)
        one = {"GPUs": "GPU", "processes": "process"}[count]
        line += (f"; the longest, {longest.key}, {_hours(longest.wall_hours)} h on {longest.gpus} "
                 f"{count if longest.gpus > 1 else one}")
    if len(known) < len(costs):
        line += f"; {len(costs) - len(known)} unknown: pass --seconds-per-iteration S"
    return line


def plan_rows(plan: Plan, world_size: int = 1) -> list[dict[str, str | int | None]]:
    """One row per training (and per untrained model) of a plan: what ``cdrl-bench plan`` prints.

    Counts are ints (None where they do not apply), for ``plan --format json``; the rest is text.
    """
    from cdrl.train_loop import per_process_batch
    if world_size < 1:
        raise SuiteError(f"--world-size must be at least 1, got {world_size}")
    rows = []
    for key, jobs in _by_source(plan).items():
        first = jobs[0]
        _, selection = first.training_summary(plan.suite.checkpoint_selection)
        config = first.training.config if first.training else first.checkpoint_config or first.floor_config
        per_process: int | str | None = None
        if first.training is not None:
            try:
                per_process = per_process_batch(config.training.batch_size, world_size)
            except ConfigError:  # the run itself would refuse this world size
                per_process = "does not split"
        rows.append({
            "run": key, "preset": config.name if config else "",
            "iterations": config.training.iterations if first.training else None,
            "batch": config.training.batch_size if config and first.floor_config is None else None,
            "per process": per_process,
            "checkpoint": selection, "evals": len(jobs),
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
