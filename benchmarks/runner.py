"""Run a suite's plan: train each model (resumably), score it at each evaluation point, log it all to MLflow.

Resumable at every level: evaluation runs already FINISHED (same key, suite version and
profile) are skipped; a model whose evaluations are all done is not trained again; a
training run interrupted after a checkpoint continues from it (``cdrl.train_loop``). Run
folders are ``RUNS/suites/SUITE-vVERSION/PROFILE/MODEL/seedN``.

Concurrent runs of one suite split the work: a training is claimed by its folder's lease
(``cdrl.run_folder``), an evaluation by a lease of its own key
(``RUNS/suites/SUITE-vVERSION/PROFILE/.leases/KEY.lock``), taken before it runs and checked
against the store once taken. What another process holds is left to it and reported, not redone.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.progress import Progress, TaskID

from benchmarks.records import finished_eval_runs
from benchmarks.suite import EvalJob, Plan, SuiteError, TrainingJob, selection_rule
from cdrl import ood, scoring, train_loop
from cdrl.config import apply_overrides
from cdrl.distributed import Ranks, process_group, shared
from cdrl.progress import JobProgress, shown_in
from cdrl.run_folder import FolderBusy, RunFolder, claimed, resume_point
from cdrl.metrics import METRICS
from cdrl.tags import (TAG_GLOBAL_BATCH, TAG_GUIDANCE, TAG_METHOD, TAG_MODEL, TAG_PARENT_RUN, TAG_PROFILE,
                       TAG_RUN_KEY, TAG_SEED, TAG_SOURCE, TAG_STEPS, TAG_SUITE, TAG_SUITE_VERSION)
from cdrl.tracking import describe_experiment


#: What one call runs: trainings and their evaluations, only the trainings, or only the evaluations
#: (of trainings that have finished, and of given checkpoints and data floors).
Phase = Literal["all", "train", "eval"]


@dataclass
class RunSummary:
    already_finished: int = 0
    trained: list[str] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    #: Evaluations left to another process that held them (or their training); of those, the ones
    #: that process had finished when this one ended.
    elsewhere: list[str] = field(default_factory=list)
    finished_elsewhere: list[str] = field(default_factory=list)
    #: Wall seconds by phase: training (with its selections and snapshots), sampling, Inception features
    #: (reference and samples; a cached reference costs none) and metrics (everything else in scoring).
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("training", "sampling", "features", "metrics"), 0.0))

    def phases_line(self) -> str:
        """Where the time went, largest first: "training 41 s (62%), features 17 s (26%), sampling 6 s (9%), ..."."""
        total = sum(self.seconds.values()) or 1.0
        return ", ".join(f"{phase} {seconds:.0f} s ({seconds / total:.0%})" for phase, seconds in
                         sorted(self.seconds.items(), key=lambda item: -item[1]))


def run_folder(plan: Plan, job: TrainingJob, runs_dir: Path) -> Path:
    root = runs_dir / "suites"
    parts = (f"{plan.suite.name}-v{plan.suite.version}", plan.profile, job.model.key, f"seed{job.seed}")
    folder = root.joinpath(*parts)
    # load_suite admits only plain names; this also holds for a Suite or ModelSpec built in code.
    inside = Path(os.path.abspath(folder)).is_relative_to(os.path.abspath(root))
    if not inside or any(part in ("", ".", "..") or Path(part).name != part for part in parts):
        raise SuiteError(f"{job.key}: run folder {folder} would not be a folder of its own under {root}: give the "
                         "suite and the model plain names (letters, digits, '.', '_', '-')")
    return folder


def _tags(plan: Plan, key: str, model_key: str, seed: int, source: str) -> dict[str, str]:
    return {TAG_SUITE: plan.suite.name, TAG_SUITE_VERSION: str(plan.suite.version), TAG_PROFILE: plan.profile,
            TAG_RUN_KEY: key, TAG_MODEL: model_key, TAG_SEED: str(seed), TAG_SOURCE: source}


def _config(job: TrainingJob, data_dir: str | None):
    return job.config if data_dir is None else apply_overrides(job.config, [f"data.data_dir={data_dir}"])


def _scored_checkpoint(plan: Plan, job: TrainingJob, folder: Path, last: Path | None,
                       best: Path | None, run_id: str | None) -> tuple[str, str, str | None]:
    """(the checkpoint to score, how it was selected, the training's MLflow run): the best one when asked for."""
    rule = selection_rule(job.config, plan.suite.eval.checkpoint)
    if rule == "last":
        return str(last), "last", run_id
    if best is None:
        raise SuiteError(f"{job.key}: the suite scores the best checkpoint but {folder} holds none: "
                         "rerun it with run.select_every > 0")
    return str(best), rule, run_id


def _train(plan: Plan, job: TrainingJob, runs_dir: Path, tracking_uri: str | None, data_dir: str | None,
           device, progress: Progress) -> tuple[str, str, str | None, int] | None:
    """Train (or continue) ``job``; rank 0 gets what :func:`_scored_checkpoint` says and the iteration the
    training started from (a requeued job continues its checkpoint), the other ranks None."""
    config = _config(job, data_dir)
    folder = run_folder(plan, job, runs_dir)
    started = RunFolder(folder).checkpoint_paths()
    # A folder with checkpoints is continued (or, when already complete, just reopened); the
    # train loop refuses it if the model's config has changed since, beyond the iteration budget.
    result = train_loop.train(config, resume=folder if started else None, out=None if started else folder,
                              tracking_uri=tracking_uri, experiment_name=plan.suite.experiment,
                              tags=_tags(plan, job.key, job.model.key, job.seed, "trained"), device=device,
                              progress=progress)
    if result.run_id is None:  # not rank 0
        return None
    return (*_scored_checkpoint(plan, job, folder, result.checkpoint, result.best_checkpoint, result.run_id),
            result.started_at)


def _trained_line(job: TrainingJob, started_at: int, seconds: float) -> str:
    """'trained KEY (1500 iterations, 14 s)', saying so when a checkpoint (a requeue's) did part of them."""
    iterations = job.config.training.iterations
    if started_at >= iterations:
        done = f"{iterations} iterations, already trained"
    elif started_at:
        done = f"iterations {started_at + 1}-{iterations}, continued from its checkpoint"
    else:
        done = f"{iterations} iterations"
    return f"trained {job.key} ({done}, {seconds:.0f} s)"


def _trained(plan: Plan, job: TrainingJob, runs_dir: Path, data_dir: str | None) -> tuple[str, str, str | None]:
    """:func:`_train`'s answer for a training that a job of its own has finished, read from its run folder."""
    folder = run_folder(plan, job, runs_dir)
    if not RunFolder(folder).checkpoint_paths():
        raise SuiteError(f"{job.key} has not been trained ({folder} holds no checkpoint): run its training first "
                         "(run --phase train, or without --phase)")
    point = resume_point(folder, tracking_uri=None, world_size=None, config=_config(job, data_dir))
    iteration, total = point.payload["trainer"]["iteration"], job.config.training.iterations
    if iteration < total:
        raise SuiteError(f"{job.key} is at iteration {iteration} of {total}: its training has not finished; "
                         "run it first (run --phase train, or without --phase)")
    return _scored_checkpoint(plan, job, folder, point.checkpoint, RunFolder(folder).best(),
                              point.payload["mlflow_run_id"])


def _metrics_line(metrics: dict[str, float]) -> str:
    return ", ".join(f"{METRICS[name].label} {value:.{METRICS[name].decimals}f}"
                     for name, value in metrics.items() if name in METRICS)


def _finished(plan: Plan, tracking_uri: str | None) -> set[tuple[str, str]]:
    """(key, source) of every evaluation of ``plan`` with a FINISHED run in the store (same suite version and profile)."""
    suite = plan.suite
    done = finished_eval_runs(suite.experiment, suite.name, suite.version, plan.profile, tracking_uri)
    return set(zip(done[f"tags.{TAG_RUN_KEY}"], done[f"tags.{TAG_SOURCE}"])) if not done.empty else set()


def pending_evaluations(plan: Plan, tracking_uri: str | None) -> list[EvalJob]:
    """The evaluations of ``plan`` that have no FINISHED run in the store yet (same suite version and profile).

    A run counts for its key and source: a stored checkpoint replaced by another file (another
    hash) is evaluated again.
    """
    finished = _finished(plan, tracking_uri)
    return [job for job in plan.evaluations if (job.key, job.source) not in finished]


def evaluation_lease(plan: Plan, job: EvalJob, runs_dir: Path) -> Path:
    """The lock file that claims evaluation ``job`` (its key, whose '/' become '__')."""
    folder = runs_dir / "suites" / f"{plan.suite.name}-v{plan.suite.version}" / plan.profile / ".leases"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{job.key.replace('/', '__')}.lock"


def _trained_elsewhere(plan: Plan, job: TrainingJob, runs_dir: Path) -> bool:
    """Whether another process holds the lease of ``job``'s run folder (is training it now)."""
    folder = RunFolder(run_folder(plan, job, runs_dir))
    if not folder.root.is_dir():
        return False
    with claimed(folder.lease_file) as mine:
        return not mine


def run_plan(plan: Plan, *, tracking_uri: str | None = None, runs_dir: Path = Path("runs"),
             data_dir: str | None = None, device: str | None = None, console: Console | None = None,
             phase: Phase = "all") -> RunSummary | None:
    """Train and score whatever of ``plan`` is not finished yet, showing overall progress.

    Under torchrun every rank calls this; rank 0 returns the summary of what was done, the other
    ranks None.
    """
    with process_group(device) as (ranks, device):
        console = console if ranks.is_main and console is not None else Console(quiet=not ranks.is_main)
        suite = plan.suite
        if ranks.is_main:  # what the suite's experiment holds, at the top of its page in MLflow
            describe_experiment(suite.experiment, f"Suite {suite.name} v{suite.version}: {suite.title}. Trainings "
                                                  "are named by run key, each evaluation nested under its training.",
                                tracking_uri)
        # Rank 0 alone reads the store.
        pending_keys = set(shared([job.key for job in pending_evaluations(plan, tracking_uri)] if ranks.is_main
                                  else None, ranks))
        pending = [job for job in plan.evaluations if job.key in pending_keys]
        summary = RunSummary(already_finished=len(plan.evaluations) - len(pending))
        by_training = _by_training(pending, phase)
        trainings = [job for job in plan.trainings if job.key in by_training] if phase != "eval" else []
        evaluations = sum(len(jobs) for jobs in by_training.values())
        for skipped in plan.skipped:
            console.print(f"[yellow]skipped[/] {skipped}: the given checkpoint does not fit it", highlight=False)
        console.print(f"suite {suite.name} v{suite.version} ({plan.profile}, {plan.source}"
                      f"{'' if phase == 'all' else ', ' + phase + ' phase'}): "
                      f"{summary.already_finished} of {len(plan.evaluations)} evaluations already finished, "
                      f"{len(trainings)} trainings and {evaluations} evaluations to run", highlight=False,
                      soft_wrap=True)
        # The suite's jobs, and below them the current training's iterations or evaluation's samples.
        progress = JobProgress(console=console, disable=not ranks.is_main)
        with progress, shown_in(progress):
            overall = progress.add_task(f"{suite.name}", total=len(trainings) + evaluations)
            step = _SuiteSteps(plan, ranks, progress, overall, summary, tracking_uri, runs_dir, data_dir, device)
            for training_key, jobs in by_training.items():
                scored_from = ((None, "given", None) if training_key is None
                               else step.training(next(job for job in plan.trainings if job.key == training_key),
                                                  jobs, phase))
                if scored_from is not None:
                    for job in jobs:
                        step.evaluation(job, *scored_from)
            progress.update(overall, description=f"{suite.name}: done")
        if summary.elsewhere and ranks.is_main:
            finished = {key for key, _ in _finished(plan, tracking_uri)}
            summary.finished_elsewhere = [key for key in summary.elsewhere if key in finished]
        return summary if ranks.is_main else None


def _by_training(pending: list[EvalJob], phase: Phase) -> dict[str | None, list[EvalJob]]:
    """The pending evaluations by the training they score (None: no training), those first; for the train phase
    the trainings alone."""
    by_training: dict[str | None, list[EvalJob]] = {}
    for job in pending:
        by_training.setdefault(job.training.key if job.training else None, []).append(job)
    if None in by_training:  # stored checkpoints and floors first: they cost no training
        by_training = {None: by_training.pop(None), **by_training}
    if phase == "train":
        by_training = {key: [] for key in by_training if key is not None}
    return by_training


@dataclass
class _SuiteSteps:
    """The steps of one :func:`run_plan`: a training (or finding its checkpoint) and an evaluation, on every rank."""

    plan: Plan
    ranks: Ranks
    progress: JobProgress
    overall: TaskID
    summary: RunSummary
    tracking_uri: str | None
    runs_dir: Path
    data_dir: str | None
    device: str | None

    def training(self, training: TrainingJob, jobs: list[EvalJob], phase: Phase
                 ) -> tuple[str | None, str, str | None] | None:
        """(checkpoint, selection, training run) that ``jobs`` score; None when another process trains it."""
        plan, ranks, progress, suite = self.plan, self.ranks, self.progress, self.plan.suite
        if phase == "eval":
            return _trained(plan, training, self.runs_dir, self.data_dir)
        progress.update(self.overall, description=f"{suite.name}: training {training.key}")
        started = time.monotonic()
        # Another `run` of this suite is training it: its evaluations are that process's too.
        busy = shared(_trained_elsewhere(plan, training, self.runs_dir) if ranks.is_main else None, ranks)
        try:
            # Rank 0 alone knows the checkpoint files and the MLflow run: it tells the others.
            trained = None if busy else shared(
                _train(plan, training, self.runs_dir, self.tracking_uri, self.data_dir, self.device, progress), ranks)
        except FolderBusy:  # taken since the check (one process; under torchrun the job stops)
            if ranks.world_size > 1:
                raise
            trained = None
        if trained is None:
            self.summary.elsewhere += [job.key for job in jobs]
            progress.console.print(f"left {training.key} and its {len(jobs)} evaluations to the process training it",
                                   highlight=False, soft_wrap=True)
            progress.advance(self.overall, 1 + len(jobs))
            return None
        checkpoint, selection, training_run, started_at = trained
        self.summary.trained.append(training.key)
        self.summary.seconds["training"] += time.monotonic() - started
        progress.console.print(_trained_line(training, started_at, time.monotonic() - started)
                               + (f": scoring {checkpoint} ({selection})" if jobs else ""),
                               highlight=False, soft_wrap=True)
        progress.advance(self.overall)
        return checkpoint, selection, training_run

    def evaluation(self, job: EvalJob, checkpoint: str | None, selection: str, training_run: str | None) -> None:
        plan, ranks, progress, summary = self.plan, self.ranks, self.progress, self.summary
        progress.update(self.overall, description=f"{plan.suite.name}: scoring {job.key}")
        # Rank 0 claims the evaluation (held while every rank scores it), then checks that no
        # other process finished it since this run listed what was pending.
        lease = claimed(evaluation_lease(plan, job, self.runs_dir)) if ranks.is_main else contextlib.nullcontext()
        with lease as mine:
            state = None
            if ranks.is_main:
                state = ("elsewhere" if not mine else "finished"
                         if (job.key, job.source) in _finished(plan, self.tracking_uri) else "mine")
            state = shared(state, ranks)
            if state != "mine":
                if state == "elsewhere":
                    summary.elsewhere.append(job.key)
                else:
                    summary.already_finished += 1
                progress.advance(self.overall)
                return
            result = _evaluate(plan, job, checkpoint, selection, training_run, self.tracking_uri, self.data_dir,
                               self.device)
        summary.evaluated.append(job.key)
        if result is not None:
            summary.seconds["sampling"] += result.timing["sampling_seconds"]
            summary.seconds["features"] += result.timing["feature_seconds"]
            summary.seconds["metrics"] += result.timing["metric_seconds"]
            progress.console.print(f"scored {job.key}: {_metrics_line(result.metrics)}", highlight=False,
                                   soft_wrap=True)
        progress.advance(self.overall)


def _evaluate(plan: Plan, job: EvalJob, checkpoint: str | None, selection: str, training_run: str | None,
              tracking_uri: str | None, data_dir: str | None, device):
    """Score one evaluation point (every rank draws its share of the samples); rank 0 gets the result.

    Its sampling and feature extraction show their own bars in the suite's display (cdrl.progress.stage).
    """
    suite = plan.suite
    tags = {**_tags(plan, job.key, job.model.key, job.seed, job.source),
            TAG_METHOD: "data" if job.floor_config else (
                job.training.config.training.method if job.training else job.model.method),
            TAG_STEPS: str(job.steps_per_level), TAG_GUIDANCE: f"{job.guidance:g}",
            **({TAG_GLOBAL_BATCH: str(job.training.config.training.batch_size)} if job.training else {}),
            # MLflow's own nesting: the evaluation shows under its training run.
            **({TAG_PARENT_RUN: training_run} if training_run else {})}
    protocol = scoring.ScoringRequest(
        reference_split=job.model.reference_split or suite.eval.reference_split,
        n_reference=job.model.n_reference or suite.profiles[plan.profile].n_reference, backend=suite.eval.backend,
        reference_overrides=job.model.reference_overrides, data_dir=data_dir)
    record = scoring.Recording(tracking_uri, suite.experiment, tags)
    if job.floor_config is not None:
        return scoring.score_data(job.floor_config, job.n_samples, protocol, seed=job.seed, device=device,
                                  record=record)
    if job.model.ood is not None:
        return ood.score_ood(job.checkpoint or checkpoint, job.model.ood, job.n_samples, seed=job.seed, device=device,
                             data_dir=data_dir, checkpoint_selection=selection, record=record)
    sampling = scoring.SamplingRequest(Path(job.checkpoint or checkpoint), job.n_samples, job.steps_per_level,
                                       job.seed, suite.eval.batch_size, job.guidance,
                                       sampler_overrides=job.sampler_overrides, concepts=job.model.concepts)
    return scoring.score_checkpoint(sampling, protocol, device=device, checkpoint_selection=selection, record=record)
