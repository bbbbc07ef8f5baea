"""Per-concept classifiers of datasets with attributes to compose: which value of each concept an image shows.

``digits-colour``: the digit by the project's digit CNN (:mod:`cdrl.evaluation.digits_classifier`)
read on the ink, whatever its colour (the largest of the three channels), and the colour by the
channel that holds the most ink: the rule the images were made by, so a person can check it.
Datasets without classifiers here (CelebA: no attribute classifier ships) get no concept accuracy.
"""

from __future__ import annotations

from typing import Callable

import torch

from cdrl.evaluation.digits_classifier import default_classifier, predict


def _digits_colour(images: torch.Tensor) -> torch.Tensor:
    ink = images.amax(dim=1, keepdim=True)  # gray digit in [-1, 1]: black background, ink from any channel
    digit = predict(default_classifier(1, images.shape[-1]), ink)
    colour = (images + 1.0).sum(dim=(2, 3)).argmax(dim=1)
    return torch.stack([digit.cpu(), colour.cpu()], dim=1)


#: dataset -> images (N, C, H, W) in [-1, 1] -> (N, concepts) predicted value of each concept.
CONCEPT_CLASSIFIERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"digits-colour": _digits_colour}


def concept_accuracies(dataset: str, images: torch.Tensor, requested: torch.Tensor) -> dict[str, float]:
    """Share of images showing the value asked of each concept (concept_a_accuracy, concept_b_accuracy: over
    the images that asked for it), and of both at once (joint_accuracy: over images that asked for both).

    ``requested``: (N, 2) within-concept values, -1 where an image asked nothing of that concept.
    """
    correct = CONCEPT_CLASSIFIERS[dataset](images) == requested
    asked = requested >= 0
    values = {}
    for index, name in enumerate(("concept_a_accuracy", "concept_b_accuracy")):
        if asked[:, index].any():
            values[name] = float(correct[asked[:, index], index].float().mean())
    both = asked.all(dim=1)
    if both.any():
        values["joint_accuracy"] = float(correct[both].all(dim=1).float().mean())
    return values
