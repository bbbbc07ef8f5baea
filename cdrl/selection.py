"""Best-checkpoint selection (run.select_every): score EMA samples of fixed noise, keep the lowest as best.pt.

The published code keeps the checkpoint of its best FID, scored every 20k iterations. Here every
rank draws the selection samples from noise of their own stream, the same at every selection, so
scores differ by the weights only; rank 0 scores them with the metric of
:func:`cdrl.config.selection_metric` (lower is better). The best record so far travels in every
checkpoint (``selection``), so a resumed run keeps it when it measures as the run before it did.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from cdrl.config import ExperimentConfig, RunConfig
from cdrl.distributed import Ranks, shared
from cdrl.generation import GenerationSpec, ema_model, generate
from cdrl.scoring import ScoringRequest, score_samples
from cdrl.tags import TAG_BEST_CHECKPOINT, TAG_BEST_ITERATION, TAG_BEST_PREFIX
from cdrl.tracking import TrackedRun
from cdrl.training import CooperativeTrainer

#: Noise stream of selection samples, apart from the training and sample-grid streams.
_SELECTION_STREAM = 0x5E1EC7


def selection_spec(config: ExperimentConfig) -> GenerationSpec:
    """``run.select_samples`` EMA samples from the same noise at every selection, so scores differ by the weights only."""
    seed = int(np.random.SeedSequence((config.training.seed, _SELECTION_STREAM)).generate_state(1)[0])
    return GenerationSpec.resolve(config, config.run.select_samples, seed=seed)


def selection_score(trainer: CooperativeTrainer, metric: str, ranks: Ranks) -> float | None:
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


def select(trainer: CooperativeTrainer, metric: str, ranks: Ranks, run: TrackedRun | None, best: dict | None,
           save_best: Callable[[dict], Path]) -> dict | None:
    """Score the current weights; rank 0 logs the score and, when it is the best so far, writes best.pt with
    ``save_best(record)`` and tags the run. Returns the best record so far, on every rank."""
    started = time.monotonic()
    score = selection_score(trainer, metric, ranks)
    iteration = trainer.iteration
    if ranks.is_main:
        run.log_metrics({f"selection_{metric}": score, "selection_seconds": time.monotonic() - started},
                        step=iteration)
        # Lower is better (RunConfig.select_metric); a tie keeps the earlier checkpoint.
        if math.isfinite(score) and (best is None or score < best["value"]):
            best = {"metric": metric, "value": score, "iteration": iteration,
                    "samples": trainer.config.run.select_samples}
            path = save_best(best)
            run.set_tags({TAG_BEST_CHECKPOINT: path, TAG_BEST_ITERATION: iteration, f"{TAG_BEST_PREFIX}{metric}": score})
    # The other ranks wait here while rank 0 scores, and keep its record for their result.
    return shared(best, ranks)


def restored_selection(payload: dict | None, metric: str, run: RunConfig) -> dict | None:
    """The best score so far of a resumed run, when it was measured as this run measures it."""
    saved = (payload or {}).get("selection")
    # Another metric or sample count gives incomparable scores (FID's bias depends on N): selection starts over.
    # A best.pt written after this checkpoint (then killed) is scored again as the resumed run replays its iterations.
    if saved is not None and (saved["metric"], saved["samples"]) == (metric, run.select_samples):
        return saved
    return None


def selection_rule(run: RunConfig, metric: str) -> str:
    return f"lowest {metric} of {run.select_samples} EMA samples, every {run.select_every} iterations and at the last"


def selection_summary(run: RunConfig, best: dict | None, iteration: int) -> str:
    if run.select_every == 0:
        return "last (no selection)"
    if best is None:
        return "last (no selection score yet)"
    return (f"best: {best['metric']} {best['value']:.4g} at iteration {best['iteration']} of {iteration} "
            f"({run.select_samples} samples every {run.select_every} iterations)")
