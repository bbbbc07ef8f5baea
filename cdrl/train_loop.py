"""Config-driven cooperative training: data, steps, logging, sample grids, checkpoints, DDP.

Small and explicit on purpose: :func:`train` builds the dataset (``build_dataset`` +
``infinite_batches``) and a :class:`~cdrl.training.CooperativeTrainer`, then repeats
``trainer.step`` and, at the cadences of ``config.run``, logs to MLflow (rank 0 only),
draws samples under EMA weights (:func:`cdrl.generation.generate`) and writes checkpoints
into the run's folder (:class:`cdrl.run_folder.RunFolder`, which also says where a run is).

Every checkpoint holds the config, networks, EMAs, optimisers, schedulers, every rank's RNG
states and the MLflow run id, so ``train(resume=RUN)`` continues the same run and the same
loss curve. Distributed: ``torchrun --nproc_per_node N --no-python cdrl-bench train --preset NAME ...``:
NCCL on GPUs, Gloo on CPUs, one batch stream and RNG
stream per rank; DDP's buffer broadcast keeps the spectral-norm u/v vectors in sync.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import os
import platform
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import cdrl
from cdrl.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, weights_problem
from cdrl.config import ConfigError, ExperimentConfig, RunConfig, apply_overrides, check_networks_fit_data
from cdrl.datasets import build_dataset, dataset_info, infinite_batches, toy_in_support
from cdrl.distributed import (Ranks, gathered, init_distributed, largest_on_any_rank, launched_world_size, rank_seed,
                              shared)
from cdrl.errors import CdrlBenchError
from cdrl.figures import save_sample_figure
from cdrl.generation import GenerationSpec, ema_model, generate
from cdrl.performance import use_threads
from cdrl.preemption import PreemptionWatch, Preempted
from cdrl.progress import JobProgress
from cdrl.run_folder import ResumePoint, RunFolder, resume_point
from cdrl.scoring import ScoringRequest, score_samples
from cdrl.tags import (TAG_CHECKPOINT_DIR, TAG_DIVERGED, TAG_GLOBAL_BATCH, TAG_KIND, TAG_METHOD,
                       TAG_PER_PROCESS_BATCH, TAG_PRESET, TAG_RUN_KEY)
from cdrl.store import checked_store
from cdrl.tracking import DIVERGED_METRIC, TrackedRun, tracked_run
from cdrl.training import CooperativeTrainer, StepStats

#: Noise stream of selection samples, apart from the training and sample-grid streams.
_SELECTION_STREAM = 0x5E1EC7
#: Selection metrics by "is an image dataset", the default first; all lower-is-better (RunConfig.select_metric).
_SELECTION_METRICS = {True: ("fid", "kid_mean"), False: ("energy_distance",)}


class TrainingDiverged(CdrlBenchError):
    """A loss or energy became non-finite, passed run.divergence_bound or jumped (run.divergence_jump), and the
    divergence policy ended the run."""


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    #: The last checkpoint written (None on ranks other than 0).
    checkpoint: Path | None
    #: The MLflow run (None on ranks other than 0).
    run_id: str | None
    trainer: CooperativeTrainer
    #: checkpoints/best.pt, the best-scoring checkpoint (None without run.select_every, or on ranks other than 0).
    best_checkpoint: Path | None
    #: Which checkpoint is the run's result, e.g. "best: fid 41.7 at iteration 2000 of 4000 (...)".
    selection: str
    #: The iteration this call started from: 0, or the checkpoint's that a resume continued.
    started_at: int = 0


# --------------------------------------------------------------------------- config checks

def per_process_batch(global_batch: int, world_size: int) -> int:
    """Each process's share of the global batch ``training.batch_size``; it must divide evenly."""
    if global_batch < world_size or global_batch % world_size:
        raise ConfigError(f"training.batch_size={global_batch} (the global batch) does not split evenly over "
                          f"{world_size} processes: run a number of processes that divides it, or set "
                          f"training.batch_size to a multiple of {world_size}")
    return global_batch // world_size


def selection_metric(config: ExperimentConfig) -> str:
    """The metric that run.select_metric names for this data ("auto": fid for images, energy_distance for toys)."""
    allowed = _SELECTION_METRICS[dataset_info(config.data.dataset).is_image]
    chosen = config.run.select_metric
    if chosen == "auto":
        return allowed[0]
    if chosen not in allowed:
        raise ConfigError(f"run.select_metric={chosen} cannot score {config.data.dataset} samples: "
                          f"set run.select_metric to auto or {' or '.join(allowed)}")
    return chosen


# --------------------------------------------------------------------------- RNG, learning rates, divergence

def _rng_state(trainer: CooperativeTrainer) -> dict[str, torch.Tensor]:
    # Python's and numpy's global RNGs are not used in training (batches are seeded per batch).
    state = {"torch": torch.get_rng_state(), "trainer": trainer.generator.get_state()}
    if trainer.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(trainer.device)
    return state


def _restore_rng(trainer: CooperativeTrainer, state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    trainer.generator.set_state(state["trainer"])
    if trainer.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], trainer.device)


def _set_lr_scale(trainer: CooperativeTrainer, scale: float) -> None:
    """Learning rates = the config's times ``scale``, keeping the warm-up's current fraction."""
    training = trainer.config.training
    pairs = [(trainer.ebm_optimizer, trainer.ebm_scheduler, training.ebm_lr)]
    if trainer.initializer is not None:
        pairs.append((trainer.initializer_optimizer, trainer.initializer_scheduler, training.initializer_lr))
    for optimizer, scheduler, lr in pairs:
        for group, old_base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = group["lr"] * (lr * scale) / old_base if old_base else 0.0
        scheduler.base_lrs = [lr * scale for _ in scheduler.base_lrs]


def watched(stats: StepStats) -> torch.Tensor:
    """What divergence is judged on: the step's EBM loss, energies and initializer loss."""
    values = [stats.ebm_loss, stats.positive_energy, stats.negative_energy]
    if stats.initializer_loss is not None:
        values.append(stats.initializer_loss)
    return torch.stack(values)


class DivergenceWatch:
    """Divergence by bound and by behaviour, judged on each window between two checks of the loop.

    A window's peak is its largest |loss|, |energy| or initializer loss. It diverges when it is
    non-finite, above run.divergence_bound, or run.divergence_jump times the median of the peaks of
    the last :attr:`HISTORY` healthy windows (judged once :attr:`MIN_HISTORY` are known): a blow-up
    that stays finite and below the bound still jumps by orders of magnitude within a few windows,
    while a healthy run's peaks drift by small factors (measured in results/measurements.md).
    """

    HISTORY = 50
    MIN_HISTORY = 3

    def __init__(self, run: RunConfig) -> None:
        self.bound, self.jump = run.divergence_bound, run.divergence_jump
        self.peaks: deque[float] = deque(maxlen=self.HISTORY)

    def problem(self, peak: float, iteration: int) -> str | None:
        """Why the window ending at ``iteration`` with ``peak`` diverged, or None (then the peak joins the history)."""
        if not math.isfinite(peak):
            return f"non-finite loss or energy by iteration {iteration}"
        if peak > self.bound:
            return (f"loss or energy of magnitude {peak:.3g} by iteration {iteration}, beyond "
                    f"run.divergence_bound={self.bound:g}")
        if len(self.peaks) >= self.MIN_HISTORY:
            typical = statistics.median(self.peaks)
            if peak > self.jump * typical:
                return (f"loss or energy of magnitude {peak:.3g} by iteration {iteration}, {peak / typical:.3g} times "
                        f"the median {typical:.3g} of the last {len(self.peaks)} checks (run.divergence_jump="
                        f"{self.jump:g})")
        self.peaks.append(peak)
        return None


# --------------------------------------------------------------------------- samples

def snapshot_spec(config: ExperimentConfig, iteration: int) -> GenerationSpec:
    """The sample grid at ``iteration``: ``run.n_samples`` EMA samples of fresh noise."""
    return GenerationSpec.resolve(config, config.run.n_samples, seed=rank_seed(config.training.seed, iteration))


def selection_spec(config: ExperimentConfig) -> GenerationSpec:
    """``run.select_samples`` EMA samples from the same noise at every selection, so scores differ by the weights only."""
    seed = int(np.random.SeedSequence((config.training.seed, _SELECTION_STREAM)).generate_state(1)[0])
    return GenerationSpec.resolve(config, config.run.select_samples, seed=seed)


def _sample_metrics(samples: torch.Tensor, config: ExperimentConfig) -> dict[str, float]:
    if dataset_info(config.data.dataset).is_image:
        return {}
    inside = toy_in_support(config.data.dataset, samples, config.data.toy_scale)
    return {"in_support_fraction": float(inside.float().mean())}


# --------------------------------------------------------------------------- checkpoint selection

def _selection_score(trainer: CooperativeTrainer, metric: str, ranks: Ranks) -> float | None:
    """``metric`` of the selection samples, drawn by every rank; scored by rank 0 (None elsewhere)."""
    config = trainer.config
    with ema_model(trainer) as model:
        samples = generate(model, selection_spec(config), device=trainer.device, ranks=ranks,
                           chain=trainer.chain_ebm)
    if not ranks.is_main:
        return None
    # Images: against the first n_samples training images (the published protocol); toys: fresh draws seeded here.
    scores = score_samples(samples, config, ScoringRequest(reference_split="train", n_reference=len(samples)),
                           seed=config.training.seed, device=trainer.device)
    return scores.metrics[metric]


def _restored_selection(payload: dict | None, metric: str, run: RunConfig) -> dict | None:
    """The best score so far of a resumed run, when it was measured as this run measures it."""
    saved = (payload or {}).get("selection")
    # Another metric or sample count gives incomparable scores (FID's bias depends on N): selection starts over.
    # A best.pt written after this checkpoint (then killed) is scored again as the resumed run replays its iterations.
    if saved is not None and (saved["metric"], saved["samples"]) == (metric, run.select_samples):
        return saved
    return None


def _selection_rule(run: RunConfig, metric: str) -> str:
    return f"lowest {metric} of {run.select_samples} EMA samples, every {run.select_every} iterations and at the last"


def _selection_summary(run: RunConfig, best: dict | None, iteration: int) -> str:
    if run.select_every == 0:
        return "last (no selection)"
    if best is None:
        return "last (no selection score yet)"
    return (f"best: {best['metric']} {best['value']:.4g} at iteration {best['iteration']} of {iteration} "
            f"({run.select_samples} samples every {run.select_every} iterations)")


# --------------------------------------------------------------------------- environment

def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _environment_tags(device: torch.device, world_size: int) -> dict[str, str]:
    tags = {"cdrl.version": cdrl.__version__, "cdrl.torch_version": torch.__version__,
            "cdrl.python_version": platform.python_version(), "cdrl.world_size": str(world_size),
            "cdrl.device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _progress(enabled: bool) -> JobProgress:
    return JobProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                       TextColumn("{task.fields[losses]}"), disable=not enabled, transient=False)


# --------------------------------------------------------------------------- training

def train(config: ExperimentConfig | None = None, *, resume: str | os.PathLike | None = None,
          overrides: Sequence[str] = (), out: str | os.PathLike | None = None, tracking_uri: str | None = None,
          experiment_name: str | None = None, tags: dict[str, str] | None = None,
          device: str | torch.device | None = None, show_progress: bool = True,
          progress: Progress | None = None) -> TrainResult:
    """Train ``config`` (with ``overrides``) into ``out``, or continue the run that ``resume`` names.

    ``resume`` is a checkpoint, a run folder or an MLflow run id; the run keeps its config
    except ``run.*``, ``training.iterations`` and ``data.data_dir``, its folder and its MLflow
    run. ``tags`` (e.g. ``cdrl.suite``, ``cdrl.run_key``) are added to the MLflow run.
    Rank 0 shows progress unless ``show_progress`` is False: a bar on a terminal, a line every
    30 s in a log (:class:`cdrl.progress.JobProgress`), or a task in ``progress`` when the caller
    shows one (a suite). Under torchrun every rank calls this.
    """
    resumed = None
    if resume is not None:
        if out is not None:
            raise ConfigError("--out cannot be combined with --resume: a resumed run continues in its own folder")
        resumed = resume_point(resume, tracking_uri=tracking_uri, world_size=launched_world_size(), config=config,
                               overrides=overrides)
        config = resumed.config
    elif config is None:
        raise ConfigError("nothing to train: pass a preset (--preset NAME) or a run to --resume")
    else:
        config = apply_overrides(config, list(overrides))
    selection_metric(config)  # a metric that cannot score this data fails before any folder or run exists
    check_networks_fit_data(config)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file: a run needs a folder of its own; choose another --out")
    warning = use_threads(config.performance.threads)
    checked_store(tracking_uri)  # so does a tracking URI MLflow cannot use, or a server that does not answer
    # Bad data paths fail here, before any folder, process group or MLflow run exists.
    dataset = build_dataset(config.data)
    ranks, device, started_group = init_distributed(device)
    if warning and ranks.is_main:
        Console(stderr=True).print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    try:
        if resumed is not None:
            folder = resumed.folder
        else:
            folder = RunFolder(Path(out) if out is not None else Path(shared(str(RunFolder.default_name(config.name)),
                                                                             ranks)))
            folder.check_fresh()
        folder = RunFolder(folder.root.resolve())
        # Rank 0 holds the folder's lease: two workers never train one model into one folder.
        with folder.lease() if ranks.is_main else contextlib.nullcontext():
            return _train(config, dataset, folder, resumed, ranks, device, tracking_uri, experiment_name,
                          tags or {}, show_progress, progress)
    finally:
        if started_group:
            dist.destroy_process_group()


def _train(config: ExperimentConfig, dataset, folder: RunFolder, resumed: ResumePoint | None, ranks: Ranks, device: torch.device, tracking_uri: str | None, experiment_name: str | None,
           tags: dict[str, str], show_progress: bool, shown: Progress | None) -> TrainResult:
    training, cadence = config.training, config.run
    batch = per_process_batch(training.batch_size, ranks.world_size)
    seed = rank_seed(training.seed, ranks.rank)
    torch.manual_seed(training.seed)  # the same initial weights on every rank
    trainer = CooperativeTrainer(config, device, distributed=ranks.world_size > 1,
                                 generator=torch.Generator(device=device).manual_seed(seed))
    torch.manual_seed(seed)  # per-rank stream for dropout
    rollbacks = 0
    payload = resumed.payload if resumed is not None else None
    if payload is not None:
        trainer.load_state_dict(payload["trainer"])
        _restore_rng(trainer, payload["rng"][ranks.rank])
        rollbacks = payload["rollbacks"]
    started_at = trainer.iteration
    metric = selection_metric(config)
    best = _restored_selection(payload, metric, cadence)
    last_checkpoint = resumed.checkpoint if resumed is not None and ranks.is_main else None
    if ranks.is_main:
        folder.prepare(config, resumed.corrupt if resumed is not None else (), start=started_at)

    run_tags = {TAG_KIND: "train", TAG_PRESET: config.name, TAG_METHOD: training.method,
                TAG_CHECKPOINT_DIR: str(folder.checkpoints), TAG_GLOBAL_BATCH: str(training.batch_size),
                TAG_PER_PROCESS_BATCH: str(batch), **_environment_tags(device, ranks.world_size), **tags}
    if cadence.select_every:
        run_tags["cdrl.selection"] = _selection_rule(cadence, metric)
    tracking = (tracked_run(tracking_uri=tracking_uri, experiment_name=experiment_name,
                            run_id=payload["mlflow_run_id"] if payload else None,
                            run_name=tags.get(TAG_RUN_KEY, folder.root.name),
                            tags=run_tags, flush_seconds=cadence.flush_seconds,
                            # SIGTERM/SIGHUP/Ctrl-C end the run KILLED; one that a SIGKILL left RUNNING
                            # in this folder is closed KILLED when the folder trains again.
                            replaces=(TAG_CHECKPOINT_DIR,))
                if ranks.is_main else contextlib.nullcontext())
    showing = contextlib.nullcontext(shown) if shown is not None else _progress(ranks.is_main and show_progress)
    # Outermost, so that a preemption has closed the MLflow run before the signal is handed on.
    watch = PreemptionWatch()
    with watch.installed(), tracking as run, showing as progress, _task(progress, shown is not None) as task:
        if run is not None:
            if payload is None:
                run.log_params(config.flat())
            run.log_dict(config.to_dict(), "config.json")
        progress.update(task, description=tags.get(TAG_RUN_KEY, config.name), total=training.iterations,
                        completed=trainer.iteration)
        batches = infinite_batches(dataset, batch, training.seed, ranks.rank, ranks.world_size,
                                   start_iteration=trainer.iteration)
        # The largest |loss| or |energy| since the last check (NaN stays NaN): on the device.
        peak = torch.zeros((), device=device)
        divergence = DivergenceWatch(cadence)
        rolled_back_to = None
        clock, clock_iteration, rate, losses = time.monotonic(), trainer.iteration, 0.0, ""
        while trainer.iteration < training.iterations:
            x, labels = next(batches)
            stats = trainer.step(x, labels)
            # Accumulated on the device: no host sync until the next check below.
            peak = torch.maximum(peak, watched(stats).abs().amax())
            iteration = trainer.iteration
            last = iteration == training.iterations
            log_due = iteration % cadence.log_every == 0
            sample_due = iteration % cadence.sample_every == 0 or last
            checkpoint_due = iteration % cadence.checkpoint_every == 0 or last
            select_due = cadence.select_every > 0 and (iteration % cadence.select_every == 0 or last)
            progress.advance(task)
            # A stop signal ends the run after this step, logged, checked and checkpointed like the last.
            stop_signal = watch.agreed(ranks, device)
            log_due = log_due or bool(stop_signal)
            # Selection is due only where divergence is checked: a diverged model is never scored.
            if not (log_due or sample_due or checkpoint_due or select_due):
                continue
            # Every rank judges the same largest peak of all ranks, so all of them roll back or go on together.
            diverged = divergence.problem(largest_on_any_rank(peak, ranks), iteration)
            peak.zero_()
            if diverged is not None:
                rollbacks, rolled_back_to = _on_divergence(trainer, cadence, folder, iteration, rollbacks, ranks,
                                                           run, progress.console, diverged, rolled_back_to)
                batches = infinite_batches(dataset, batch, training.seed, ranks.rank, ranks.world_size,
                                           start_iteration=trainer.iteration)
                clock, clock_iteration = time.monotonic(), trainer.iteration  # the rate restarts where it resumes
                progress.update(task, completed=trainer.iteration)
                continue
            if log_due:
                now = time.monotonic()
                rate = (iteration - clock_iteration) / max(now - clock, 1e-9)
                clock, clock_iteration = now, iteration
                values = stats.as_floats()
                losses = f"ebm {values['ebm_loss']:+.4f}" + (
                    f" init {values['initializer_loss']:.4f}" if "initializer_loss" in values else "")
                progress.update(task, rate=f"{rate:.2f} it/s", losses=losses)
                if run is not None:
                    run.log_metrics({**values, "iterations_per_second": rate}, step=iteration)
            if sample_due and ranks.is_main:
                _log_samples(trainer, folder, iteration, run)
            if checkpoint_due or select_due:
                states = gathered(_rng_state(trainer), ranks)
            if select_due:
                started = time.monotonic()
                score = _selection_score(trainer, metric, ranks)
                if ranks.is_main:
                    run.log_metrics({f"selection_{metric}": score,
                                     "selection_seconds": time.monotonic() - started}, step=iteration)
                    # Lower is better (RunConfig.select_metric); a tie keeps the earlier checkpoint.
                    if math.isfinite(score) and (best is None or score < best["value"]):
                        best = {"metric": metric, "value": score, "iteration": iteration,
                                "samples": cadence.select_samples}
                        path = folder.save_best(_payload(trainer, states, ranks, run, rollbacks, best))
                        run.set_tags({"cdrl.best_checkpoint": path, "cdrl.best_iteration": iteration,
                                      f"cdrl.best_{metric}": score})
                # The other ranks wait here while rank 0 scores, and keep its record for their result.
                best = shared(best, ranks)
            # After this step's sample grid and selection: a resumed run starts at the next step, so
            # what was due here (the last iteration's selection too) would never come round again.
            if stop_signal:
                _stop_for_preemption(trainer, folder, stop_signal, ranks, run, rollbacks, best)
            if checkpoint_due:
                if ranks.is_main:
                    run.flush()  # metrics up to here are stored before the checkpoint a resume restarts from
                    last_checkpoint = folder.save_checkpoint(_payload(trainer, states, ranks, run, rollbacks, best),
                                                             iteration, cadence.keep_checkpoints)
                    run.set_tags({"cdrl.last_checkpoint": str(last_checkpoint)})
                    if not progress.console.is_terminal:  # a line per checkpoint in logs
                        progress.console.print(f"{config.name} {iteration}/{training.iterations} "
                                               f"{losses} | {rate:.2f} it/s | "
                                               f"checkpoint {last_checkpoint}", highlight=False, soft_wrap=True)
        return TrainResult(folder.root, trainer.iteration, last_checkpoint, run.run_id if run else None, trainer,
                           folder.best() if cadence.select_every and ranks.is_main else None,
                           _selection_summary(cadence, best, trainer.iteration), started_at)


def _stop_for_preemption(trainer: CooperativeTrainer, folder: RunFolder, signum: int, ranks: Ranks,
                         run: TrackedRun | None, rollbacks: int, best: dict | None) -> None:
    """Checkpoint the iteration just finished (checked for divergence by the caller) and stop."""
    states = gathered(_rng_state(trainer), ranks)
    saved = None
    if ranks.is_main:
        run.flush()
        saved = folder.save_checkpoint(_payload(trainer, states, ranks, run, rollbacks, best), trainer.iteration,
                                       trainer.config.run.keep_checkpoints)
    stop = Preempted(signum, trainer.iteration, str(saved) if saved else None)
    if run is not None:
        run.set_tags({"cdrl.preempted": str(stop), **({"cdrl.last_checkpoint": str(saved)} if saved else {})})
        Console(stderr=True).print(f"{stop}: `cdrl-bench train --resume {folder.root}` continues it (a suite's "
                                   "training: the same `run --suite` command)", highlight=False, soft_wrap=True)
    raise stop


@contextlib.contextmanager
def _task(progress: Progress, borrowed: bool):
    """The training's task in ``progress``; removed at the end when the progress is the caller's."""
    task = progress.add_task("", total=None, rate="", losses="")
    try:
        yield task
    finally:
        if borrowed:
            progress.remove_task(task)


def _payload(trainer: CooperativeTrainer, states: list[dict], ranks: Ranks, run: TrackedRun, rollbacks: int,
             best: dict | None) -> dict:
    """A full, resumable checkpoint; ``selection`` carries the best score so far across a resume."""
    return make_checkpoint(trainer.config, trainer.state_dict(), rng=states, world_size=ranks.world_size,
                           mlflow_run_id=run.run_id, rollbacks=rollbacks, selection=best)


def _log_samples(trainer: CooperativeTrainer, folder: RunFolder, iteration: int, run: TrackedRun) -> None:
    config = trainer.config
    with ema_model(trainer) as model:  # rank 0 alone draws the grid
        samples = generate(model, snapshot_spec(config, iteration), device=trainer.device, ranks=Ranks(0, 1),
                           chain=trainer.chain_ebm)
    metrics = _sample_metrics(samples, config)
    title = f"{config.name}, iteration {iteration}" + "".join(f", {k} {v:.3f}" for k, v in metrics.items())
    path = save_sample_figure(samples, config, folder.sample_grid(iteration), title)
    run.log_artifact(path, path.parent.name)
    if metrics:
        run.log_metrics(metrics, step=iteration)


def _rollback_target(folder: RunFolder, bound: float, rolled_back_to: str | None) -> tuple[dict, dict | None]:
    """Rank 0's choice of a checkpoint to roll back to, and its payload.

    Newest first, a rolling checkpoint is passed over when it is corrupt (it fails to load or its
    integrity check) or unhealthy (:func:`cdrl.checkpoint.weights_problem`), and also when the run
    rolled back to it before and diverged again without writing a newer one, as long as an older
    healthy one exists. Returns ``{"target": name or None, "passed_over": [(name, why, kind)]}``,
    kind "corrupt" or "diverged" (the folder a passed-over file is moved to), and the target's payload.
    """
    passed_over: list[tuple[str, str, str]] = []
    retry = None  # the checkpoint the run diverged again from: taken only when nothing older is healthy
    for path in reversed(folder.checkpoint_paths()):
        try:
            _, payload = load_checkpoint(path)
        except CheckpointError as error:
            passed_over.append((path.name, f"is corrupt ({getattr(error, 'reason', error)})", "corrupt"))
            continue
        problem = weights_problem(payload["trainer"], bound)
        if problem is not None:
            passed_over.append((path.name, problem, "diverged"))
            continue
        if path.name == rolled_back_to and retry is None:
            retry = (path.name, payload, len(passed_over))
            passed_over.append((path.name, "diverged again after the last rollback to it", "diverged"))
            continue
        return {"target": path.name, "passed_over": passed_over}, payload
    if retry is not None:
        name, payload, index = retry
        return {"target": name, "passed_over": passed_over[:index]}, payload
    return {"target": None, "passed_over": passed_over}, None


def _on_divergence(trainer: CooperativeTrainer, cadence: RunConfig, folder: RunFolder, iteration: int,
                   rollbacks: int, ranks: Ranks, run: TrackedRun | None, console: Console, message: str,
                   rolled_back_to: str | None) -> tuple[int, str]:
    """Record the divergence, then stop, or roll back to a healthy checkpoint with lower learning rates.

    The newest rolling ckpt-*.pt that is intact and healthy (:func:`_rollback_target`), never
    best.pt (an older state); the best score so far stays as it is. Rolling checkpoints newer than
    it are moved to checkpoints/corrupt/ or checkpoints/diverged/, so that neither rotation nor a
    later resume or rollback takes them. Returns the rollback count and the checkpoint rolled back to.
    """
    if run is not None:
        run.log_metrics({DIVERGED_METRIC: 1.0}, step=iteration)
        run.set_tags({TAG_DIVERGED: message})
    if cadence.on_divergence == "stop":
        raise TrainingDiverged(f"{message} (run.on_divergence=stop): lower training.ebm_lr, or set "
                               "run.on_divergence=rollback to continue from the last checkpoint")
    # Rank 0's view of the folder, for every rank: another node's file cache may lag behind it.
    if shared(not folder.checkpoint_paths() if ranks.is_main else None, ranks):
        raise TrainingDiverged(f"{message}, before the first checkpoint: lower training.ebm_lr or "
                               "run.checkpoint_every")
    if rollbacks >= cadence.max_rollbacks:
        raise TrainingDiverged(f"{message} after {rollbacks} rollbacks (run.max_rollbacks): lower training.ebm_lr")
    choice, payload = (_rollback_target(folder, cadence.divergence_bound, rolled_back_to) if ranks.is_main
                       else (None, None))
    choice = shared(choice, ranks)  # every rank rolls back to rank 0's choice
    passed = "; ".join(f"{name} {why}" for name, why, _ in choice["passed_over"])
    if choice["target"] is None:
        raise TrainingDiverged(f"{message}, and no checkpoint is fit to roll back to ({passed}): "
                               "lower training.ebm_lr and start again")
    if ranks.is_main:
        for name, _, kind in choice["passed_over"]:
            folder.set_aside([folder.checkpoints / name], kind)
    if payload is None:
        _, payload = load_checkpoint(folder.checkpoints / choice["target"])
    rollbacks += 1
    trainer.load_state_dict(payload["trainer"])
    _restore_rng(trainer, payload["rng"][ranks.rank])
    scale = cadence.rollback_lr_factor ** rollbacks
    _set_lr_scale(trainer, scale)
    if run is not None:
        detail = f"; passed over {passed}" if passed else ""
        run.log_metrics({"rollbacks": rollbacks, "lr_scale": scale}, step=iteration)
        run.set_tags({"cdrl.rollbacks": f"{rollbacks}: to {choice['target']}, learning rates x{scale:g}{detail}"})
        console.print(f"{message}: rolled back to {choice['target']} with learning rates x{scale:g}{detail}",
                      highlight=False, soft_wrap=True)
    return rollbacks, choice["target"]
