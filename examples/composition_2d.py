"""Compositional generation in 2-D: train "half-plane" concepts, sample their conjunction.

The data are four Gaussians, one per quadrant (centres (±4, ±4), std 1). One conditional
CDRL model learns four concepts — right (x > 0), left, up (y > 0), down — each training point
carrying its horizontal or its vertical concept at random (and the null class with
probability ``training.label_dropout``). Composing right and up, f(x | right) + f(x | up) −
f(x | ∅) (METHOD.md), should put the samples in the upper-right quadrant, where neither
concept alone does. Run::

    python -m examples.composition_2d --iterations 300 --out composition_2d.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cdrl.config import ExperimentConfig, apply_overrides, preset
from cdrl.generation import GenerationSpec, ema_model, generate
from cdrl.training import CooperativeTrainer

#: The concepts, as class labels of the conditional model.
RIGHT, LEFT, UP, DOWN = range(4)

#: Blobs 4 std away from the axes: the checkerboard's squares touch them, so any blur of a
#: short training puts samples across, which would measure the training, not the composition.
CENTRE, SPREAD = 4.0, 1.0

#: Our CPU-scale settings over the toy-quadrants-cond preset, whose 4 classes serve as the concepts
#: (the published toy trains 100k iterations at batch 2500, lr 3e-6): a smaller energy network
#: and batch, larger learning rates.
DEMO_SETTINGS = (
    "energy.width=64", "training.batch_size=256", "training.ebm_lr=1e-3", "training.initializer_lr=1e-3",
    "training.warmup_iterations=50", "training.initializer_warmup_lead=0", "training.ema_decay=0.99",
    # Short chains in training; sampling keeps the reference 15 steps per level (cleaner samples).
    "langevin.n_steps=5", "sampler.steps_per_level=15",
)


def demo_config(overrides: tuple[str, ...] = ()) -> ExperimentConfig:
    return apply_overrides(preset("toy-quadrants-cond"), [*DEMO_SETTINGS, *overrides])


def quadrant_mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    """n points (n, 2) of the four equal-weight Gaussians."""
    signs = torch.randint(0, 2, (n, 2), generator=generator) * 2 - 1
    return CENTRE * signs + SPREAD * torch.randn(n, 2, generator=generator)


def concept_labels(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each point's horizontal (right/left) or vertical (up/down) concept, picked with probability 1/2."""
    horizontal = torch.where(points[:, 0] >= 0, RIGHT, LEFT)
    vertical = torch.where(points[:, 1] >= 0, UP, DOWN)
    return torch.where(torch.rand(len(points), generator=generator) < 0.5, horizontal, vertical)


def train_concept_model(iterations: int, seed: int = 0, config: ExperimentConfig | None = None) -> CooperativeTrainer:
    """A conditional model of the four half-plane concepts, trained on fresh toy points each step."""
    config = config or demo_config()
    generator = torch.Generator().manual_seed(seed)
    trainer = CooperativeTrainer(config, generator=generator)
    for _ in range(iterations):
        points = quadrant_mixture(config.training.batch_size, generator)
        trainer.step(points, concept_labels(points, generator))
    return trainer


def sample_concepts(trainer: CooperativeTrainer, concepts: tuple[int, ...], n_samples: int,
                    seed: int = 0) -> torch.Tensor:
    """Samples of the trainer's EMA networks composed over the ``concepts`` (class labels; cdrl.guidance)."""
    spec = GenerationSpec.resolve(trainer.config, n_samples, seed=seed, classes=concepts)
    with ema_model(trainer) as model:
        return generate(model, spec, device=trainer.device)


def intersection_fraction(samples: torch.Tensor) -> float:
    """Share of samples in the upper-right quadrant, where right and up intersect."""
    return float(((samples[:, 0] > 0) & (samples[:, 1] > 0)).float().mean())


def save_figure(panels: dict[str, torch.Tensor], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    limit = 2 * CENTRE
    for axis, (title, points) in zip(axes, panels.items()):
        axis.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
        axis.axhline(0, color="gray", linewidth=0.5)
        axis.axvline(0, color="gray", linewidth=0.5)
        axis.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", title=title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra config override key=value (repeatable), e.g. langevin.n_steps=15")
    parser.add_argument("--out", type=Path, default=Path("composition_2d.png"))
    args = parser.parse_args()

    config = demo_config(tuple(args.overrides))
    started = time.perf_counter()
    trainer = train_concept_model(args.iterations, args.seed, config)
    print(f"trained {args.iterations} iterations in {time.perf_counter() - started:.0f} s")
    panels = {
        "right": sample_concepts(trainer, (RIGHT,), args.samples, args.seed),
        "up": sample_concepts(trainer, (UP,), args.samples, args.seed),
        "right AND up": sample_concepts(trainer, (RIGHT, UP), args.samples, args.seed),
    }
    for title, points in panels.items():
        print(f"{title:>13}: in the upper-right quadrant {intersection_fraction(points):.3f}")
    print(f"wrote {save_figure(panels, args.out)}")


if __name__ == "__main__":
    main()
