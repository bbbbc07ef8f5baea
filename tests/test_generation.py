"""Sample generation: per-example seeds, batch-size and rank-count independence, toy metrics."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cdrl.checkpoint import load_model
from cdrl.data import toy_sample
from cdrl.generation import generate
from cdrl.toy_metrics import toy_metrics


# A trained model (the regression gate's 2-D CDRL): its chains contract, so rounding stays rounding.
TRAINED = str(Path(__file__).resolve().parent.parent / "results" / "gate" / "toy-cdrl.pt")


def test_samples_do_not_depend_on_batch_size():
    model = load_model(TRAINED)
    one_batch = generate(model, 5, steps_per_level=3, seed=3, batch_size=5)
    small_batches = generate(model, 5, steps_per_level=3, seed=3, batch_size=2)
    assert one_batch.shape == (5, 2)
    torch.testing.assert_close(one_batch, small_batches, rtol=0, atol=1e-4)
    assert not torch.allclose(one_batch, generate(model, 5, steps_per_level=3, seed=4, batch_size=5))


def _generate_on_rank(rank: int, world_size: int, checkpoint: str, port: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        samples = generate(load_model(checkpoint), 5, steps_per_level=3, seed=3, batch_size=2)
        if rank == 0:
            torch.save(samples, out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_the_same_samples_in_index_order(tmp_path):
    out = str(tmp_path / "gathered.pt")
    port = str(29500 + os.getpid() % 1000)
    mp.spawn(_generate_on_rank, args=(2, TRAINED, port, out), nprocs=2, join=True)
    single = generate(load_model(TRAINED), 5, steps_per_level=3, seed=3, batch_size=5)
    torch.testing.assert_close(torch.load(out), single, rtol=0, atol=1e-4)


def test_toy_metrics_tell_data_from_noise():
    data, _ = toy_sample("toy-checkerboard", 2000, torch.Generator().manual_seed(1))
    exact = toy_metrics("toy-checkerboard", data)
    noise = toy_metrics("toy-checkerboard", torch.randn(2000, 2) * 4)
    assert exact["in_support_fraction"] == 1.0 and exact["mode_coverage"] == 1.0
    assert noise["in_support_fraction"] < 0.6
    assert exact["energy_distance"] < 0.2 * noise["energy_distance"]
