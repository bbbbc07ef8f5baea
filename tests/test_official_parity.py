"""cdrl/ computes what the authors' published code computes (tests/fixtures/official-cdrl/).

Tolerance: max |ours - theirs| <= 1e-5 * max |theirs| (relative, float32). The fixtures must
be present: a missing file fails these tests, it never skips them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cdrl.checkpoint import CheckpointError, import_official_checkpoint, load_model, save_atomic
from cdrl.config import preset
from cdrl.langevin import langevin_revision
from cdrl.networks import EnergyNet, UNetInitializer, count_parameters
from cdrl.schedule import LogSNRSchedule, diffuse, posterior

# In the repository (README.md there: how they were made), so a plain clone runs these tests.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official-cdrl"
TOLERANCE = 1e-5


def _fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"fixture {path} is missing: it is part of the repository (git checkout it)")
    return path


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = TOLERANCE) -> None:
    error = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= tolerance * scale, f"max error {error:.3e} exceeds {tolerance:g} x {scale:.3e}"


@pytest.fixture(scope="module")
def vectors() -> dict:
    return torch.load(_fixture("official_small_uncond_vectors.pt"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def schedule() -> LogSNRSchedule:
    return LogSNRSchedule(preset("official-small").schedule)


@pytest.fixture(scope="module")
def levels(schedule):
    return schedule.level(torch.arange(1, 7))


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "official_small.pt"
    save_atomic(import_official_checkpoint(_fixture("official_small_uncond.pth.tar"), "official-small"), out)
    return out


def test_fixture_config_matches_the_preset():
    published = json.loads(_fixture("official_small_uncond_config.json").read_text())
    config = preset("official-small")
    assert (config.energy.width, list(config.energy.channel_mults), config.energy.blocks_per_level) == (
        published["ebm"]["temb_dim"], published["ebm"]["ch_mult"], published["ebm"]["n_blocks"])
    assert (config.initializer.width, list(config.initializer.channel_mults), config.initializer.blocks_per_level,
            sorted(config.initializer.attention_resolutions)) == (
        published["initializer"]["dim"], published["initializer"]["dim_mults"],
        published["initializer"]["num_res_blocks"], sorted(published["initializer"]["attn_resolutions"]))
    assert (config.schedule.n_levels, config.schedule.logsnr_min, config.schedule.logsnr_max) == (
        published["schedule"]["n_interval"], published["schedule"]["logsnr_min"], published["schedule"]["logsnr_max"])


def test_schedule_grid(vectors, schedule):
    times, logsnrs = schedule.grid()
    assert_relative(times, vectors["t_grid"])
    assert_relative(logsnrs, vectors["logsnr_grid"])


def test_level_logsnrs_and_final_flag(vectors, levels):
    assert_relative(levels.logsnr_t, vectors["logsnr_t"])
    assert_relative(levels.logsnr_s, vectors["logsnr_s"])
    assert torch.equal(levels.is_final, vectors["is_final"])


def test_forward_diffusion_with_shared_noise(vectors, levels):
    assert_relative(diffuse(vectors["x"], levels.logsnr_t, vectors["eps"]), vectors["xt"])
    assert_relative(diffuse(vectors["x"], levels.logsnr_s, vectors["eps"]), vectors["xs"])


def test_posterior(vectors, levels):
    reverse = posterior(vectors["x"], vectors["xt"], levels.logsnr_s, levels.logsnr_t)
    assert_relative(reverse.mean, vectors["reverse_mean"])
    assert_relative(reverse.var[:, :1, :1, :1], vectors["reverse_var"])
    assert_relative(reverse.std[:, :1, :1, :1], vectors["reverse_std"])


@pytest.mark.parametrize("use_ema, suffix", [(False, ""), (True, "_ema")])
def test_imported_networks(vectors, imported, use_ema, suffix):
    model = load_model(imported, use_ema=use_ema)
    with torch.no_grad():
        assert_relative(model.ebm(vectors["xs"], vectors["logsnr_s"]), vectors[f"energy_s{suffix}"])
        assert_relative(model.initializer(vectors["xt"], vectors["logsnr_t"]), vectors[f"initializer_out{suffix}"])


def test_live_and_ema_weights_differ(vectors):
    # Guards the EMA test above against comparing the same weights twice.
    assert (vectors["energy_s"] - vectors["energy_s_ema"]).abs().max() > 1e-4


@pytest.mark.parametrize("n_steps, expected", [(None, "langevin_k3_nonoise"),
                                               (3, "langevin_k3_nonoise_szmul_sqrt5")])
def test_langevin_revision(vectors, imported, levels, n_steps, expected):
    """Three noiseless steps as trained (m = 1), and with the sqrt(15/3) rule of fast sampling."""
    model = load_model(imported, use_ema=False)
    langevin = model.config.langevin
    if n_steps is None:
        revised = langevin_revision(model.ebm, vectors["initializer_out"], vectors["xt"], levels, langevin,
                                    model.config.schedule.logsnr_max, n_steps=3, step_multiplier=1.0,
                                    add_noise=False)
    else:
        revised = langevin_revision(model.ebm, vectors["initializer_out"], vectors["xt"], levels, langevin,
                                    model.config.schedule.logsnr_max, n_steps=n_steps, add_noise=False)
    assert_relative(revised, vectors[expected])


LAYOUTS = {
    "cifar10_uncond_ebm": ("cifar10", "energy"),
    "cifar10_uncond_initializer": ("cifar10", "initializer"),
    "imagenet32_cond_ebm": ("imagenet32-cond", "energy"),
    "imagenet32_cond_initializer": ("imagenet32-cond", "initializer"),
}


@pytest.fixture(scope="module")
def layouts() -> dict:
    return json.loads(_fixture("official_full_layouts.json").read_text())


@pytest.mark.parametrize("layout_name", LAYOUTS)
def test_paper_network_layouts_map_one_to_one(layouts, layout_name):
    preset_name, network = LAYOUTS[layout_name]
    config = preset(preset_name)
    module = EnergyNet(config.energy) if network == "energy" else UNetInitializer(config.initializer)
    reference = layouts[layout_name]
    assert [[name, list(t.shape)] for name, t in module.state_dict().items()] == reference["state_dict"]
    assert [[name, list(p.shape)] for name, p in module.named_parameters()] == reference["parameters"]
    assert count_parameters(module) == reference["n_parameters"]


def test_import_with_the_wrong_preset_names_the_mismatch():
    with pytest.raises(CheckpointError, match=r"does not fit preset 'cifar10': its energy network lacks module_list\.\d+.*pass the preset"):
        import_official_checkpoint(_fixture("official_small_uncond.pth.tar"), "cifar10")


def test_import_of_a_truncated_file_fails_cleanly(tmp_path):
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(_fixture("official_small_uncond.pth.tar").read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated"):
        import_official_checkpoint(truncated, "official-small")


def test_import_of_a_cdrl_bench_checkpoint_says_it_needs_none():
    ours = Path(__file__).resolve().parents[1] / "results" / "gate" / "toy-cdrl.pt"
    with pytest.raises(CheckpointError, match=r"toy-cdrl.pt is already a cdrl-bench checkpoint: pass it to sample"):
        import_official_checkpoint(ours, "toy-checkerboard")
