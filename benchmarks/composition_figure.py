"""The figure of attribute composition a paper prints: samples asking concept A alone, B alone, and both composed.

Three panels of one conditional model (a checkpoint of ``digits-compose`` or ``celeba-compose``):
A alone (a column per value of A), B alone (a row per value of B), and A ∧ B, f(a) + f(b) − f(∅),
where the cell in row b, column a asks for both. Run::

    python -m benchmarks.composition_figure CHECKPOINT --out composition.png --guidance 1  # A, B: the dataset's
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cdrl.checkpoint import LoadedModel, load_model
from cdrl.composition import concept_groups
from cdrl.datasets import dataset_info
from cdrl.files import writing
from cdrl.generation import GenerationSpec, generate


def composition_grids(model: LoadedModel, *, seed: int = 0, steps_per_level: int | None = None,
                      guidance: float = 0.0) -> dict[str, torch.Tensor]:
    """(B's values, A's values, C, H, W) grids of samples by panel: "A", "B" and "A∧B"; cell [b, a] of A∧B asks for
    both, of A alone for a, of B alone for b. ``guidance`` w: each concept asked at weight 1 + w."""
    a_name, b_name = (concept.name for concept in dataset_info(model.config.data.dataset).concepts[:2])
    a_values, b_values = concept_groups(model.config, [a_name, b_name])
    rows, columns = len(b_values), len(a_values)

    def draw(groups: tuple[tuple[int, ...], ...]) -> torch.Tensor:
        spec = GenerationSpec.resolve(model.config, rows * columns, seed=seed, steps_per_level=steps_per_level,
                                      guidance=guidance, concepts=groups)
        return generate(model, spec)

    # Sample i asks for A's value i mod |A| (and B's value i div |A|): row-major, a grid as drawn.
    both = draw((a_values, b_values)).unflatten(0, (rows, columns))
    alone_a = draw((a_values,)).unflatten(0, (rows, columns))
    # B alone: sample i asks for B's value i mod |B|; cell [b, a] takes the a-th sample asking for b.
    alone_b = draw((b_values,))
    alone_b = torch.stack([alone_b[b::rows] for b in range(rows)])
    return {"A": alone_a, "B": alone_b, "A∧B": both}


def save_composition_figure(model: LoadedModel, out: Path, **options) -> Path:
    """The three panels side by side, each labelled with the values its rows and columns ask for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    info = dataset_info(model.config.data.dataset)
    a, b = info.concepts[:2]
    grids = composition_grids(model, **options)
    figure, axes = plt.subplots(1, 3, figsize=(15, 3.2))
    titles = {"A": f"A alone: {a.name}", "B": f"B alone: {b.name}", "A∧B": f"A ∧ B: f({a.name}) + f({b.name}) − f(∅)"}
    if options.get("guidance"):
        titles = {panel: f"{title}, w = {options['guidance']:g}" for panel, title in titles.items()}
    for axis, (panel, grid) in zip(axes, grids.items()):
        rows, columns, _, size, _ = grid.shape
        image = make_grid(grid.flatten(0, 1).add(1).div(2).clamp(0, 1), nrow=columns, padding=1, pad_value=0.5)
        axis.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        axis.set_title(titles[panel], fontsize=10)
        axis.set_xticks([1 + size / 2 + column * (size + 1) for column in range(columns)])
        axis.set_xticklabels(a.values if panel != "B" else [""] * columns, fontsize=7, rotation=90)
        axis.set_yticks([1 + size / 2 + row * (size + 1) for row in range(rows)])
        axis.set_yticklabels(b.values if panel != "A" else [""] * rows, fontsize=7)
        axis.tick_params(length=0)
    figure.tight_layout()
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=150)
    plt.close(figure)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint file of a model conditional on two concepts")
    parser.add_argument("--out", type=Path, default=Path("composition.png"))
    parser.add_argument("--steps", type=int, default=None, help="Langevin steps per level (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=0.0, help="guidance w: each concept at weight 1 + w")
    args = parser.parse_args()
    print(save_composition_figure(load_model(args.checkpoint), args.out, seed=args.seed, steps_per_level=args.steps,
                                  guidance=args.guidance))


if __name__ == "__main__":
    main()
