"""Divergence of a training run: how it is judged, and what follows (a stop, or a rollback).

The training loop accumulates each window's largest |loss| or |energy| between two of its
checks (:func:`watched`); :class:`DivergenceWatch` judges the window, and :func:`on_divergence`
records a divergence, then stops the run or rolls it back to its newest healthy rolling
checkpoint with lower learning rates (``run.on_divergence``, ``run.max_rollbacks``).
"""

from __future__ import annotations

import math
import statistics
from collections import deque

import torch
from rich.console import Console

from cdrl.checkpoint import CheckpointError, load_checkpoint, weights_problem
from cdrl.config import RunConfig
from cdrl.distributed import Ranks, shared
from cdrl.errors import CdrlBenchError
from cdrl.run_folder import RunFolder
from cdrl.tags import TAG_DIVERGED, TAG_ROLLBACKS
from cdrl.tracking import DIVERGED_METRIC, TrackedRun
from cdrl.training import CooperativeTrainer, StepStats


class TrainingDiverged(CdrlBenchError):
    """A loss or energy became non-finite, passed run.divergence_bound or jumped (run.divergence_jump), and the
    divergence policy ended the run."""


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


def on_divergence(trainer: CooperativeTrainer, cadence: RunConfig, folder: RunFolder, iteration: int,
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
    trainer.load_rng_state(payload["rng"][ranks.rank])
    scale = cadence.rollback_lr_factor ** rollbacks
    _set_lr_scale(trainer, scale)
    if run is not None:
        detail = f"; passed over {passed}" if passed else ""
        run.log_metrics({"rollbacks": rollbacks, "lr_scale": scale}, step=iteration)
        run.set_tags({TAG_ROLLBACKS: f"{rollbacks}: to {choice['target']}, learning rates x{scale:g}{detail}"})
        console.print(f"{message}: rolled back to {choice['target']} with learning rates x{scale:g}{detail}",
                      highlight=False, soft_wrap=True)
    return rollbacks, choice["target"]
