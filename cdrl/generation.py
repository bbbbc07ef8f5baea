"""Draw many samples from a trained model: batched, per-example seeds, sharded across ranks.

Sample i always uses the noise stream seeded by (seed, i), so a set of samples does not
depend on the batch size, the number of GPUs or which rank drew it. Under torchrun each
rank draws indices rank, rank + W, ... and :func:`generate` gathers them in index order.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from cdrl.checkpoint import LoadedModel
from cdrl.data import item_shape
from cdrl.errors import CdrlBenchError
from cdrl.guidance import ConditionalNetwork
from cdrl.langevin import EnergyFn
from cdrl.noise import PerExampleNoise
from cdrl.performance import ChainEnergy, configure_device, prepare_network
from cdrl.sampler import ProposalFn, sample
from cdrl.schedule import LogSNRSchedule


def example_seed(seed: int, index: int) -> int:
    """The noise seed of sample ``index`` in a run seeded by ``seed``.

    torch's CPU generator keeps only the low 32 bits of a seed, so seeds are 32-bit: a hashed
    per-run offset plus the index, distinct for every sample of a run (no birthday collisions).
    """
    offset = int(np.random.SeedSequence(seed).generate_state(1)[0])
    return (offset + index) % 2**32


def _gather_by_index(local: torch.Tensor, total: int, rank: int, world_size: int) -> torch.Tensor:
    """All-gather the strided shards of every rank and put the samples back in index order."""
    per_rank = (total + world_size - 1) // world_size
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    shards = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(shards, padded)
    ordered = torch.stack(shards, dim=1).reshape(per_rank * world_size, *local.shape[1:])
    return ordered[:total]


@torch.no_grad()
def generate(model: LoadedModel, n_samples: int, *, steps_per_level: int | None = None, seed: int = 0,
             batch_size: int = 256, device: torch.device | str = "cpu",
             callables: Callable[[torch.Tensor, ConditionalNetwork], tuple[EnergyFn, ProposalFn | None]] | None = None,
             progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """``n_samples`` samples (float, on the CPU) of a loaded model, in index order.

    ``callables(indices, chain_energy)`` may supply (energy, proposal) per batch, e.g. guided
    ones for a class, built on ``chain_energy(y, logsnr, labels)``, the energy network with
    the run's speed options; by default the model's own networks are used. ``progress(k)`` is told of every
    ``k`` samples drawn on this rank.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    config = model.config
    sampler_config = replace(config.sampler, steps_per_level=config.sampler.steps(config.langevin, steps_per_level))
    schedule = LogSNRSchedule(config.schedule)
    shape = item_shape(config.data)
    indices = torch.arange(rank, n_samples, world_size)
    device = torch.device(device)
    configure_device(config.performance, device)
    for network in (model.ebm, model.initializer):
        if network is not None:
            prepare_network(network, config.performance)
    pieces = []
    # The weights are fixed for the whole run: spectral norms computed once, not at every step.
    with ChainEnergy(model.ebm, config.performance, device).frozen() as chain_energy:
        for start in range(0, len(indices), batch_size):
            batch_indices = indices[start:start + batch_size]
            energy, proposal = (callables(batch_indices, chain_energy) if callables
                                else (chain_energy, model.initializer))
            noise = PerExampleNoise([example_seed(seed, int(i)) for i in batch_indices], device=device)
            pieces.append(sample(energy, proposal, (len(batch_indices), *shape), schedule, config.langevin,
                                 sampler_config, noise=noise, device=device).cpu())
            if progress is not None:
                progress(len(batch_indices))
    local = torch.cat(pieces) if pieces else torch.empty((0, *shape))
    if world_size == 1:
        return local
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return _gather_by_index(local.to(backend_device), n_samples, rank, world_size).cpu()


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
        out.parent.mkdir(parents=True, exist_ok=True)
        arrays = ({"images": to_uint8(samples).permute(0, 2, 3, 1).numpy()} if is_image
                  else {"points": samples.numpy()})
        np.savez(out, **arrays, metadata=json.dumps(metadata))
        return out
    if not is_image:
        raise CdrlBenchError(f"2-D toy samples are points, not images: pass --out {out}.npz")
    out.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(samples).permute(0, 2, 3, 1).numpy()
    for index, image in enumerate(pixels):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out / f"{index:06d}.png")
    (out / "samples.json").write_text(json.dumps(metadata, indent=2))
    return out
