"""Numerical fingerprints of a suite's stored checkpoints: what statistics over seeds cannot see.

Quality metrics over seeds catch a method that got worse; a change that leaves quality
within the seed-to-seed noise (a loss weighting, the initializer's proposal noise, an EMA
detail) passes them. A fingerprint pins the numbers themselves, on trained and therefore
well-conditioned models:

* ``samples``: for each evaluation point of a stored checkpoint (steps per level, guidance),
  the first :data:`SAMPLES` samples drawn with the fixed seed :data:`SEED`;
* ``layout``: the same samples of each stored checkpoint's first point drawn in batches of
  :data:`LAYOUT_BATCH` of the count (a ragged last batch): sample i must not depend on where
  it sits in a batch;
* ``samples-live``: the same samples drawn with the live weights, for a stored checkpoint that
  holds live weights apart from the EMA's (loading the wrong ones moves one of the two);
* ``training``: :data:`TRAINING_STEPS` cooperative training steps from the stored weights
  (fresh optimisers) with a fixed seed: per-step losses and energies, then the norms of the
  live and EMA weights of both networks and of their difference (the EMA's lag).

With ``[check] ruler_tolerance``, the ruler's fingerprints (:mod:`benchmarks.ruler`) join them.

``drift`` measures how far a fingerprint moved from the baseline's: each entry relative to its
own value, the largest per sample, and the median over the samples. Float32 rounding differs
between CPUs (vector width, BLAS and oneDNN kernels), and now and then a chain amplifies it
into another path: on one CPU that left the baseline's, 1 of 8 digit samples moved by 3e-2 and
1 of 64 toy points by 5e-4 while the median sample moved by at most 2e-5; a change of the
method moves every chain. The check fails a fingerprint whose drift exceeds the suite's
``[check] fingerprint_tolerance`` (results/gate/README.md says how it was measured).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import torch

from benchmarks.suite import Suite, eval_steps
from cdrl.checkpoint import load_checkpoint
from cdrl.datasets import build_dataset, dataset_info, infinite_batches

SEED = 20240507
#: Samples per point: 2-D points are cheap; images are 8x8 to 32x32 pixels each.
SAMPLES = {"2d": 64, "image": 8}
TRAINING_STEPS = 4
#: Training fingerprints use a smaller batch than the preset's: the same code paths, seconds on a CPU.
TRAINING_BATCH = 32


def drift(current: list[float], baseline: list[float], samples: int = 1) -> float:
    """How far a fingerprint moved: each entry's deviation relative to its baseline value, the largest
    within each of the ``samples`` samples the entries hold in order, the median over those samples
    (for one sample, the largest deviation); inf for another shape or a value that is not finite.

    Entries far smaller than the largest (a loss beside a weight norm, a point near the origin)
    are measured against 1e-3 of the largest, so that rounding near zero does not count.
    """
    if len(current) != len(baseline) or len(baseline) % samples:
        return float("inf")
    now, then = torch.tensor(current, dtype=torch.float64), torch.tensor(baseline, dtype=torch.float64)
    if not torch.isfinite(now).all():
        return float("inf")
    scale = then.abs().clamp_min(1e-3 * float(then.abs().max())).clamp_min(1e-30)
    per_sample = ((now - then).abs() / scale).reshape(samples, -1).amax(dim=1)
    return float(torch.quantile(per_sample, 0.5))


#: The layout fingerprint's batch, as a share of its sample count: 3 of 8 leaves a ragged last batch.
LAYOUT_BATCH = 3 / 8


@dataclass(frozen=True)
class SamplePoint:
    """One sample fingerprint: what is drawn from which stored checkpoint, how."""

    name: str
    checkpoint: Path
    count: int
    steps: int
    guidance: float
    batch_size: int
    weights: str = "ema"


def _sample_points(suite: Suite) -> Iterator[SamplePoint]:
    for model in suite.models:
        if model.checkpoint_path is None:
            continue
        config, payload = load_checkpoint(model.checkpoint_path)
        count = SAMPLES["image" if dataset_info(config.data.dataset).is_image else "2d"]
        points = [(steps, guidance) for steps in eval_steps(model, config) for guidance in model.guidance]
        for steps, guidance in points:
            yield SamplePoint(f"samples:{model.key}/K{steps}/w{guidance:g}", model.checkpoint_path, count, steps,
                              guidance, count)
        steps, guidance = points[0]
        yield SamplePoint(f"layout:{model.key}/K{steps}/w{guidance:g}", model.checkpoint_path, count, steps, guidance,
                          max(1, int(count * LAYOUT_BATCH)))
        if "ebm_ema" in payload["trainer"]:
            yield SamplePoint(f"samples-live:{model.key}/K{steps}/w{guidance:g}", model.checkpoint_path, count, steps,
                              guidance, count, weights="live")


def samples_per_fingerprint(suite: Suite) -> dict[str, int]:
    """How many samples each sample fingerprint holds (a training or ruler fingerprint is one)."""
    return {point.name: point.count for point in _sample_points(suite)}


def sample_fingerprints(suite: Suite) -> dict[str, list[float]]:
    from cdrl.scoring import SamplingRequest, draw_samples

    prints = {}
    for point in _sample_points(suite):
        request = SamplingRequest(point.checkpoint, point.count, point.steps, SEED, point.batch_size, point.guidance,
                                  use_ema=point.weights == "ema")
        samples, _, _ = draw_samples(request, device="cpu")
        prints[point.name] = samples.flatten().tolist()
    return prints


def _training_fingerprint(checkpoint: Path) -> list[float]:
    from cdrl.training import CooperativeTrainer

    config, payload = load_checkpoint(checkpoint)
    config = replace(config, training=replace(config.training, batch_size=TRAINING_BATCH))
    torch.manual_seed(SEED)
    trainer = CooperativeTrainer(config, "cpu", generator=torch.Generator().manual_seed(SEED))
    trainer.start_from(payload["trainer"])
    batches = infinite_batches(build_dataset(config.data), TRAINING_BATCH, SEED)
    values: list[float] = []
    for _ in range(TRAINING_STEPS):
        stats = trainer.step(*next(batches)).as_floats()
        values += [stats["ebm_loss"], stats["positive_energy"], stats["negative_energy"],
                   stats.get("initializer_loss", 0.0)]
    networks = [(trainer.ebm, trainer.ebm_ema)]
    if trainer.initializer is not None:
        networks.append((trainer.initializer, trainer.initializer_ema))
    for network, ema in networks:
        live = torch.cat([p.detach().flatten() for p in network.parameters()])
        average = torch.cat([shadow.flatten() for shadow in ema.shadow])
        # The EMA's lag behind the live weights: what an EMA bug changes first.
        values += [float(live.norm()), float(average.norm()), float((average - live).norm())]
    return values


def training_fingerprints(suite: Suite) -> dict[str, list[float]]:
    return {f"training:{model.key}": _training_fingerprint(model.checkpoint_path)
            for model in suite.models if model.checkpoint_path is not None}


def fingerprints(suite: Suite) -> dict[str, list[float]]:
    """Every fingerprint of a suite's stored checkpoints (empty when it has none), and the ruler's where it checks it."""
    prints = {**sample_fingerprints(suite), **training_fingerprints(suite)} \
        if suite.check.fingerprint_tolerance is not None else {}
    if suite.check.ruler_tolerance is not None:
        from benchmarks.ruler import ruler_fingerprints

        prints.update(ruler_fingerprints())
    return prints
