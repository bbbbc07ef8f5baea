"""Processes of a training run: which rank this is, the process group torchrun asks for, and the
few collectives the training loop needs (everything else goes through DDP).

Only rank 0 logs and writes; every rank draws its own batches and noise from ``rank_seed``.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from cdrl.errors import CdrlBenchError


COLLECTIVE_TIMEOUT_ENV_VAR = "CDRL_BENCH_COLLECTIVE_TIMEOUT_MINUTES"
"""How long a rank waits in a collective for the others, in minutes (default ``DEFAULT_COLLECTIVE_TIMEOUT``)."""
# Rank 0 alone scores while the other ranks wait in their next collective: a first 50k-image
# reference and 50k samples through the Inception on CPU take hours, far over torch's defaults
# (10 min NCCL, 30 min Gloo). A rank that dies still ends the job at once: torchrun, SLURM and
# Ray stop the whole group, so the long wait only delays the report of a true deadlock.
DEFAULT_COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)


def collective_timeout() -> datetime.timedelta:
    """The process group's timeout: ``$CDRL_BENCH_COLLECTIVE_TIMEOUT_MINUTES`` or six hours."""
    value = os.environ.get(COLLECTIVE_TIMEOUT_ENV_VAR, "").strip()
    if not value:
        return DEFAULT_COLLECTIVE_TIMEOUT
    try:
        minutes = float(value)
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes > 0):
        raise CdrlBenchError(f"{COLLECTIVE_TIMEOUT_ENV_VAR}={value!r} is not a number of minutes: set it to a "
                             f"positive number, e.g. 720 for 12 hours, or unset it for "
                             f"{DEFAULT_COLLECTIVE_TIMEOUT.total_seconds() / 3600:g} hours")
    return datetime.timedelta(minutes=minutes)


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_ranks() -> Ranks:
    """This process's place in the running process group; a lone process outside one."""
    if dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks(0, 1)


def rank_seed(seed: int, rank: int) -> int:
    """A seed of its own for each (seed, rank) pair."""
    return int(np.random.SeedSequence((seed, rank)).generate_state(1)[0])


def _launcher_count(name: str, default: int, minimum: int) -> int:
    """An integer that torchrun (or an executor) sets, e.g. WORLD_SIZE; one line naming it when it is not one."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise CdrlBenchError(f"{name}={value!r} is not an integer of at least {minimum}: torchrun sets it; unset it "
                             "to run one process")
    return number


def launched_world_size() -> int:
    """How many processes share this job: the running process group's, else what torchrun (or an executor
    that sets its variables) started, 1 without either; known before the process group exists."""
    if dist.is_initialized():
        return dist.get_world_size()
    return _launcher_count("WORLD_SIZE", 1, 1)


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK, 0 without it): the GPU it takes."""
    return _launcher_count("LOCAL_RANK", 0, 0)


def checked_device(name: str | torch.device | None) -> torch.device | None:
    """The device ``name`` names, refused unless it exists on this machine; None stays None (the default)."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CdrlBenchError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CdrlBenchError(f"--device {name}: this machine has no CUDA device; use --device cpu")
        if device.index is not None and device.index >= count:
            raise CdrlBenchError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to "
                                 f"cuda:{count - 1}")
    elif device.type != "cpu":
        raise CdrlBenchError(f"--device {name}: cdrl-bench runs on cpu or cuda[:N]")
    return device


def init_distributed(device: str | torch.device | None) -> tuple[Ranks, torch.device, bool]:
    """(ranks, this process's device, whether this call started the process group) from torchrun's variables."""
    world_size = launched_world_size()
    index = local_rank()
    device = checked_device(device) or torch.device(f"cuda:{index}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", index)
    if world_size == 1:
        return Ranks(0, 1), device, False
    started = False
    if not dist.is_initialized():
        timeout = collective_timeout()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        started = True
    return Ranks(dist.get_rank(), dist.get_world_size()), device, started


@contextlib.contextmanager
def process_group(device: str | torch.device | None) -> Iterator[tuple[Ranks, torch.device]]:
    """(ranks, this process's device) for a whole command: the process group lives as long as the block.

    Commands that train, sample and score in turn (``run --suite``, ``eval``, ``sample``) open it
    once, so that every step below reuses one group instead of each starting and ending its own.
    """
    ranks, device, started = init_distributed(device)
    try:
        yield ranks, device
    except RuntimeError as error:
        # Gloo's own words for a collective that outwaited the timeout (NCCL's watchdog ends the process itself).
        if ranks.world_size > 1 and "Timed out waiting" in str(error):
            raise CdrlBenchError(
                f"rank {ranks.rank} waited {_minutes(collective_timeout())} for the other ranks and gave up: if rank 0 "
                f"was still scoring, set {COLLECTIVE_TIMEOUT_ENV_VAR} higher; otherwise look in the log of the "
                "rank that did not arrive") from error
        raise
    finally:
        if started:
            dist.destroy_process_group()


def _minutes(timeout: datetime.timedelta) -> str:
    minutes = timeout.total_seconds() / 60
    return f"{minutes:g} minutes" if minutes < 120 else f"{minutes / 60:g} hours"


def shared(value: Any, ranks: Ranks) -> Any:
    """Rank 0's value on every rank."""
    if ranks.world_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gathered(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's value, in rank order, on every rank."""
    if ranks.world_size == 1:
        return [value]
    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def largest_on_any_rank(value: torch.Tensor, ranks: Ranks) -> float:
    """The largest of every rank's scalar ``value`` (NaN when any rank's is NaN), the same on every rank."""
    if ranks.world_size > 1:
        # A MAX reduction need not propagate NaN: it travels as a flag beside the value.
        pair = torch.stack([value.isnan().to(value.dtype), torch.nan_to_num(value, nan=0.0, posinf=math.inf)])
        dist.all_reduce(pair, op=dist.ReduceOp.MAX)
        return math.nan if pair[0] else float(pair[1])
    return float(value)
