"""The one way to draw samples: a :class:`GenerationSpec` resolved once, and :func:`generate`.

Training snapshots, checkpoint selection, scoring, ``cdrl-bench sample``, ``perf`` and the
suites all describe what they draw with a spec (steps per level and the step-size multiplier
they imply, guidance, classes, EMA or live weights, seed, batch) and call :func:`generate`.

Sample i always uses the noise stream seeded by (seed, i), so a set of samples does not
depend on the batch size, the number of GPUs or which rank drew it. Under torchrun each
rank draws indices rank, rank + W, ... and :func:`generate` gathers them in index order.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.distributed as dist

from cdrl.checkpoint import LoadedModel, build_guided_model
from cdrl.config import ExperimentConfig, apply_overrides
from cdrl.datasets import item_shape
from cdrl.distributed import Ranks, current_ranks
from cdrl.errors import CdrlBenchError
from cdrl.files import atomic_write, writing
from cdrl.guidance import composed_classes, requested_classes
from cdrl.langevin import multiplier_for_steps
from cdrl.noise import PerExampleNoise
from cdrl.performance import ChainEnergy, compile_initializer, configure_device, prepare_network
from cdrl.progress import stage
from cdrl.sampler import SamplerConfig, sample
from cdrl.schedule import LogSNRSchedule
from cdrl.training import CooperativeTrainer

#: Samples drawn at once unless a spec says otherwise: bounds memory, not the result.
DEFAULT_SAMPLE_BATCH = 256


@dataclass(frozen=True)
class GenerationSpec:
    """Everything that decides a set of samples besides the weights; build it with :meth:`resolve`."""

    n_samples: int
    #: The sampler's options: the model's, with the ``sampler.*`` overrides of this spec and its
    #: steps per level resolved (never None).
    sampler: SamplerConfig
    seed: int = 0
    batch_size: int = DEFAULT_SAMPLE_BATCH
    #: Classifier-free guidance scale w (conditional models).
    guidance: float = 0.0
    #: One dataset class, several to compose, or None: sample i of class i mod (number of classes).
    classes: int | tuple[int, ...] | None = None
    weights: Literal["ema", "live"] = "ema"
    #: Attribute composition: groups of classes (a concept's values each); sample i composes one class of each
    #: group (:func:`cdrl.guidance.composed_classes`). Excludes ``classes``.
    concepts: tuple[tuple[int, ...], ...] | None = None

    @classmethod
    def resolve(cls, config: ExperimentConfig, n_samples: int, *, steps_per_level: int | None = None,
                seed: int = 0, batch_size: int | None = None, guidance: float = 0.0,
                classes: int | tuple[int, ...] | None = None, weights: Literal["ema", "live"] = "ema",
                sampler_overrides: Sequence[str] = (),
                concepts: tuple[tuple[int, ...], ...] | None = None) -> GenerationSpec:
        """The spec of a model with ``config``: steps default to the sampler's, else training's count.

        ``sampler_overrides`` (``sampler.tweedie_step=false`` ...) change how a trained model samples;
        a new SamplerConfig field is settable here with no other change.
        """
        batch_size = DEFAULT_SAMPLE_BATCH if batch_size is None else batch_size
        if n_samples < 1:
            raise CdrlBenchError(f"cannot draw {n_samples} samples: ask for at least one (--n / --n-samples)")
        if batch_size < 1:
            raise CdrlBenchError(f"batch size {batch_size} is not positive: pass --batch-size 1 or more")
        if steps_per_level is not None and steps_per_level < 1:
            raise CdrlBenchError(f"{steps_per_level} Langevin steps per level: pass --steps 1 or more")
        if concepts is not None and classes is not None:
            raise CdrlBenchError("a composition of concepts draws its own classes: pass concepts or a class, not both")
        if config.energy.num_classes is None and (guidance or classes is not None or concepts is not None):
            raise CdrlBenchError("--guidance/--class need a class-conditional checkpoint (e.g. preset imagenet32-cond)")
        outside = [item for item in sampler_overrides if not item.startswith("sampler.")]
        if outside:
            raise CdrlBenchError(f"{outside[0]}: only sampler.* settings change how a trained model samples "
                                 "(e.g. --set sampler.tweedie_step=false)")
        sampler = apply_overrides(config, list(sampler_overrides)).sampler
        steps = sampler.steps(config.langevin, steps_per_level)
        return cls(n_samples, replace(sampler, steps_per_level=steps), seed, batch_size, guidance, classes, weights,
                   concepts)

    @property
    def steps_per_level(self) -> int:
        return self.sampler.steps_per_level

    def protocol(self, config: ExperimentConfig) -> dict[str, Any]:
        """How these samples were drawn, for MLflow parameters and sample metadata."""
        if self.concepts is not None:  # each sample one class of each group
            classes = " x ".join("|".join(map(str, group)) for group in self.concepts)
        elif self.classes is None:
            classes = "all"
        elif isinstance(self.classes, tuple):
            classes = "+".join(map(str, self.classes))  # a composition
        else:
            classes = self.classes
        options = {f"sampler.{name}": value for name, value in asdict(self.sampler).items()
                   if name != "steps_per_level"}
        return {"steps_per_level": self.steps_per_level, "noise_levels": config.schedule.n_levels,
                "step_multiplier": multiplier_for_steps(self.steps_per_level, config.langevin), "seed": self.seed,
                "weights": self.weights, "guidance": self.guidance, "class_label": classes, **options}


def example_seed(seed: int, index: int) -> int:
    """The noise seed of sample ``index`` in a run seeded by ``seed``.

    torch's CPU generator keeps only the low 32 bits of a seed, so seeds are 32-bit: a hashed
    per-run offset plus the index, distinct for every sample of a run (no birthday collisions).
    """
    offset = int(np.random.SeedSequence(seed).generate_state(1)[0])
    return (offset + index) % 2**32


@contextlib.contextmanager
def ema_model(trainer: CooperativeTrainer) -> Iterator[LoadedModel]:
    """A training run's EMA networks as a model to :func:`generate` from; the live weights come back after."""
    with trainer.ema_networks():
        yield LoadedModel(trainer.config, trainer.ebm, trainer.initializer, trainer.iteration, uses_ema=True)


def _gather_by_index(local: torch.Tensor, total: int, ranks: Ranks) -> torch.Tensor:
    """All-gather the strided shards of every rank and put the samples back in index order."""
    per_rank = (total + ranks.world_size - 1) // ranks.world_size
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    shards = [torch.empty_like(padded) for _ in range(ranks.world_size)]
    dist.all_gather(shards, padded)
    ordered = torch.stack(shards, dim=1).reshape(per_rank * ranks.world_size, *local.shape[1:])
    return ordered[:total]


def _networks_for(model: LoadedModel, spec: GenerationSpec, chain_energy: Callable[..., torch.Tensor],
                  indices: torch.Tensor):
    """(energy, proposal) of one batch: the model's own, or guided towards the batch's class(es)."""
    if model.config.energy.num_classes is None:
        return chain_energy, model.initializer
    if spec.concepts is not None:
        classes = composed_classes(indices, spec.concepts)
    elif isinstance(spec.classes, tuple):
        classes = list(spec.classes)
    else:
        classes = requested_classes(indices, spec.classes, model.config)
    return build_guided_model(model, spec.guidance, classes, ebm=chain_energy)


@torch.no_grad()
def generate(model: LoadedModel, spec: GenerationSpec, *, device: torch.device | str = "cpu",
             ranks: Ranks | None = None, chain: ChainEnergy | None = None) -> torch.Tensor:
    """``spec.n_samples`` samples (float, on the CPU) of ``model``, in index order.

    ``ranks``: the processes that share the work (default: the running process group; pass
    ``Ranks(0, 1)`` to draw everything on a rank that samples alone). Every rank gets all
    samples. ``chain``: the energy network wrapped with the run's speed options, when the caller
    keeps one (a training run: compiled once); built here otherwise. The running command's display
    is told of the samples drawn on this rank (:func:`cdrl.progress.stage`).
    """
    ranks = ranks or current_ranks()
    config = model.config
    schedule = LogSNRSchedule(config.schedule)
    shape = item_shape(config.data)
    indices = torch.arange(ranks.rank, spec.n_samples, ranks.world_size)
    device = torch.device(device)
    configure_device(config.performance, device)
    for network in (model.ebm, model.initializer):
        if network is not None:
            prepare_network(network, config.performance)
    if model.initializer is not None:
        compile_initializer(model.initializer, config.performance)
    pieces = []
    # The weights are fixed for the whole run: spectral norms computed once, not at every step.
    with (chain or ChainEnergy(model.ebm, config.performance, device)).frozen() as chain_energy, \
            stage(f"sampling {config.schedule.n_levels}x{spec.steps_per_level}", len(indices)) as shown:
        for start in range(0, len(indices), spec.batch_size):
            batch_indices = indices[start:start + spec.batch_size]
            energy, proposal = _networks_for(model, spec, chain_energy, batch_indices)
            noise = PerExampleNoise([example_seed(spec.seed, int(i)) for i in batch_indices], device=device)
            pieces.append(sample(energy, proposal, (len(batch_indices), *shape), schedule, config.langevin,
                                 spec.sampler, noise=noise, device=device).cpu())
            shown(len(batch_indices))
    local = torch.cat(pieces) if pieces else torch.empty((0, *shape))
    if ranks.world_size == 1:
        return local
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return _gather_by_index(local.to(backend_device), spec.n_samples, ranks).cpu()


def check_sample_output(out: str | Path, is_image: bool) -> None:
    """Refuse an output the samples cannot go to (2-D points into a folder of PNGs), before drawing them."""
    out = Path(out)
    if not is_image and out.suffix != ".npz":
        raise CdrlBenchError(f"2-D toy samples are points, not images: pass --out {out.with_suffix('.npz')}")


def save_samples(samples: torch.Tensor, out: str | Path, is_image: bool, metadata: dict) -> Path:
    """Write samples losslessly: a folder of PNGs (``000000.png`` ...) or one ``.npz``.

    Images are quantised with :func:`cdrl.evaluation.to_uint8` (the same pixels FID sees);
    2-D toy points are kept as float. ``metadata`` (checkpoint, steps, seed...) goes beside
    the samples as ``samples.json`` / inside the npz.
    """
    from PIL import Image

    from cdrl.evaluation import to_uint8

    out = Path(out)
    if out.suffix == ".npz":
        arrays = ({"images": to_uint8(samples).permute(0, 2, 3, 1).numpy()} if is_image
                  else {"points": samples.numpy()})
        return atomic_write(out, lambda stream: np.savez(stream, **arrays, metadata=json.dumps(metadata)))
    check_sample_output(out, is_image)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        pixels = to_uint8(samples).permute(0, 2, 3, 1).numpy()
        for index, image in enumerate(pixels):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out / f"{index:06d}.png")
        (out / "samples.json").write_text(json.dumps(metadata, indent=2))
    return out
