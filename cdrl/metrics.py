"""Every metric of cdrl-bench, one entry each: its name, label, direction, table format, the samples
it applies to, and the pass that computes it.

A :class:`Metric` in :data:`METRICS` is the one home of a metric: the suite files, tables and
regression check read its label, direction and format here, and :func:`measure` (behind
:func:`cdrl.scoring.score_samples`) computes the metrics that apply to the samples. Metrics
computed together share a :class:`MetricPass`, run at most once per score: FID, KID and IS
come from one Inception pass over the samples (:mod:`cdrl.evaluation`), the three exact 2-D
metrics from one look at the toy density's modes (:mod:`cdrl.toy_metrics`).

Adding a metric is one entry in :data:`METRICS` and, unless an existing pass gives its
value, a pass function in this file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import torch

from cdrl.config import ExperimentConfig
from cdrl.datasets import DataConfig, build_dataset, dataset_info, reference_name
from cdrl.evaluation.backends import DEFAULT_BACKEND
from cdrl.toy_metrics import toy_metrics


@dataclass(frozen=True)
class ScoringRequest:
    """How samples are measured: against which reference images, through which backend. The protocol
    ``eval``, a suite's evaluations and ``score`` share, built once where the command starts."""

    #: The reference dataset; None: the model's own.
    reference: str | None = None
    reference_split: str = "train"
    #: Reference images (the first N of the split); None: the whole split.
    n_reference: int | None = None
    backend: str = DEFAULT_BACKEND
    #: The backend's resize mode; None: the backend's default.
    mode: str | None = None
    #: ``data.*`` settings that change how the reference images are read (e.g. another image pipeline).
    reference_overrides: tuple[str, ...] = ()
    #: Where the reference dataset's files are; None: the model's data.data_dir.
    data_dir: str | None = None
    #: Inception weights file; None: the backend's.
    weights: str | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """One scoring of samples: what was drawn, from which model, measured how."""

    samples: torch.Tensor
    config: ExperimentConfig
    scoring: ScoringRequest
    seed: int
    device: str | torch.device | None
    #: The class each sample was asked for, if any: (N,), or (N, concepts) of the value asked of each concept of
    #: a dataset with concepts (-1: none; :func:`cdrl.composition.requested_values`).
    classes: torch.Tensor | None = None

    @property
    def dataset(self) -> str:
        """The reference dataset: the model's own unless another is named."""
        return self.scoring.reference or self.config.data.dataset


@dataclass(frozen=True)
class Measured:
    """What one pass gives: values by metric name (one it cannot give is absent), the protocol entries
    saying how they were obtained, and its part of the one-line protocol."""

    values: dict[str, float]
    protocol: dict[str, Any]
    line: str
    #: Wall seconds of the pass spent on Inception features (reference and samples); the rest is metric math.
    feature_seconds: float = 0.0


@dataclass(frozen=True)
class Scores:
    """The metrics that apply to one set of samples, how they were obtained, and where the time went."""

    metrics: dict[str, float]
    protocol: dict[str, Any]
    #: The one-line protocol, every pass's part joined.
    line: str
    #: Wall seconds extracting features (a cached reference costs none) and computing the metrics from them.
    feature_seconds: float
    metric_seconds: float


@dataclass(frozen=True)
class MetricPass:
    """One computation over the samples that gives one or more metrics' values."""

    name: str
    run: Callable[[ScoreRequest], Measured]


@dataclass(frozen=True)
class DataKind:
    """The samples a metric applies to."""

    name: str
    applies: Callable[[ScoreRequest], bool]


IMAGES = DataKind("images", lambda request: dataset_info(request.dataset).is_image)
TOY_2D = DataKind("2-D toy densities", lambda request: not dataset_info(request.dataset).is_image)
CONCEPT_IMAGES = DataKind("images of a dataset with concept classifiers, with the concepts asked of each",
                          lambda request: request.classes is not None and request.classes.dim() == 2
                          and request.dataset in _concept_classifiers())
#: Not samples: a model's energies of in- and out-of-distribution images (cdrl.ood computes these metrics).
OOD_ENERGIES = DataKind("a model's energies of in- and out-of-distribution data", lambda request: False)
GUIDED_DIGITS = DataKind("digits with a requested class per sample",
                         lambda request: request.classes is not None and request.dataset == "digits")


@dataclass(frozen=True)
class Metric:
    """One metric: how it is named, read and printed, which samples it applies to, what computes it."""

    name: str
    #: Its name in tables and result lines.
    label: str
    higher_is_better: bool
    #: Decimal places in tables and result lines.
    decimals: int
    data: DataKind
    computed_by: MetricPass
    #: A share of samples: its seed-to-seed std is at least the binomial sqrt(p (1 - p) / n).
    proportion: bool = False

    def show(self, value: float) -> str:
        """'label value' at the metric's decimals, e.g. 'mode coverage 0.875'."""
        return f"{self.label} {value:.{self.decimals}f}"

    @property
    def heading(self) -> str:
        """'FID ↓': the label and the direction, as a table's column heads it."""
        return f"{self.label} {'↑' if self.higher_is_better else '↓'}"


# --------------------------------------------------------------------------- passes

def reference_images(data: DataConfig, n_images: int | None, batch_size: int = 500
                     ) -> tuple[int, Iterator[torch.Tensor]]:
    """(count, uint8 batches) of the first ``n_images`` images of a dataset split (all when None; never flipped).

    The batches are loaded as they are iterated, so cached statistics cost no data loading.
    """
    from cdrl.evaluation import to_uint8

    dataset = build_dataset(replace(data, horizontal_flip=False))
    total = len(dataset) if n_images is None else min(n_images, len(dataset))

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, total, batch_size):
            yield to_uint8(torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, total))]))

    return total, batches()


def _inception(request: ScoreRequest) -> Measured:
    """FID, KID and IS (where the extractor has logits) against cached statistics of the reference split."""
    from cdrl.evaluation import compute_metrics, reference_statistics, to_uint8

    config, scoring = request.config.data, request.scoring
    data = replace(config, dataset=request.dataset, split=scoring.reference_split,
                   data_dir=scoring.data_dir or config.data_dir)
    total, batches = reference_images(data, scoring.n_reference)
    # Another image pipeline of the same dataset is another reference: its own cached statistics.
    reference = reference_name(data)
    started = time.monotonic()
    statistics = reference_statistics(reference, batches, split=scoring.reference_split, n_images=total,
                                      backend=scoring.backend, mode=scoring.mode, weights=scoring.weights,
                                      device=request.device)
    reference_seconds = time.monotonic() - started
    result = compute_metrics(to_uint8(request.samples), statistics, backend=scoring.backend, mode=scoring.mode,
                             weights=scoring.weights, device=request.device, reference_name=reference,
                             reference_split=scoring.reference_split, seed=request.seed)
    values = {name: float(getattr(result, name)) for name in ("fid", "kid_mean", "kid_std", "inception_score")
              if getattr(result, name) is not None}
    return Measured(values, dict(vars(result.protocol)), result.line(), reference_seconds + result.feature_seconds)


def _exact_2d(request: ScoreRequest) -> Measured:
    """The exact toy metrics against fresh draws of the density (no feature extractor)."""
    samples, dataset = request.samples, request.dataset
    values = toy_metrics(dataset, samples, seed=request.seed, scale=request.config.data.toy_scale,
                         n_reference=request.scoring.n_reference)
    n_reference = request.scoring.n_reference or len(samples)
    protocol = {"backend": "exact-2d", "n_generated": len(samples), "n_reference": n_reference,
                "reference": dataset, "reference_split": "fresh draws"}
    shown = " | ".join(METRICS[name].show(value) for name, value in values.items())
    return Measured(values, protocol, f"{shown} | exact 2-D metrics, {len(samples)} samples vs {n_reference} "
                                      f"fresh {dataset} draws")


def _class_accuracy(request: ScoreRequest) -> Measured:
    """The share of samples that a small digit CNN assigns to the class each was asked for."""
    from cdrl.evaluation import to_uint8
    from cdrl.evaluation.digits_classifier import class_accuracy, default_classifier, held_out_accuracy

    # The pixels FID sees and a saved PNG holds (clamped, quantised), not the sampler's raw floats.
    samples = to_uint8(request.samples).float() / 127.5 - 1.0
    classifier = default_classifier(samples.shape[1], samples.shape[-1])
    accuracy = class_accuracy(samples, request.classes, classifier)
    held_out = round(held_out_accuracy(classifier), 4)
    return Measured({"class_accuracy": accuracy}, {"classifier_held_out_accuracy": held_out},
                    f"{METRICS['class_accuracy'].show(accuracy)} (digit CNN, {held_out:.3f} on held-out digits)")


def _concept_classifiers() -> dict:
    from cdrl.evaluation.concepts import CONCEPT_CLASSIFIERS

    return CONCEPT_CLASSIFIERS


def _concept_accuracy(request: ScoreRequest) -> Measured:
    """The share of samples showing the value asked of each concept, and of both (attribute composition)."""
    from cdrl.evaluation import to_uint8
    from cdrl.evaluation.concepts import concept_accuracies

    samples = to_uint8(request.samples).float() / 127.5 - 1.0  # the pixels FID sees, as for class accuracy
    values = concept_accuracies(request.dataset, samples, request.classes)
    return Measured(values, {"concept_classifiers": request.dataset},
                    " | ".join(METRICS[name].show(value) for name, value in values.items()))


def _ood_only(request: ScoreRequest) -> Measured:
    raise NotImplementedError("AUROC and FPR@95 score a model's energies, not samples: cdrl.ood computes them")


INCEPTION = MetricPass("inception", _inception)
CONCEPT_CLASSIFIER = MetricPass("concept-classifiers", _concept_accuracy)
OOD_DETECTION = MetricPass("ood-detection", _ood_only)
EXACT_2D = MetricPass("exact-2d", _exact_2d)
DIGIT_CLASSIFIER = MetricPass("digit-classifier", _class_accuracy)

# --------------------------------------------------------------------------- the registry

#: Every metric a suite can tabulate or check and a score can give, by name: the one source of their directions.
METRICS: dict[str, Metric] = {metric.name: metric for metric in (
    Metric("fid", "FID", False, 2, IMAGES, INCEPTION),
    Metric("kid_mean", "KID", False, 4, IMAGES, INCEPTION),
    # The spread of KID over its subsets: how precise kid_mean is, logged beside it.
    Metric("kid_std", "KID std", False, 5, IMAGES, INCEPTION),
    Metric("inception_score", "IS", True, 2, IMAGES, INCEPTION),
    Metric("in_support_fraction", "in-support", True, 3, TOY_2D, EXACT_2D, proportion=True),
    Metric("mode_coverage", "mode coverage", True, 3, TOY_2D, EXACT_2D),
    Metric("energy_distance", "energy distance", False, 4, TOY_2D, EXACT_2D),
    Metric("class_accuracy", "class accuracy", True, 3, GUIDED_DIGITS, DIGIT_CLASSIFIER, proportion=True),
    # Attribute composition: samples showing the value asked of concept A, of B, and of both at once.
    Metric("concept_a_accuracy", "concept A accuracy", True, 3, CONCEPT_IMAGES, CONCEPT_CLASSIFIER, proportion=True),
    Metric("concept_b_accuracy", "concept B accuracy", True, 3, CONCEPT_IMAGES, CONCEPT_CLASSIFIER, proportion=True),
    Metric("joint_accuracy", "A∧B accuracy", True, 3, CONCEPT_IMAGES, CONCEPT_CLASSIFIER, proportion=True),
    # Out-of-distribution detection by the energy: in-distribution images the positives.
    Metric("auroc", "AUROC", True, 3, OOD_ENERGIES, OOD_DETECTION),
    Metric("fpr95", "FPR@95", False, 3, OOD_ENERGIES, OOD_DETECTION, proportion=True),
)}


def measure(request: ScoreRequest) -> Scores:
    """The metrics that apply to the request, each pass run once."""
    applicable = [metric for metric in METRICS.values() if metric.data.applies(request)]
    metrics: dict[str, float] = {}
    protocol: dict[str, Any] = {}
    lines = []
    started, feature_seconds = time.monotonic(), 0.0
    for metric_pass in dict.fromkeys(metric.computed_by for metric in applicable):
        measured = metric_pass.run(request)
        wanted = {metric.name for metric in applicable if metric.computed_by == metric_pass}
        metrics.update((name, value) for name, value in measured.values.items() if name in wanted)
        protocol.update(measured.protocol)
        lines.append(measured.line)
        feature_seconds += measured.feature_seconds
    return Scores(metrics, protocol, " | ".join(lines), feature_seconds,
                  time.monotonic() - started - feature_seconds)
