"""Planning a suite: expand it into trainings and evaluations (:func:`expand`), pick a part of the plan
(``--only``, ``--shard``: :func:`select`), and describe it (:func:`plan_rows`).

Every run has a stable key (``cdrl/seed0``, ``cdrl/K5/seed0``, ``cond/K15/w0.3/seed0``). With a
checkpoint instead of training, every model that the checkpoint's saved config would have trained
(:data:`benchmarks.suite.composing.NOT_MODEL_SETTINGS` aside) is evaluated from it, under keys
prefixed by the checkpoint's hash.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.suite.composing import (mismatch, model_config, model_differences, scoring_sampler_overrides,
                                        split_differences)
from benchmarks.suite.schema import ModelSpec, Profile, Suite, SuiteError
from cdrl.config import ConfigError, ExperimentConfig, apply_overrides, per_process_batch, selection_metric
from cdrl.metrics import METRICS



@dataclass(frozen=True)
class EvalPoint:
    """One row of a suite's table: a model sampled at K steps per level and guidance weight w from one
    source, its seeds averaged. Suites, records and the regression check name it by :meth:`key`."""

    model: str
    steps_per_level: int
    guidance: float
    #: "trained", "checkpoint-<sha256 prefix>" (a given or stored checkpoint) or "data" (a floor row).
    source: str = "trained"

    def key(self) -> str:
        """``model/K15`` (+ ``/w2``) (+ ``@checkpoint-…`` for a given or stored checkpoint), ``model/floor`` for data."""
        if self.source == "data":
            return f"{self.model}/floor"
        key = f"{self.model}/K{self.steps_per_level}" + (f"/w{self.guidance:g}" if self.guidance else "")
        return key if self.source in ("", "trained") else f"{key}@{self.source}"

    def run_key(self, seed: int, *, guidance_axis: bool = False, prefix: str = "") -> str:
        """The key of one seed's run: ``cdrl/K5/seed0``; ``cond/K15/w0.3/seed0`` (w shown whenever the model
        samples several weights); ``floor/seed0`` for data; ``prefix`` first (a given checkpoint's hash)."""
        if self.source == "data":
            return f"{prefix}{self.model}/seed{seed}"
        parts = [self.model, f"K{self.steps_per_level}"]
        if guidance_axis or self.guidance:
            parts.append(f"w{self.guidance:g}")
        return prefix + "/".join([*parts, f"seed{seed}"])

    @staticmethod
    def fixed_inputs(key: str) -> bool:
        """Whether the point of ``key`` (:meth:`key`) scores fixed inputs (a given or stored checkpoint, or data):
        a change of its numbers is then the code's, not the training's."""
        return "@" in key or key.endswith("/floor")


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
    def point(self) -> EvalPoint:
        """The table row this run contributes to (seeds are averaged)."""
        return EvalPoint(self.model.key, self.steps_per_level, self.guidance, self.source)


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



def selection_rule(config: ExperimentConfig, policy: str) -> str:
    """How a training's scored checkpoint is chosen, briefly: "last", or "best FID (5k every 20k it)"."""
    if policy == "last" or config.run.select_every == 0:
        return "last"
    metric = selection_metric(config)
    return (f"best {METRICS[metric].label} ({_count(config.run.select_samples)} every "
            f"{_count(config.run.select_every)} it)")


def _count(value: int) -> str:
    return f"{value // 1000}k" if value >= 1000 and value % 1000 == 0 else str(value)


def eval_steps(model: ModelSpec, config: ExperimentConfig) -> tuple[int, ...]:
    return model.steps or (config.sampler.steps(config.langevin),)


def _eval_key(prefix: str, model: ModelSpec, steps: int, guidance: float, seed: int) -> str:
    return EvalPoint(model.key, steps, guidance).run_key(seed, guidance_axis=len(model.guidance) > 1, prefix=prefix)


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
        return [EvalJob(EvalPoint(model.key, 0, 0.0, "data").run_key(seed), model, None, 0, 0, 0.0, seed,
                        model.samples(settings), source="data", floor_config=config) for seed in settings.seeds]
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
        # A model that differs from the checkpoint in sampler.* alone (no-tweedie-step, or one that
        # scores another) is the checkpoint sampled its way.
        trained, sampler_overrides = split_differences(model_differences(model_config(suite, model, profile, seed=0),
                                                                         saved))
        if trained:
            skipped.append(f"{model.label} ({mismatch(trained)})")
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


def plan_rows(plan: Plan, world_size: int = 1) -> list[dict[str, str | int | None]]:
    """One row per training (and per untrained model) of a plan: what ``cdrl-bench plan`` prints.

    Counts are ints (None where they do not apply), for ``plan --format json``; the rest is text.
    """
    if world_size < 1:
        raise SuiteError(f"--world-size must be at least 1, got {world_size}")
    rows = []
    for key, jobs in _by_source(plan).items():
        first = jobs[0]
        _, selection = first.training_summary(plan.suite.eval.checkpoint)
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


def plan_table(plan: Plan, rows: list[dict[str, str | int | None]], world_size: int):
    """:func:`plan_rows` as the table ``cdrl-bench plan`` prints."""
    from rich.table import Table

    view = Table(title=f"suite {plan.suite.name} v{plan.suite.version} ({plan.profile}): "
                       f"{len(plan.trainings)} trainings, {len(plan.evaluations)} evaluations, "
                       f"{world_size} process{'es' if world_size > 1 else ''} per training")
    for column in rows[0]:
        view.add_column(column, overflow="fold", no_wrap=column not in ("run", "preset", "checkpoint", "points"))
    for row in rows:
        view.add_row(*("" if value is None else f"{value:,}" if isinstance(value, int) else value
                       for value in row.values()))
    return view


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
