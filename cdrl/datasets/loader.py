"""Infinite, seeded, DDP-aware, resumable batches of any dataset (what training iterates)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

from cdrl.datasets.common import TensorPairDataset
from cdrl.datasets.config import DatasetError


def batches_per_epoch(dataset_size: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches one rank draws per epoch (DistributedSampler and batching both drop the remainder)."""
    return (dataset_size // world_size) // batch_size


def _batch_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(parts).generate_state(1)[0])


class _ResumableBatches(Sampler):
    """One rank's endless batches, epoch after epoch from ``start_iteration``, each tagged with its own seed."""

    def __init__(self, sampler: DistributedSampler, batch_size: int, seed: int, rank: int, start_iteration: int) -> None:
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.start_iteration = start_iteration

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        per_epoch = len(self.sampler) // self.batch_size
        epoch, first_batch = divmod(self.start_iteration, per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for batch in range(first_batch, per_epoch):
                start = batch * self.batch_size
                yield _batch_seed(self.seed, self.rank, epoch, batch), indices[start : start + self.batch_size]
            epoch, first_batch = epoch + 1, 0


class _BatchFetch(Dataset):
    """Fetches and collates one tagged batch.

    Items with random transforms (the flips) are drawn with the global torch RNG
    seeded from the batch's tag, so they depend only on (seed, rank, epoch,
    batch), not on worker count or on how many batches were drawn before, and
    the caller's own RNG stream is left untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    # DataLoader calls __getitems__ with whatever the batch sampler yields.
    def __getitems__(self, tagged_batch: tuple[int, list[int]]) -> tuple[Tensor, Tensor]:
        batch_seed, indices = tagged_batch
        if isinstance(self.dataset, TensorPairDataset):  # no random transforms
            return self.dataset.take(indices)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed)
            x, labels = default_collate([self.dataset[index] for index in indices])
        return x, labels


def _collated(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch


def infinite_batches(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_iteration: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless ``(x, labels)`` batches of ``batch_size`` items for one DDP rank.

    Epoch ``e`` shuffles with ``DistributedSampler(seed=seed).set_epoch(e)`` and
    drops incomplete batches, so every epoch has
    ``P = batches_per_epoch(len(dataset), batch_size, world_size)`` batches per
    rank. Resuming: pass the number of batches this rank has already consumed
    as ``start_iteration = i``; the stream restarts at epoch ``i // P``, batch
    ``i % P`` and yields exactly the batches (indices and flips) the uninterrupted
    stream would have yielded next, for the same seed, rank, world_size and
    batch_size, whatever ``num_workers`` is.
    """
    if not 0 <= rank < world_size:
        raise DatasetError(f"rank {rank} is outside world_size {world_size}")
    per_epoch = batches_per_epoch(len(dataset), batch_size, world_size)
    if per_epoch == 0:
        raise DatasetError(
            f"dataset of {len(dataset)} items gives no full batch of {batch_size} on each of {world_size} ranks: "
            f"lower the batch size"
        )
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    # One loader for the whole run: its workers live as long as the stream.
    loader = DataLoader(
        _BatchFetch(dataset),
        batch_sampler=_ResumableBatches(sampler, batch_size, seed, rank, start_iteration),
        collate_fn=_collated,  # _BatchFetch already collates
        num_workers=num_workers,
        pin_memory=pin_memory,
        # Workers' base seed comes from here instead of the global RNG (flips are seeded per batch anyway).
        generator=torch.Generator().manual_seed(_batch_seed(seed, rank)),
    )
    # Not a generator function, so the checks above raise at the call; pin_memory turns tuples into lists.
    return ((x, labels) for x, labels in loader)
