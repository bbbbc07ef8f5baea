"""Classifier-free guidance and compositional generation, as (energy, proposal) callables.

A class-conditional network h(x, logsnr, label) — the energy network f or the initializer g,
embedding index 0 being the null class ∅ — is combined over concepts c_i with weights w_i as

    h(x | c_1, ..., c_K) = h(x | ∅) + Σ_i w_i (h(x | c_i) − h(x | ∅)).

One concept y with weight 1 + w is classifier-free guidance at scale w, (1 + w) h(y) − w h(∅);
two concepts with weight 1 are the composition h(c₁) + h(c₂) − h(∅) (METHOD.md). Energy and
proposal are combined alike, and :func:`cdrl.sampler.sample` sees only the combined
callables, so Langevin and the final Tweedie step use the guided energy with no special case.
Shapes are free: the same callables serve 2-D points and images.

Concepts are dataset classes (0-based, as datasets label them); like
:class:`cdrl.training.CooperativeTrainer`, class c is embedding index c + 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from cdrl.config import ExperimentConfig
from cdrl.errors import CdrlBenchError
from cdrl.langevin import EnergyFn
from cdrl.sampler import ProposalFn

#: Embedding index of the null class (the label dropped in training).
NULL_LABEL = 0

#: network(x, logsnr, labels) with embedding indices as labels: EnergyNet or an initializer.
ConditionalNetwork = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: The combination, network(x, logsnr) with the labels bound: an EnergyFn or a ProposalFn.
BoundNetwork = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: One class for the whole batch, or one per example (shape (B,)).
ClassLabel = int | torch.Tensor


class GuidanceError(CdrlBenchError):
    """Guidance or composition asked of a model or with labels that cannot do it; the message names the fix."""


@dataclass(frozen=True)
class Concept:
    """One conditioning term: dataset class ``label`` (0-based), entering with weight ``weight``."""

    label: ClassLabel
    weight: float = 1.0


def requested_classes(indices: torch.Tensor, class_label: int | None, config: ExperimentConfig
                      ) -> torch.Tensor | None:
    """The class that samples ``indices`` are drawn for: ``class_label``, or all classes in turn; None if unconditional."""
    num_classes = config.energy.num_classes
    if num_classes is None:
        return None
    return torch.full_like(indices, class_label) if class_label is not None else indices % num_classes


def composed_classes(indices: torch.Tensor, groups: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The class of each group that samples ``indices`` are drawn for, one (B,) tensor per group.

    Sample i runs through every combination in turn (the first group fastest): with the digits 0..9
    and the colours 10..12, samples 0..29 are each digit in each colour once.
    """
    classes, stride = [], 1
    for group in groups:
        values = torch.as_tensor(list(group), dtype=torch.long)
        classes.append(values[(indices // stride) % len(values)])
        stride *= len(values)
    return classes


def embedding_labels(label: ClassLabel | None, batch: int, device: torch.device) -> torch.Tensor:
    """Embedding indices of dataset class(es) ``label`` (class c is index c + 1), or the null class for None."""
    if label is None:
        return torch.full((batch,), NULL_LABEL, dtype=torch.long, device=device)
    if isinstance(label, torch.Tensor):
        if label.shape != (batch,):
            raise GuidanceError(f"per-example class labels of shape {tuple(label.shape)} for a batch of {batch}: "
                                f"pass one label per example, or one int for the whole batch")
        return label.to(device=device, dtype=torch.long) + 1
    return torch.full((batch,), label + 1, dtype=torch.long, device=device)


def combine(network: ConditionalNetwork, concepts: Sequence[Concept]) -> BoundNetwork:
    """x, logsnr -> h(x | ∅) + Σ w_i (h(x | c_i) − h(x | ∅)), all terms in one batched forward.

    ``network`` is any (x, logsnr, labels) callable: a bare network, or a wrapped one (e.g. a
    compiled chain energy). The batched forward costs one call on (terms × batch) examples.

    Terms whose coefficient is zero are not evaluated, so guidance at w = 0 is exactly (bit for
    bit, at the same cost) the conditional network, and no concepts at all the null one.
    """
    # Coefficients of h(∅), h(c_1), ..., h(c_K); they sum to 1, so residual initializers keep x + ...
    terms = [(None, 1.0 - sum(concept.weight for concept in concepts))]
    terms += [(concept.label, concept.weight) for concept in concepts]
    terms = [(label, coefficient) for label, coefficient in terms if coefficient != 0.0]

    count = len(terms)
    # The network gets the same label and logsnr tensor objects at every step of a chain, as an
    # unguided chain does, so that a chain energy computes its conditioning once per level.
    inputs: dict[str, object] = {}

    def combined(x: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if inputs.get("labels_for") != (batch, x.device):
            inputs["labels_for"] = (batch, x.device)
            inputs["labels"] = torch.cat([embedding_labels(label, batch, x.device) for label, _ in terms])
        labels = inputs["labels"]
        if count == 1:  # its coefficient is exactly 1: the coefficients sum to 1
            return network(x, logsnr, labels)
        if inputs.get("logsnr") is not logsnr:  # holding it, so that its id is not reused
            inputs["logsnr"], inputs["repeated_logsnr"] = logsnr, logsnr.repeat(count)
        outputs = network(x.repeat(count, *([1] * (x.dim() - 1))), inputs["repeated_logsnr"], labels)
        outputs = outputs.unflatten(0, (count, batch))
        coefficients = torch.tensor([coefficient for _, coefficient in terms], dtype=outputs.dtype,
                                    device=outputs.device)
        return (coefficients.view(count, *([1] * (outputs.dim() - 1))) * outputs).sum(dim=0)

    return combined


def guided_callables(ebm: ConditionalNetwork, initializer: ConditionalNetwork | None,
                     concepts: Sequence[Concept]) -> tuple[EnergyFn, ProposalFn | None]:
    """(energy, proposal) for :func:`cdrl.sampler.sample`: both networks combined over ``concepts``."""
    return combine(ebm, concepts), None if initializer is None else combine(initializer, concepts)


def guidance_concepts(classes: ClassLabel | Sequence[ClassLabel], guidance: float) -> list[Concept]:
    """Concepts for guidance at scale w: one class (or per-example classes), or a list to compose, each at 1 + w."""
    if not math.isfinite(guidance):
        raise GuidanceError(f"guidance scale {guidance} is not finite: pass a number such as 0, 0.5 or 3")
    listed = list(classes) if isinstance(classes, (list, tuple)) else [classes]
    return [Concept(label, 1.0 + guidance) for label in listed]


def check_classes(concepts: Sequence[Concept], num_classes: int) -> None:
    """Refuse concepts whose classes lie outside the model's classes 0..num_classes - 1."""
    for concept in concepts:
        labels = concept.label if isinstance(concept.label, torch.Tensor) else torch.tensor([concept.label])
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.numel():
            raise GuidanceError(f"class {int(outside[0])} is outside this model's classes 0..{num_classes - 1}: "
                                f"pick a class in that range")
