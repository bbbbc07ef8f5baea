"""Config-driven cooperative training: data, steps, logging, sample grids, checkpoints, DDP.

Small and explicit on purpose: :func:`train` builds the dataset (``build_dataset`` +
``infinite_batches``) and a :class:`~cdrl.training.CooperativeTrainer`, then repeats
``trainer.step`` and, at the cadences of ``config.run``, logs to MLflow (rank 0 only),
draws samples under EMA weights (:func:`cdrl.generation.generate`) and writes checkpoints
into the run's folder (:class:`cdrl.run_folder.RunFolder`, which also says where a run is).
Best-checkpoint selection is :mod:`cdrl.selection`; divergence checks and rollbacks are
:mod:`cdrl.divergence`.

Every checkpoint holds the config, networks, EMAs, optimisers, schedulers, every rank's RNG
states and the MLflow run id, so ``train(resume=RUN)`` continues the same run and the same
loss curve. Distributed: ``torchrun --nproc_per_node N --no-python cdrl-bench train --preset NAME ...``:
NCCL on GPUs, Gloo on CPUs, one batch stream and RNG
stream per rank; DDP's buffer broadcast keeps the spectral-norm u/v vectors in sync.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from torch.utils.data import Dataset

import cdrl
from cdrl.checkpoint import make_checkpoint
from cdrl.config import (ConfigError, ExperimentConfig, apply_overrides, check_networks_fit_data, per_process_batch,
                         selection_metric)
from cdrl.datasets import build_dataset, dataset_info, infinite_batches, toy_in_support
from cdrl.distributed import (Ranks, gathered, init_distributed, largest_on_any_rank, launched_world_size, rank_seed,
                              shared)
from cdrl.divergence import DivergenceWatch, on_divergence, watched
from cdrl.figures import save_sample_figure
from cdrl.generation import GenerationSpec, ema_model, generate
from cdrl.performance import use_threads
from cdrl.preemption import PreemptionWatch, Preempted
from cdrl.progress import JobProgress
from cdrl.run_folder import ResumePoint, RunFolder, resume_point
from cdrl.selection import restored_selection, select, selection_rule, selection_summary
from cdrl.store import checked_store
from cdrl.tags import (TAG_CHECKPOINT_DIR, TAG_DEVICE, TAG_GIT_COMMIT, TAG_GLOBAL_BATCH, TAG_KIND, TAG_LAST_CHECKPOINT,
                       TAG_METHOD, TAG_PER_PROCESS_BATCH, TAG_PREEMPTED, TAG_PRESET, TAG_PYTHON_VERSION, TAG_RUN_KEY,
                       TAG_SELECTION, TAG_TORCH_VERSION, TAG_VERSION, TAG_WORLD_SIZE)
from cdrl.tracking import TrackedRun, tracked_run
from cdrl.training import CooperativeTrainer, StepStats


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


# --------------------------------------------------------------------------- samples

def snapshot_spec(config: ExperimentConfig, iteration: int) -> GenerationSpec:
    """The sample grid at ``iteration``: ``run.n_samples`` EMA samples of fresh noise."""
    return GenerationSpec.resolve(config, config.run.n_samples, seed=rank_seed(config.training.seed, iteration))


def _sample_metrics(samples: torch.Tensor, config: ExperimentConfig) -> dict[str, float]:
    if dataset_info(config.data.dataset).is_image:
        return {}
    inside = toy_in_support(config.data.dataset, samples, config.data.toy_scale)
    return {"in_support_fraction": float(inside.float().mean())}


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


# --------------------------------------------------------------------------- environment

def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _environment_tags(device: torch.device, world_size: int) -> dict[str, str]:
    tags = {TAG_VERSION: cdrl.__version__, TAG_TORCH_VERSION: torch.__version__,
            TAG_PYTHON_VERSION: platform.python_version(), TAG_WORLD_SIZE: str(world_size),
            TAG_DEVICE: torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)}
    commit = _git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    return tags


def _progress(enabled: bool) -> JobProgress:
    return JobProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                       TextColumn("{task.fields[losses]}"), disable=not enabled, transient=False)


@contextlib.contextmanager
def _task(progress: Progress, borrowed: bool):
    """The training's task in ``progress``; removed at the end when the progress is the caller's."""
    task = progress.add_task("", total=None, rate="", losses="")
    try:
        yield task
    finally:
        if borrowed:
            progress.remove_task(task)



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


def _trainer(config: ExperimentConfig, device: torch.device, ranks: Ranks, payload: dict | None) -> CooperativeTrainer:
    """The trainer: the same initial weights on every rank, then a rank's own streams; a resumed run's state."""
    seed = rank_seed(config.training.seed, ranks.rank)
    torch.manual_seed(config.training.seed)  # the same initial weights on every rank
    trainer = CooperativeTrainer(config, device, distributed=ranks.world_size > 1,
                                 generator=torch.Generator(device=device).manual_seed(seed))
    torch.manual_seed(seed)  # per-rank stream for dropout
    if payload is not None:
        trainer.load_state_dict(payload["trainer"])
        trainer.load_rng_state(payload["rng"][ranks.rank])
    return trainer


def _run_tags(config: ExperimentConfig, folder: RunFolder, batch: int, ranks: Ranks, device: torch.device,
              metric: str, tags: dict[str, str]) -> dict[str, str]:
    training, cadence = config.training, config.run
    run_tags = {TAG_KIND: "train", TAG_PRESET: config.name, TAG_METHOD: training.method,
                TAG_CHECKPOINT_DIR: str(folder.checkpoints), TAG_GLOBAL_BATCH: str(training.batch_size),
                TAG_PER_PROCESS_BATCH: str(batch), **_environment_tags(device, ranks.world_size), **tags}
    if cadence.select_every:
        run_tags[TAG_SELECTION] = selection_rule(cadence, metric)
    return run_tags


def _train(config: ExperimentConfig, dataset: Dataset, folder: RunFolder, resumed: ResumePoint | None, ranks: Ranks,
           device: torch.device, tracking_uri: str | None, experiment_name: str | None, tags: dict[str, str],
           show_progress: bool, shown: Progress | None) -> TrainResult:
    batch = per_process_batch(config.training.batch_size, ranks.world_size)
    payload = resumed.payload if resumed is not None else None
    trainer = _trainer(config, device, ranks, payload)
    started_at = trainer.iteration
    metric = selection_metric(config)
    if ranks.is_main:
        folder.prepare(config, resumed.corrupt if resumed is not None else (), start=started_at)
    tracking = (tracked_run(tracking_uri=tracking_uri, experiment_name=experiment_name,
                            run_id=payload["mlflow_run_id"] if payload else None,
                            run_name=tags.get(TAG_RUN_KEY, folder.root.name),
                            tags=_run_tags(config, folder, batch, ranks, device, metric, tags),
                            flush_seconds=config.run.flush_seconds,
                            # SIGTERM/SIGHUP/Ctrl-C end the run KILLED; one that a SIGKILL left RUNNING
                            # in this folder is closed KILLED when the folder trains again.
                            replaces=(TAG_CHECKPOINT_DIR,))
                if ranks.is_main else contextlib.nullcontext())
    showing = contextlib.nullcontext(shown) if shown is not None else _progress(ranks.is_main and show_progress)
    # Outermost, so that a preemption has closed the MLflow run before the signal is handed on.
    preemption = PreemptionWatch()
    with preemption.installed(), tracking as run, showing as progress, _task(progress, shown is not None) as task:
        if run is not None:
            if payload is None:
                run.log_params(config.flat())
            run.log_dict(config.to_dict(), "config.json")
        progress.update(task, description=tags.get(TAG_RUN_KEY, config.name), total=config.training.iterations,
                        completed=trainer.iteration)
        session = _Session(trainer, dataset, batch, folder, ranks, run, progress, task, preemption, metric,
                           best=restored_selection(payload, metric, config.run),
                           rollbacks=payload["rollbacks"] if payload is not None else 0,
                           last_checkpoint=resumed.checkpoint if resumed is not None and ranks.is_main else None)
        _loop(session)
        return TrainResult(folder.root, trainer.iteration, session.last_checkpoint, run.run_id if run else None,
                           trainer, folder.best() if config.run.select_every and ranks.is_main else None,
                           selection_summary(config.run, session.best, trainer.iteration), started_at)


@dataclass
class _Session:
    """One call's training, shared by the steps of its loop: the trainer, its folder, its run and its records."""

    trainer: CooperativeTrainer
    dataset: Dataset
    #: This rank's share of the global batch (cdrl.config.per_process_batch).
    batch: int
    folder: RunFolder
    ranks: Ranks
    #: The MLflow run (None on ranks other than 0).
    run: TrackedRun | None
    progress: Progress
    task: TaskID
    preemption: PreemptionWatch
    #: The selection metric (cdrl.config.selection_metric), and the best record so far (cdrl.selection).
    metric: str
    best: dict | None
    rollbacks: int
    #: The last checkpoint written (None on ranks other than 0).
    last_checkpoint: Path | None
    #: The checkpoint the run last rolled back to (cdrl.divergence.on_divergence).
    rolled_back_to: str | None = None
    #: Where the iteration rate is measured from, the last rate and losses shown.
    clock: float = 0.0
    clock_iteration: int = 0
    rate: float = 0.0
    losses: str = ""

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """This rank's batches from the trainer's iteration on; the rate restarts there."""
        ranks = self.ranks
        self.clock, self.clock_iteration = time.monotonic(), self.trainer.iteration
        return infinite_batches(self.dataset, self.batch, self.trainer.config.training.seed, ranks.rank,
                                ranks.world_size, start_iteration=self.trainer.iteration)

    def payload(self, states: list[dict], best: dict | None) -> dict:
        """A full, resumable checkpoint; ``selection`` carries the best score so far across a resume."""
        return make_checkpoint(self.trainer.config, self.trainer.state_dict(), rng=states,
                               world_size=self.ranks.world_size, mlflow_run_id=self.run.run_id,
                               rollbacks=self.rollbacks, selection=best)

    def save_best(self, states: list[dict], best: dict) -> Path:
        """Rank 0 writes checkpoints/best.pt, holding the record ``best`` of its score."""
        return self.folder.save_best(self.payload(states, best))

    def log(self, stats: StepStats, iteration: int) -> None:
        """The step's losses and the iteration rate, into the progress and (rank 0) the run."""
        now = time.monotonic()
        self.rate = (iteration - self.clock_iteration) / max(now - self.clock, 1e-9)
        self.clock, self.clock_iteration = now, iteration
        values = stats.as_floats()
        self.losses = f"ebm {values['ebm_loss']:+.4f}" + (
            f" init {values['initializer_loss']:.4f}" if "initializer_loss" in values else "")
        self.progress.update(self.task, rate=f"{self.rate:.2f} it/s", losses=self.losses)
        if self.run is not None:
            self.run.log_metrics({**values, "iterations_per_second": self.rate}, step=iteration)

    def roll_back(self, message: str, iteration: int) -> None:
        """Stop, or roll back (cdrl.divergence.on_divergence); the progress goes back with the trainer."""
        self.rollbacks, self.rolled_back_to = on_divergence(
            self.trainer, self.trainer.config.run, self.folder, iteration, self.rollbacks, self.ranks, self.run,
            self.progress.console, message, self.rolled_back_to)
        self.progress.update(self.task, completed=self.trainer.iteration)

    def save_checkpoint(self, states: list[dict], iteration: int) -> None:
        """Rank 0 writes the rolling checkpoint of ``iteration``, with a line per checkpoint in logs."""
        if not self.ranks.is_main:
            return
        config = self.trainer.config
        self.run.flush()  # metrics up to here are stored before the checkpoint a resume restarts from
        self.last_checkpoint = self.folder.save_checkpoint(self.payload(states, self.best), iteration,
                                                           config.run.keep_checkpoints)
        self.run.set_tags({TAG_LAST_CHECKPOINT: str(self.last_checkpoint)})
        if not self.progress.console.is_terminal:
            self.progress.console.print(f"{config.name} {iteration}/{config.training.iterations} "
                                        f"{self.losses} | {self.rate:.2f} it/s | "
                                        f"checkpoint {self.last_checkpoint}", highlight=False, soft_wrap=True)

    def stop(self, signum: int) -> None:
        """Checkpoint the iteration just finished (checked for divergence by the caller) and stop."""
        trainer, run = self.trainer, self.run
        states = gathered(trainer.rng_state(), self.ranks)
        saved = None
        if self.ranks.is_main:
            run.flush()
            saved = self.folder.save_checkpoint(self.payload(states, self.best), trainer.iteration,
                                                trainer.config.run.keep_checkpoints)
        stop = Preempted(signum, trainer.iteration, str(saved) if saved else None)
        if run is not None:
            run.set_tags({TAG_PREEMPTED: str(stop), **({TAG_LAST_CHECKPOINT: str(saved)} if saved else {})})
            Console(stderr=True).print(f"{stop}: `cdrl-bench train --resume {self.folder.root}` continues it (a "
                                       "suite's training: the same `run --suite` command)", highlight=False,
                                       soft_wrap=True)
        raise stop


def _loop(session: _Session) -> None:
    """Steps until ``training.iterations``; at the cadences of ``config.run``, check, log, sample, select, checkpoint."""
    trainer, ranks, folder = session.trainer, session.ranks, session.folder
    cadence, iterations = trainer.config.run, trainer.config.training.iterations
    batches = session.batches()
    # The largest |loss| or |energy| since the last check (NaN stays NaN): on the device.
    peak = torch.zeros((), device=trainer.device)
    divergence = DivergenceWatch(cadence)
    while trainer.iteration < iterations:
        x, labels = next(batches)
        stats = trainer.step(x, labels)
        # Accumulated on the device: no host sync until the next check below.
        peak = torch.maximum(peak, watched(stats).abs().amax())
        iteration = trainer.iteration
        last = iteration == iterations
        log_due = iteration % cadence.log_every == 0
        sample_due = iteration % cadence.sample_every == 0 or last
        checkpoint_due = iteration % cadence.checkpoint_every == 0 or last
        select_due = cadence.select_every > 0 and (iteration % cadence.select_every == 0 or last)
        session.progress.advance(session.task)
        # A stop signal ends the run after this step, logged, checked and checkpointed like the last.
        stop_signal = session.preemption.agreed(ranks, trainer.device)
        log_due = log_due or bool(stop_signal)
        # Selection is due only where divergence is checked: a diverged model is never scored.
        if not (log_due or sample_due or checkpoint_due or select_due):
            continue
        # Every rank judges the same largest peak of all ranks, so all of them roll back or go on together.
        diverged = divergence.problem(largest_on_any_rank(peak, ranks), iteration)
        peak.zero_()
        if diverged is not None:
            session.roll_back(diverged, iteration)
            batches = session.batches()  # from the iteration rolled back to
            continue
        if log_due:
            session.log(stats, iteration)
        if sample_due and ranks.is_main:
            _log_samples(trainer, folder, iteration, session.run)
        if checkpoint_due or select_due:
            states = gathered(trainer.rng_state(), ranks)
        if select_due:
            session.best = select(trainer, session.metric, ranks, session.run, session.best,
                                  functools.partial(session.save_best, states))
        # After this step's sample grid and selection: a resumed run starts at the next step, so
        # what was due here (the last iteration's selection too) would never come round again.
        if stop_signal:
            session.stop(stop_signal)
        if checkpoint_due:
            session.save_checkpoint(states, iteration)
