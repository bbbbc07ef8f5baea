"""What a suite is: the typed sections of a suite file and the :class:`Suite` they are read into.

``benchmarks/suites/README.md`` describes every key; :mod:`benchmarks.suite.reading` reads and
validates a file into these types.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cdrl.errors import CdrlBenchError
from cdrl.evaluation.backends import DEFAULT_BACKEND
from cdrl.typed import above, at_least, bounds

REPO_FOLDER = Path(__file__).resolve().parents[2]
#: A wheel carries results/paper and results/gate as benchmarks/results/... (pyproject.toml).
INSTALLED_RESULTS = Path(__file__).resolve().parents[1] / "results"


def results_path(relative: str | os.PathLike) -> Path:
    """``results/...`` of this checkout, or the copy an installed wheel carries when there is no checkout."""
    checkout = REPO_FOLDER / relative
    parts = Path(relative).parts
    if checkout.exists() or not parts or parts[0] != "results":
        return checkout
    return INSTALLED_RESULTS.joinpath(*parts[1:])


SUITES_FOLDER = Path(__file__).resolve().parents[1] / "suites"
PAPER_FOLDER = results_path("results/paper")
PROFILES = ("full", "quick")

#: Suite names and model keys: they become folder names under --runs-dir, MLflow experiment
#: names and tag values searched for, so letters, digits, '.', '_' and '-' only (and no '..').
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SAFE_NAME_RULE = "letters, digits, '.', '_' and '-' only, starting with a letter or digit, no '..'"


def is_safe_name(text: str) -> bool:
    """A suite name or model key that is one plain path component (no '/', '\\', '..', spaces or quotes)."""
    return _SAFE_NAME.fullmatch(text) is not None and ".." not in text


class SuiteError(CdrlBenchError):
    """A suite file that cannot be used; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Profile:
    """Budget of one way of running a suite: ``full`` (the suite's own) or ``quick`` (``--quick``)."""

    #: Training iterations; None keeps the preset's.
    iterations: int | None = field(default=None, metadata=at_least(1))
    n_samples: int = field(default=5000, metadata=at_least(1))
    seeds: tuple[int, ...] = field(default=(0,), metadata=at_least(0))
    #: Reference images for image metrics; None: the whole split.
    n_reference: int | None = field(default=None, metadata=at_least(1))
    #: Extra training overrides of this profile (e.g. a smaller batch).
    overrides: tuple[str, ...] = ()
    #: Best-checkpoint selection: score every this many iterations on this many samples (None: the preset's).
    select_every: int | None = field(default=None, metadata=at_least(0))
    select_samples: int | None = field(default=None, metadata=at_least(1))


@dataclass(frozen=True)
class ModelSpec:
    """One trained model of a suite and where it is evaluated."""

    key: str
    #: Row label in tables; empty: the key.
    label: str = ""
    method: str = "cdrl"
    #: The preset to train; empty: [train] preset.
    preset: str = ""
    ablations: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    #: Langevin steps per level to sample with; empty: the training count.
    steps: tuple[int, ...] = field(default=(), metadata=at_least(1))
    #: Classifier-free guidance weights w (the range of the CLI's --guidance).
    guidance: tuple[float, ...] = field(default=(0.0,), metadata=bounds(at_least=0, at_most=1e6))
    #: Columns and values that pick this model's row in the reference CSV (e.g. method = "CDRL").
    paper: dict[str, str] = field(default_factory=dict)
    #: A stored checkpoint (relative to the repository) sampled instead of training the model.
    checkpoint: str | None = None
    #: The data-vs-data floor: real data scored as if it were samples (the preset names the data).
    floor: bool = False
    #: At most this many samples per evaluation (e.g. fewer images than 2-D points in one suite).
    n_samples: int | None = field(default=None, metadata=at_least(1))
    #: The global training batch (all processes together); None: the suite's.
    global_batch: int | None = field(default=None, metadata=at_least(1))
    #: Score the trainings of that model (by key) instead of training one: another protocol, or
    #: another way of sampling (this model's ablations and overrides may change sampler.* only).
    scores: str | None = None
    #: This row's evaluation protocol where it differs from the suite's: the reference split, the
    #: number of reference images, and overrides of the reference data (e.g. another image pipeline).
    reference_split: Literal["train", "test"] | None = None
    n_reference: int | None = field(default=None, metadata=at_least(1))
    reference_overrides: tuple[str, ...] = ()
    #: This model's own stated seconds per training iteration where it differs from [cost]'s (e.g. 30
    #: Langevin steps per level instead of 15), on [cost]'s GPUs; None: [cost]'s.
    seconds_per_iteration: float | None = field(default=None, metadata=above(0))
    #: "last": this model's training selects no checkpoint and its last is scored, where [eval]
    #: checkpoint says "best" (DRL's published code keeps no best-FID checkpoint); None: [eval]'s.
    checkpoint_selection: Literal["last"] | None = None
    #: Attribute composition: the dataset's concepts this row asks of each sample, composed when several
    #: (cdrl.composition), e.g. ["digit", "colour"]; scored by per-concept classifiers.
    concepts: tuple[str, ...] = ()
    #: Out-of-distribution detection: this row scores the model's energy on its test images against this
    #: set's (a dataset, or "interpolation"; cdrl.ood) instead of sampling; n_samples images of each.
    ood: str | None = None

    def samples(self, profile: "Profile") -> int:
        return min(profile.n_samples, self.n_samples or profile.n_samples)

    @property
    def checkpoint_path(self) -> Path | None:
        if self.checkpoint is None:
            return None
        path = Path(self.checkpoint)
        return path if path.is_absolute() else results_path(path)


@dataclass(frozen=True)
class PlotSpec:
    #: Measured metric on the y axis.
    metric: str
    #: Reference CSV column: on the same axes when it measures the same thing, else in a panel of its own.
    paper: str | None = None
    #: x axis: total Langevin steps (levels x steps per level) or the guidance weight.
    x: Literal["total_steps", "guidance"] = "total_steps"
    #: A second measured metric, in a panel of its own (and, against the guidance weight, the other
    #: side of the trade-off curve, e.g. class accuracy against FID).
    secondary: str | None = None


@dataclass(frozen=True)
class CostSpec:
    """``[cost]``: what one training iteration of the suite's models costs, as stated in the suite file.

    ``cdrl-bench plan`` turns it into GPU-hours when no finished training run measured it.
    """

    #: Wall seconds per training iteration on ``gpus`` GPUs, each training its share of the global
    #: batch; None: not stated (a model may still state its own).
    seconds_per_iteration: float | None = field(default=None, metadata=above(0))
    #: GPUs (one process each) per training that the seconds are for; for a CPU suite, processes.
    gpus: int = field(default=1, metadata=at_least(1))
    #: The GPU the seconds are for, e.g. "H100 SXM"; a CPU suite's starts with "CPU" (its costs are then
    #: CPU-hours of one-thread processes, not GPU-hours).
    device: str = ""
    #: Where the seconds come from, briefly (e.g. "FLOP-count estimate"); printed beside every number.
    basis: str = ""

    @property
    def on_cpu(self) -> bool:
        return self.device.lower().startswith("cpu")


@dataclass(frozen=True)
class CheckSpec:
    """How ``cdrl-bench check`` judges a suite (its ``[check]`` section; benchmarks/regression.py)."""

    #: A metric fails when worse than the baseline's mean by more than k standard errors of the
    #: difference of means (seed-to-seed std measured in the baseline); on fixed inputs (stored
    #: models, data floors) also when better by as much.
    k: float = field(default=4.0, metadata=above(0))
    #: Smallest tolerance per metric, for metrics whose seed-to-seed std can be 0 (e.g. coverage).
    tolerance_floors: dict[str, float] = field(default_factory=dict)
    #: Also compare numerical fingerprints of the stored checkpoints (benchmarks.fingerprint): the
    #: largest relative drift allowed; None: no fingerprints.
    fingerprint_tolerance: float | None = field(default=None, metadata=above(0))
    #: Also compare the ruler's fingerprints (benchmarks.ruler: metrics and dataset pipelines on
    #: fixed inputs): the largest relative drift of any entry allowed; None: not compared.
    ruler_tolerance: float | None = field(default=None, metadata=above(0))
    #: Also compare the resolved config of every preset and shipped suite model (benchmarks.resolved_configs).
    configs: bool = False
    #: Seeds per point a baseline must hold: ``check --update`` refuses fewer.
    baseline_seeds: int = field(default=3, metadata=at_least(3))


@dataclass(frozen=True)
class TrainSection:
    """``[train]``: what every model trains unless it says otherwise."""

    #: The preset of every model without its own.
    preset: str | None = None
    #: Training overrides shared by every model.
    overrides: tuple[str, ...] = ()
    #: The global training batch of every model without its own (``training.batch_size``).
    global_batch: int | None = field(default=None, metadata=at_least(1))


@dataclass(frozen=True)
class EvalSection:
    """``[eval]``: how every model is scored."""

    backend: str = DEFAULT_BACKEND
    reference_split: Literal["train", "test"] = "train"
    #: Samples drawn at once when scoring (None: cdrl.generation's default).
    batch_size: int | None = field(default=None, metadata=at_least(1))
    #: Which checkpoint of a training is scored: "best" (by the selection score) or "last".
    checkpoint: Literal["best", "last"] = "best"


@dataclass(frozen=True)
class Suite:
    """A read and validated suite: the file's sections as written, its models and profiles resolved.

    Every field but ``path`` is a key of the file (benchmarks/suites/README.md); reading copies the
    file's sections over by name (benchmarks.suite.reading), so a new key is declared here once.
    """

    name: str
    version: int
    title: str
    path: Path
    experiment: str
    models: tuple[ModelSpec, ...]
    metrics: tuple[str, ...]
    profiles: dict[str, Profile]
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    #: CSV of results/paper/ with the paper's numbers; None: no paper column.
    reference: str | None = None
    #: Heading of the paper columns (e.g. "paper CIFAR-10" for a CPU-scale trend study).
    reference_label: str = "paper"
    #: Also list the reference rows no model matches (the rest of the paper's table).
    context_rows: bool = False
    plot: PlotSpec | None = None
    check: CheckSpec = CheckSpec()
    notes: str = ""
    #: Stated cost of a training iteration, for ``cdrl-bench plan``'s GPU-hours.
    cost: CostSpec = CostSpec()

    @property
    def reference_path(self) -> Path | None:
        return PAPER_FOLDER / self.reference if self.reference else None
