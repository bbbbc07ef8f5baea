"""Sample generation: the spec resolved once, per-example seeds, batch-size and rank-count independence, toy metrics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cdrl.checkpoint import load_model
from cdrl.datasets import toy_sample
from cdrl.config import preset
from cdrl.errors import CdrlBenchError
from cdrl.generation import GenerationSpec, generate
from cdrl.toy_metrics import toy_metrics


# A trained model (the regression gate's 2-D CDRL): its chains contract, so rounding stays rounding.
TRAINED = str(Path(__file__).resolve().parent.parent / "results" / "gate" / "toy-cdrl.pt")


def draw(model, seed: int = 3, batch_size: int = 5) -> torch.Tensor:
    return generate(model, GenerationSpec.resolve(model.config, 5, steps_per_level=3, seed=seed, batch_size=batch_size))


def test_the_spec_resolves_steps_and_their_step_multiplier_once():
    config = preset("cifar10")
    assert config.langevin.n_steps == 15 and config.sampler.steps_per_level is None
    default = GenerationSpec.resolve(config, 10)
    assert (default.steps_per_level, default.protocol(config)["step_multiplier"]) == (
        15, config.langevin.step_multiplier)
    fewer = GenerationSpec.resolve(config, 10, steps_per_level=3)
    protocol = fewer.protocol(config)
    assert fewer.steps_per_level == 3
    assert protocol["step_multiplier"] == pytest.approx(5 ** 0.5 * config.langevin.step_multiplier)
    assert (protocol["noise_levels"], protocol["steps_per_level"], protocol["class_label"]) == (6, 3, "all")
    composed = GenerationSpec.resolve(preset("digits-cond"), 4, classes=(1, 7))
    assert composed.protocol(preset("digits-cond"))["class_label"] == "1+7"
    with pytest.raises(CdrlBenchError, match="class-conditional"):
        GenerationSpec.resolve(config, 10, guidance=1.0)
    with pytest.raises(CdrlBenchError, match="at least one"):
        GenerationSpec.resolve(config, 0)


def test_sampler_options_are_set_through_the_spec_and_recorded():
    model = load_model(TRAINED)
    quiet = GenerationSpec.resolve(model.config, 5, steps_per_level=3, seed=3,
                                   sampler_overrides=["sampler.langevin_noise_scale=0"])
    assert quiet.sampler.langevin_noise_scale == 0 and quiet.protocol(model.config)["sampler.langevin_noise_scale"] == 0
    assert draw(model).shape == generate(model, quiet).shape
    assert not torch.allclose(draw(model), generate(model, quiet))
    with pytest.raises(CdrlBenchError, match="only sampler.. settings"):
        GenerationSpec.resolve(model.config, 5, sampler_overrides=["training.ebm_lr=1"])


def test_samples_do_not_depend_on_batch_size():
    model = load_model(TRAINED)
    one_batch = draw(model)
    assert one_batch.shape == (5, 2)
    torch.testing.assert_close(one_batch, draw(model, batch_size=2), rtol=0, atol=1e-4)
    assert not torch.allclose(one_batch, draw(model, seed=4))


def _generate_on_rank(rank: int, world_size: int, checkpoint: str, port: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        samples = draw(load_model(checkpoint), batch_size=2)
        if rank == 0:
            torch.save(samples, out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_the_same_samples_in_index_order(tmp_path, free_port):
    out = str(tmp_path / "gathered.pt")
    mp.spawn(_generate_on_rank, args=(2, TRAINED, str(free_port), out), nprocs=2, join=True)
    single = draw(load_model(TRAINED))
    torch.testing.assert_close(torch.load(out), single, rtol=0, atol=1e-4)


def test_toy_metrics_tell_data_from_noise():
    data, _ = toy_sample("toy-checkerboard", 2000, torch.Generator().manual_seed(1))
    exact = toy_metrics("toy-checkerboard", data)
    noise = toy_metrics("toy-checkerboard", torch.randn(2000, 2) * 4)
    assert exact["in_support_fraction"] == 1.0 and exact["mode_coverage"] == 1.0
    assert noise["in_support_fraction"] < 0.6
    assert exact["energy_distance"] < 0.2 * noise["energy_distance"]


def test_the_readmes_python_example_runs(monkeypatch, capsys):
    """README, "From Python": the block runs as printed, from the checkout (a renamed function turns it red)."""
    repository = Path(__file__).resolve().parents[1]
    readme = (repository / "README.md").read_text()
    section = readme[readme.index("**From Python**"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    code = code[:code.index("```")]
    monkeypatch.chdir(repository)
    exec(compile(code, "README.md (From Python)", "exec"), {})
    assert "in-support" in capsys.readouterr().out
