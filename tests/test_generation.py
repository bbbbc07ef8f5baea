"""Sample generation: per-example seeds, batch-size and rank-count independence, toy metrics."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cdrl.checkpoint import load_model, make_checkpoint, save_atomic
from cdrl.config import apply_overrides, preset
from cdrl.data import toy_sample
from cdrl.generation import generate
from cdrl.toy_metrics import toy_metrics
from cdrl.training import CooperativeTrainer


def tiny_checkpoint(path) -> str:
    """An untrained tiny model, its spectral norms converged so that eval-mode energies are sane."""
    config = apply_overrides(preset("tiny"), ["sampler.steps_per_level=2"])
    torch.manual_seed(0)
    trainer = CooperativeTrainer(config)
    with torch.no_grad():
        for _ in range(30):  # power iterations run in train mode only
            trainer.ebm(torch.zeros(1, 1, 8, 8), torch.zeros(1))
    return str(save_atomic(make_checkpoint(config, trainer.state_dict()), path))


def test_samples_do_not_depend_on_batch_size(tmp_path):
    model = load_model(tiny_checkpoint(tmp_path / "tiny.pt"))
    one_batch = generate(model, 5, seed=3, batch_size=5)
    small_batches = generate(model, 5, seed=3, batch_size=2)
    assert one_batch.shape == (5, 1, 8, 8)
    torch.testing.assert_close(one_batch, small_batches, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(one_batch, generate(model, 5, seed=4, batch_size=5))


def _generate_on_rank(rank: int, world_size: int, checkpoint: str, port: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        samples = generate(load_model(checkpoint), 5, seed=3, batch_size=2)
        if rank == 0:
            torch.save(samples, out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_the_same_samples_in_index_order(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    out = str(tmp_path / "gathered.pt")
    port = str(29500 + os.getpid() % 1000)
    mp.spawn(_generate_on_rank, args=(2, checkpoint, port, out), nprocs=2, join=True)
    single = generate(load_model(checkpoint), 5, seed=3, batch_size=5)
    torch.testing.assert_close(torch.load(out), single, rtol=1e-5, atol=1e-5)


def test_toy_metrics_tell_data_from_noise():
    data, _ = toy_sample("toy-checkerboard", 2000, torch.Generator().manual_seed(1))
    exact = toy_metrics("toy-checkerboard", data)
    noise = toy_metrics("toy-checkerboard", torch.randn(2000, 2) * 4)
    assert exact["in_support_fraction"] == 1.0 and exact["mode_coverage"] == 1.0
    assert noise["in_support_fraction"] < 0.6
    assert exact["energy_distance"] < 0.2 * noise["energy_distance"]
