"""Out-of-distribution detection by the energy: AUROC and FPR@95 of f(x) on in- against out-of-distribution images.

An EBM's energy network scores how likely an image is: f is higher on the data it was trained
on. The score of an image x is the energy of the least noisy transition (:data:`OOD_LEVEL`),
f(√r · x_s, λ_s) with x_s = α_s x + σ_s ε at s = 0, where λ_s is the schedule's λ_max and σ_s
under 1% (CDRL's cosine schedule: 0.0074), the way training scores data in its positive phase.
The paper's table (results/paper/cifar10_ood_auroc.csv, from reviews quoting it) does not say
which level it read; the least noisy one is the energy of (nearly) clean images, the one the
question asks about, and DRL's choice. AUROC and the false-positive rate at 95% true positives
(in-distribution images the positives) come from scikit-learn.

Out-of-distribution sets: a dataset (its test split, read at the model's image size and
channels, e.g. CelebA at 32x32 for a CIFAR-10 model), or ``interpolation``: the average of two
in-distribution test images (the paper's "CIFAR-10 interpolation").
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np
import torch

from cdrl.checkpoint import LoadedModel, load_model
from cdrl.config import ExperimentConfig
from cdrl.datasets import DatasetError, build_dataset
from cdrl.distributed import current_ranks
from cdrl.errors import CdrlBenchError
from cdrl.guidance import embedding_labels
from cdrl.schedule import LogSNRSchedule, broadcast, diffuse
from cdrl.scoring import Recording, ScoreResult, chosen_device, record_score, score_run

#: The transition whose energy scores an image: 1, from level 1 down to level 0 (the least noisy).
OOD_LEVEL = 1
#: Name of the out-of-distribution set made of in-distribution images averaged in pairs.
INTERPOLATION = "interpolation"
#: The true-positive rate FPR@95 is read at.
TPR = 0.95


def first_images(config: ExperimentConfig, dataset: str, count: int) -> torch.Tensor:
    """The first ``count`` test images of ``dataset`` as the model reads images (its size and channels), unflipped."""
    data = replace(config.data, dataset=dataset, split="test", horizontal_flip=False, class_conditional=False)
    images = build_dataset(data)
    if len(images) == 0:
        raise DatasetError(f"{dataset}'s test split holds no images: check its files")
    return torch.stack([images[i][0] for i in range(min(count, len(images)))])


def ood_images(config: ExperimentConfig, ood_set: str, count: int, seed: int) -> torch.Tensor:
    """``count`` (at most) out-of-distribution images: a dataset's, or averaged pairs of in-distribution ones."""
    if ood_set != INTERPOLATION:
        return first_images(config, ood_set, count)
    images = first_images(config, config.data.dataset, count)
    partner = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return 0.5 * (images + images[partner])


@torch.no_grad()
def energies(model: LoadedModel, images: torch.Tensor, *, seed: int, level: int = OOD_LEVEL, batch_size: int = 256,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """f(√r · x_s, λ_s) of every image at transition ``level`` (the null class for a conditional model), on the CPU."""
    schedule = LogSNRSchedule(model.config.schedule)
    generator = torch.Generator().manual_seed(seed)
    model.ebm.eval()
    values = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        transition = schedule.level(level, batch_size=len(x), device=device)
        noise = torch.randn(x.shape, generator=generator).to(device)
        x_s = diffuse(x, transition.logsnr_s, noise) * broadcast(torch.sqrt(transition.r_mul), x)
        labels = embedding_labels(None, len(x), x.device) if model.config.energy.num_classes is not None else None
        values.append(model.ebm(x_s, transition.logsnr_s, labels).float().cpu())
    return torch.cat(values)


def detection_metrics(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """AUROC and FPR@95 of telling in-distribution (higher score) from out-of-distribution data."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.concatenate([np.ones(len(in_scores)), np.zeros(len(out_scores))])
    scores = torch.cat([in_scores, out_scores]).double().numpy()
    if not np.isfinite(scores).all():
        raise CdrlBenchError("the model's energy is not finite on some images: it cannot rank them; "
                             "score a checkpoint whose training did not diverge")
    false_positive, true_positive, _ = roc_curve(labels, scores)
    return {"auroc": float(roc_auc_score(labels, scores)),
            "fpr95": float(false_positive[np.searchsorted(true_positive, TPR, side="left")])}


def score_ood(checkpoint: str | os.PathLike, ood_set: str, n_images: int, *, seed: int = 0,
              device: str | torch.device | None = None, data_dir: str | None = None,
              checkpoint_selection: str = "given", record: Recording | None = Recording()) -> ScoreResult | None:
    """AUROC and FPR@95 of a checkpoint's energy: its dataset's first ``n_images`` test images against as many of
    ``ood_set``; logged to ``record`` as an evaluation run (rank 0 scores, other ranks return None)."""
    if not current_ranks().is_main:
        return None
    device = chosen_device(device)
    model = load_model(checkpoint, device=device)
    config = model.config if data_dir is None else replace(
        model.config, data=replace(model.config.data, data_dir=data_dir))
    with score_run(config, record, f"ood {config.name} vs {ood_set}", model.training_run) as run:
        started = time.monotonic()
        inside = first_images(config, config.data.dataset, n_images)
        outside = ood_images(config, ood_set, n_images, seed)
        metrics = detection_metrics(energies(model, inside, seed=seed, device=device),
                                    energies(model, outside, seed=seed + 1, device=device))
        # Named as a sample score's protocol is, so that tables read it alike: the out-of-distribution images
        # stand where samples do, the in-distribution test images where the reference does.
        protocol = {"backend": f"energy at transition {OOD_LEVEL}", "ood_level": OOD_LEVEL, "ood_set": ood_set,
                    "n_generated": len(outside), "n_reference": len(inside), "reference": config.data.dataset,
                    "reference_split": "test", "seed": seed,
                    "checkpoint": str(checkpoint), "checkpoint_iteration": model.iteration,
                    "checkpoint_selection": checkpoint_selection}
        seconds = time.monotonic() - started
        timing = {"sampling_seconds": 0.0, "scoring_seconds": seconds, "feature_seconds": 0.0,
                  "metric_seconds": seconds}
        record_score(run, metrics, timing, protocol, config, outside, f"{ood_set} (out of distribution for "
                                                                      f"{config.data.dataset})")
        line = (f"AUROC {metrics['auroc']:.3f} | FPR@95 {metrics['fpr95']:.3f} | energy at transition {OOD_LEVEL}, "
                f"{len(inside)} {config.data.dataset} test images vs {len(outside)} {ood_set}")
        return ScoreResult(metrics, protocol, line, run.run_id if run else None, timing)
