"""Reading a suite: find its file, parse the TOML, validate every key and build every config it names once."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from benchmarks.suite.composing import model_config, scoring_sampler_overrides
from benchmarks.suite.schema import (PROFILES, SAFE_NAME_RULE, SUITES_FOLDER, CheckSpec, CostSpec, EvalSection,
                                     ModelSpec, PlotSpec, Profile, Suite, SuiteError, TrainSection, is_safe_name)
from cdrl.config import preset
from cdrl.datasets import DATASETS, dataset_info
from cdrl.errors import CdrlBenchError
from cdrl.metrics import METRICS
from cdrl.ood import INTERPOLATION
from cdrl.typed import FieldError, build

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib


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
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    profiles: _Profiles = _Profiles()
    check: CheckSpec = CheckSpec()
    cost: CostSpec = CostSpec()


def _model(values: dict[str, Any], where: str, default_preset: str | None) -> ModelSpec:
    spec = build(ModelSpec, values, where)
    spec = replace(spec, label=spec.label or spec.key, preset=spec.preset or default_preset or "")
    if not is_safe_name(spec.key):
        raise FieldError(f"{where}key", f"{spec.key!r} must be a plain name ({SAFE_NAME_RULE}): it names run "
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
        raise FieldError("name", f"{written.name!r} must be a plain name ({SAFE_NAME_RULE}): it names run folders "
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
    resolved = dict(title=written.title or written.name, experiment=written.experiment or f"cdrl-suite-{written.name}",
                    models=models, profiles={"full": full, "quick": quick})
    suite = Suite(path=path, **{**{key.name: getattr(written, key.name) for key in fields(_SuiteFile)}, **resolved})
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
               for override in (*suite.train.overrides, *model.overrides,
                                *(o for p in suite.profiles.values() for o in p.overrides))):
            raise SuiteError(f"{path.name}: model {model.key!r}: set the batch with global_batch, not an override of "
                             "training.batch_size")
        if (model.global_batch or suite.train.global_batch) is None:
            raise SuiteError(f"{path.name}: model {model.key!r} declares no global batch: add global_batch = N to "
                             "[train] (all processes together; the paper: 256) or to the model")
        try:
            for profile in PROFILES:
                config = model_config(suite, model, profile, seed=0)
                if (model.checkpoint_selection or suite.eval.checkpoint) == "best" and config.run.select_every == 0:
                    raise SuiteError(f"[eval] checkpoint = \"best\" but the {profile} profile selects no checkpoint: "
                                     "set select_every and select_samples in [profiles." + profile + "], or "
                                     "checkpoint = \"last\"")
        except CdrlBenchError as error:
            raise SuiteError(f"{path.name}: model {model.key!r}: {error}") from None
    return suite


def suite_listing() -> list[dict[str, Any]]:
    """Every shipped suite: name, version, title, models and the paper table it answers (``cdrl-bench suites``)."""
    return [{"suite": name, "version": suite.version, "title": suite.title,
             "models": [model.key for model in suite.models], "paper_table": suite.reference}
            for name, suite in ((name, load_suite(name)) for name in available_suites())]


def suites_table(listed: list[dict[str, Any]]):
    """:func:`suite_listing` as the table ``cdrl-bench suites`` prints."""
    from rich.table import Table

    view = Table(title="cdrl-bench suites (benchmarks/suites/)")
    for column in ("suite", "version", "title", "models", "paper table"):
        view.add_column(column, overflow="fold", no_wrap=column in ("suite", "version"))
    for row in listed:
        view.add_row(row["suite"], str(row["version"]), row["title"], ", ".join(row["models"]),
                     row["paper_table"] or "")
    return view
