"""Sources of Gaussian noise for samplers and Langevin chains.

:class:`PerExampleNoise` gives every example its own generator, seeded from its global
index, so a sample does not depend on the batch size, the batch it lands in or the number
of GPUs; :class:`GeneratorNoise` draws whole batches from one generator (fast, for training).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch


class NoiseSource(Protocol):
    def randn_like(self, reference: torch.Tensor) -> torch.Tensor: ...


class GeneratorNoise:
    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def randn_like(self, reference: torch.Tensor) -> torch.Tensor:
        return torch.randn(reference.shape, generator=self.generator, device=reference.device, dtype=reference.dtype)


class PerExampleNoise:
    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]

    def randn_like(self, reference: torch.Tensor) -> torch.Tensor:
        if reference.shape[0] != len(self.generators):
            raise ValueError(f"batch of {reference.shape[0]} examples but {len(self.generators)} noise seeds")
        # Each row drawn straight into its slot (no list, no stack copy): the same numbers as a
        # fresh randn per generator, since every row is a contiguous block of the same size.
        out = torch.empty(reference.shape, device=reference.device, dtype=reference.dtype)
        for row, generator in zip(out, self.generators):
            torch.randn(row.shape, generator=generator, out=row)
        return out
