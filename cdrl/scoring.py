"""Score a checkpoint: draw samples, measure them, and record the full protocol in MLflow.

Samples get the metrics of :mod:`cdrl.metrics` that apply to them: images FID/KID (and IS
where the extractor has logits) through :mod:`cdrl.evaluation` against cached statistics of a
named dataset split, 2-D toy models exact metrics, class-guided digits a class accuracy.
Every score is one MLflow run tagged ``cdrl.kind=eval`` with ``eval.*`` params saying how the
number was obtained.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from cdrl.checkpoint import LoadedModel, load_model
from cdrl.composition import concept_groups, requested_values
from cdrl.config import ExperimentConfig, apply_overrides
from cdrl.errors import CdrlBenchError
from cdrl.datasets import DataConfig, build_dataset, dataset_info, reference_name, toy_sample
from cdrl.evaluation.backends import DEFAULT_BACKEND
from cdrl.distributed import current_ranks
from cdrl.figures import save_sample_figure
from cdrl.generation import GenerationSpec, generate
from cdrl.guidance import requested_classes
from cdrl.metrics import Scores, ScoreRequest, ScoringRequest, measure, reference_images
from cdrl.tags import TAG_KIND, TAG_METHOD, TAG_PARENT_RUN, TAG_PRESET, TAG_RUN_KEY, TAG_SUITE
from cdrl.store import Store, TrackingError
from cdrl.tracking import TrackedRun, get_run_tags, tracked_run

#: Floor rows of 2-D toys draw their "samples" from this seed + the run's seed, apart from the reference's.
FLOOR_SEED_OFFSET = 1_000_003


@dataclass
class ScoreResult:
    metrics: dict[str, float]
    protocol: dict[str, Any]
    protocol_line: str
    run_id: str | None = None
    #: sampling_seconds, scoring_seconds (of which feature_seconds and metric_seconds, as
    #: :class:`cdrl.metrics.Scores` counts them) and samples_per_second (logged as metrics too).
    timing: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplingRequest:
    """What to draw from a checkpoint: how many samples, at which schedule, seed and guidance, with which weights.
    Built once where the command starts (``sample``, ``eval``, a suite's evaluation) and passed whole."""

    checkpoint: Path
    n_samples: int
    #: Langevin steps per level K; None: the model's training count.
    steps_per_level: int | None = None
    seed: int = 0
    #: Samples drawn at once; None: cdrl.generation's default.
    batch_size: int | None = None
    guidance: float = 0.0
    #: The class every sample is drawn from; None: class i mod (number of classes) for sample i.
    class_label: int | None = None
    use_ema: bool = True
    #: ``sampler.*`` settings this draw uses where they differ from the model's.
    sampler_overrides: tuple[str, ...] = ()
    #: Names of the dataset's concepts to compose (:mod:`cdrl.composition`), each sample asking for one
    #: combination of their values; empty: none.
    concepts: tuple[str, ...] = ()

    def spec(self, config: ExperimentConfig) -> GenerationSpec:
        return GenerationSpec.resolve(config, self.n_samples, steps_per_level=self.steps_per_level, seed=self.seed,
                                      batch_size=self.batch_size, guidance=self.guidance, classes=self.class_label,
                                      weights="ema" if self.use_ema else "live",
                                      sampler_overrides=self.sampler_overrides,
                                      concepts=concept_groups(config, self.concepts) if self.concepts else None)


@dataclass(frozen=True)
class Recording:
    """Where a score is logged: one MLflow run in ``experiment`` of ``store``, with extra ``tags``."""

    #: The tracking store, resolved once by the caller (a URI or None is resolved here).
    store: Store | str | None = None
    #: None: ``cdrl-bench``.
    experiment: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def score_samples(samples: torch.Tensor, config: ExperimentConfig, scoring: ScoringRequest = ScoringRequest(), *,
                  seed: int = 0, device: str | torch.device | None = None,
                  classes: torch.Tensor | None = None) -> Scores:
    """Every metric of :data:`cdrl.metrics.METRICS` that applies to samples drawn from a model with
    ``config``, with the protocol and the seconds spent on features and on the metrics.

    ``classes``: the class each sample was asked for, if any; digits samples then also get
    ``class_accuracy``, the share that a small digit classifier assigns to that class.
    """
    return measure(ScoreRequest(samples, config, scoring, seed, device, classes))


def build_statistics(dataset: str, *, split: str = "train", n_images: int | None = None,
                     backend: str = DEFAULT_BACKEND, mode: str | None = None, data_dir: str | None = None,
                     weights: str | None = None, device: str | torch.device | None = None):
    """Build (and cache) the reference statistics of a dataset split explicitly, for ``cdrl-bench stats``."""
    from cdrl.evaluation import build_reference_statistics, resolve_extractor
    from cdrl.evaluation.reference import ReferenceKey

    data = DataConfig(dataset=dataset, split=split, data_dir=data_dir)
    if not dataset_info(dataset).is_image:
        raise CdrlBenchError(f"{dataset} is a 2-D toy density: it is scored exactly, with no reference statistics")
    total, batches = reference_images(data, n_images)
    # The name scoring looks the statistics up by (cdrl.metrics): e.g. digits-16px, not digits.
    key = ReferenceKey.for_extractor(reference_name(data), split, total, resolve_extractor(backend, mode, weights))
    return build_reference_statistics(key, batches, weights=weights, device=device)


def _flatten(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    return {f"{prefix}{key}": str(value) for key, value in values.items()}


def _sampling(request: SamplingRequest, device: torch.device) -> tuple[LoadedModel, GenerationSpec, dict]:
    """(the model, what to draw from it, the sampling protocol) of a checkpoint."""
    model = load_model(request.checkpoint, use_ema=request.use_ema, device=device)
    spec = request.spec(model.config)
    protocol = {**spec.protocol(model.config), "checkpoint": str(Path(request.checkpoint).resolve()),
                "checkpoint_iteration": model.iteration,
                **({"class_order": model.class_order} if model.class_order else {})}
    return model, spec, protocol


def chosen_device(device: str | torch.device | None) -> torch.device:
    """``device``, else the GPU when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def draw_samples(request: SamplingRequest, *, device: str | torch.device | None = None,
                 check_config: Callable[[ExperimentConfig], None] | None = None
                 ) -> tuple[torch.Tensor, ExperimentConfig, dict]:
    """(samples, the model's config, the sampling protocol) of a checkpoint.

    ``check_config`` is called with the model's config before any sample is drawn, for a caller
    to refuse there what the samples could not be used for.

    A class-conditional model draws sample i of the request's ``class_label``, or of class i mod
    (number of classes) when none is given; :func:`cdrl.guidance.requested_classes` says which.
    In a process group every rank draws its share and gets all samples (:func:`cdrl.generation.generate`).
    """
    device = chosen_device(device)
    model, spec, protocol = _sampling(request, device)
    if check_config is not None:
        check_config(model.config)
    return generate(model, spec, device=device), model.config, protocol


def score_checkpoint(sampling: SamplingRequest, scoring: ScoringRequest = ScoringRequest(), *,
                     device: str | torch.device | None = None, checkpoint_selection: str = "given",
                     record: Recording | None = Recording()) -> ScoreResult | None:
    """Draw ``sampling`` from its checkpoint and score the samples as ``scoring`` says; log them to ``record``
    (None: not logged).

    The scoring's ``reference_overrides`` (``data.*`` settings) change how the reference images are
    read, e.g. ``data.imagenet_source=npz64-resized`` for the published ImageNet evaluation pipeline.
    The MLflow run spans sampling and scoring: it logs how long each took, samples per second and a
    figure of the first samples. In a process group every rank draws its share; rank 0 scores,
    logs and returns the result, the other ranks return None.
    """
    device = chosen_device(device)
    model, spec, protocol_of_sampling = _sampling(sampling, device)
    config, n_samples, seed, guidance = model.config, sampling.n_samples, sampling.seed, sampling.guidance
    name = (f"eval {config.name} {protocol_of_sampling['noise_levels']}x{spec.steps_per_level}"
            f"{f' w={guidance:g}' if guidance else ''}{'' if sampling.use_ema else ' live'}")
    with score_run(config, record, name, model.training_run) as run:
        started = time.monotonic()
        samples = generate(model, spec, device=device)
        sampling_seconds = time.monotonic() - started
        if not current_ranks().is_main:
            return None
        reference_config = apply_overrides(config, list(scoring.reference_overrides))
        scores = score_samples(samples, reference_config, scoring, seed=seed, device=device,
                               classes=requested_values(n_samples, config, sampling.concepts) if sampling.concepts
                               else requested_classes(torch.arange(n_samples), sampling.class_label, config))
        metrics, protocol, line = scores.metrics, scores.protocol, scores.line
        protocol.update(protocol_of_sampling, checkpoint_selection=checkpoint_selection, **overrides_entry(scoring))
        timing = _timing(n_samples, sampling_seconds, time.monotonic() - started - sampling_seconds, scores)
        shape = f"{protocol_of_sampling['noise_levels']}x{protocol_of_sampling['steps_per_level']} steps"
        line = f"{line} | {shape}, {protocol_of_sampling['weights']} weights, seed {seed} | {_timing_line(timing)}"
        record_score(run, metrics, timing, protocol, config, samples, f"{config.name}, {shape}")
        return ScoreResult(metrics, protocol, line, run.run_id if run else None, timing)


def data_as_samples(config: ExperimentConfig, n_samples: int, seed: int, reference_split: str
                    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """Real data in place of samples, for the data-vs-data floor of every metric.

    2-D toys: fresh draws of the density (independent of the reference's). Images: the first
    ``n_samples`` images of the other split (test against a train reference: the classic floor),
    with their labels (class accuracy's floor is the classifier's accuracy on real digits).
    """
    data = config.data
    if not dataset_info(data.dataset).is_image:
        points, _ = toy_sample(data.dataset, n_samples, torch.Generator().manual_seed(FLOOR_SEED_OFFSET + seed),
                               data.toy_scale)
        return points, None, {"floor": f"{n_samples} fresh draws of {data.dataset}"}
    split = "test" if reference_split == "train" else "train"
    floor_data = replace(data, split=split, horizontal_flip=False, class_conditional=True)
    dataset = build_dataset(floor_data)
    count = min(n_samples, len(dataset))
    items = [dataset[i] for i in range(count)]
    images, labels = torch.stack([item[0] for item in items]), torch.as_tensor([int(item[1]) for item in items])
    concept_labels = dataset_info(data.dataset).concept_labels
    if concept_labels is not None:  # every concept's true value, as composed samples are asked for theirs
        labels = concept_labels(floor_data)[:count]
    return images, labels, {"floor": f"the first {count} {data.dataset}/{split} images"}


def score_data(config: ExperimentConfig, n_samples: int, scoring: ScoringRequest = ScoringRequest(), *, seed: int = 0,
               device: str | torch.device | None = None, record: Recording | None = Recording()
               ) -> ScoreResult | None:
    """Score real data exactly as samples are scored: the best value each metric can reach here.

    The scoring's mode and ``reference_overrides`` as in :func:`score_checkpoint` (the overrides also
    read the floor's own images), so that a floor compares with the rows scored beside it. In a
    process group rank 0 alone scores and returns the result; the other ranks return None.
    """
    if not current_ranks().is_main:
        return None
    config = apply_overrides(config, list(scoring.reference_overrides))
    if scoring.data_dir is not None:
        config = replace(config, data=replace(config.data, data_dir=scoring.data_dir))
    with score_run(config, record, f"floor {config.name}") as run:
        started = time.monotonic()
        samples, labels, floor = data_as_samples(config, n_samples, seed, scoring.reference_split)
        scores = score_samples(samples, config, replace(scoring, reference=None), seed=seed, device=device,
                               classes=labels)
        metrics, protocol, line = scores.metrics, scores.protocol, scores.line
        protocol.update(floor, seed=seed, **overrides_entry(scoring))
        timing = _timing(len(samples), 0.0, time.monotonic() - started, scores)
        record_score(run, metrics, timing, protocol, config, samples, f"{config.name}: {floor['floor']}")
        return ScoreResult(metrics, protocol, f"{line} | floor: {floor['floor']}", run.run_id if run else None,
                           timing)


def _timing(count: int, sampling_seconds: float, scoring_seconds: float, scores: Scores) -> dict[str, float]:
    timing = {"sampling_seconds": sampling_seconds, "scoring_seconds": scoring_seconds,
              "feature_seconds": scores.feature_seconds, "metric_seconds": scores.metric_seconds}
    if sampling_seconds > 0:
        timing["samples_per_second"] = count / sampling_seconds
    return timing


def _timing_line(timing: dict[str, float]) -> str:
    return (f"sampled in {timing['sampling_seconds']:.1f} s ({timing['samples_per_second']:.3g}/s), "
            f"scored in {timing['scoring_seconds']:.1f} s (features {timing['feature_seconds']:.1f} s)")


def overrides_entry(scoring: ScoringRequest) -> dict[str, str]:
    """The protocol entry of the reference overrides, when there are any."""
    return {"reference_overrides": " ".join(scoring.reference_overrides)} if scoring.reference_overrides else {}


@contextlib.contextmanager
def score_run(config: ExperimentConfig, record: Recording | None, name: str, training_run: str | None = None
               ) -> Iterator[TrackedRun | None]:
    """The MLflow run of one score on rank 0 (None elsewhere, or with no ``record``), open from before sampling.

    Named ``name`` ("eval cifar10 6x15") unless it is a suite's, and nested under ``training_run``, the run that
    trained the checkpoint, when that run is in this store and no parent is given.
    """
    if record is None or not current_ranks().is_main:
        yield None
        return
    run_tags = {TAG_KIND: "eval", TAG_PRESET: config.name, TAG_METHOD: config.training.method, **record.tags}
    if TAG_PARENT_RUN not in run_tags:  # a suite names the parent itself
        run_tags.update(_nested_under(training_run, record.store))
    # A suite's evaluation, run again after a SIGKILL, closes the RUNNING twin the killed one left.
    replaces = (TAG_KIND, TAG_SUITE, TAG_RUN_KEY) if TAG_RUN_KEY in run_tags else ()
    # A suite's evaluation is named by its run key (cdrl/K15/seed0) and carries the model's settings.
    with tracked_run(tracking_uri=record.store, experiment_name=record.experiment, tags=run_tags,
                     run_name=run_tags.get(TAG_RUN_KEY, name), replaces=replaces) as run:
        yield run


def _nested_under(training_run: str | None, tracking_uri: Store | str | None) -> dict[str, str]:
    """The tag that nests an evaluation under its checkpoint's training run; none when that run is not in the store
    (a stored or copied checkpoint trained elsewhere)."""
    if training_run is None:
        return {}
    try:
        get_run_tags(training_run, tracking_uri)
    except TrackingError:
        return {}
    return {TAG_PARENT_RUN: training_run}


#: Samples drawn in an evaluation's figure: an 8x8 grid of images, or a scatter of 2-D points.
_FIGURE_IMAGES, _FIGURE_POINTS = 64, 5000


def record_score(run: TrackedRun | None, metrics: dict[str, float], timing: dict[str, float], protocol: dict[str, Any],
            config: ExperimentConfig, samples: torch.Tensor, title: str) -> None:
    if run is None:
        return
    run.log_params({**config.flat(), **_flatten("eval.", protocol)})
    run.log_metrics({**metrics, **timing})
    log_sample_figure(run, samples, config, title)


def log_sample_figure(run: TrackedRun, samples: torch.Tensor, config: ExperimentConfig, title: str) -> None:
    """A figure of the first samples (an 8x8 grid of images, or a scatter of 2-D points) as the run's samples.png."""
    shown = samples[:_FIGURE_IMAGES if dataset_info(config.data.dataset).is_image else _FIGURE_POINTS]
    with tempfile.TemporaryDirectory() as folder:
        run.log_artifact(save_sample_figure(shown, config, Path(folder) / "samples.png", title))
