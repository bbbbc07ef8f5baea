"""The training step, sampler, EMA, configs and checkpoints on tiny presets (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from cdrl.checkpoint import load_model, make_checkpoint, save_atomic
from cdrl.config import ConfigError, ExperimentConfig, apply_overrides, check_networks_fit_data, preset
from cdrl.ema import EMA
from cdrl.langevin import LangevinConfig, langevin_revision, multiplier_for_steps, step_coefficients
from cdrl.networks import InitializerConfig, build_initializer
from cdrl.noise import GeneratorNoise, PerExampleNoise
from cdrl.sampler import SamplerConfig, sample, tweedie_denoise
from cdrl.schedule import LogSNRSchedule, ScheduleConfig, ddpm_read_steps
from cdrl.training import CooperativeTrainer

GATE_MODELS = Path(__file__).resolve().parent.parent / "results" / "gate"


def tiny_batch(config: ExperimentConfig, batch: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, config.energy.in_channels, config.initializer.image_size, config.initializer.image_size)
    return torch.rand(shape, generator=generator) * 2 - 1


def make_trainer(config: ExperimentConfig, seed: int = 0) -> CooperativeTrainer:
    torch.manual_seed(seed)
    return CooperativeTrainer(config, generator=torch.Generator().manual_seed(seed))


def test_training_step_returns_finite_losses_and_advances():
    config = preset("tiny")
    trainer = make_trainer(config)
    stats = trainer.step(tiny_batch(config))
    values = stats.as_floats()
    assert set(values) >= {"ebm_loss", "positive_energy", "negative_energy", "initializer_loss"}
    assert all(math.isfinite(v) for v in values.values())
    assert trainer.iteration == 1 and trainer.ebm_ema.num_updates == 1 and trainer.initializer_ema.num_updates == 1


def _losses_on_a_fixed_batch(overrides: list[str], steps: int) -> list[dict[str, float]]:
    """Train on one batch with the same levels and noise every step, so the task is stationary."""
    config = apply_overrides(preset("tiny"), overrides)
    trainer = make_trainer(config)
    batch = tiny_batch(config, batch=16)
    losses = []
    for _ in range(steps):
        trainer.generator.manual_seed(123)
        torch.manual_seed(5)  # dropout
        losses.append(trainer.step(batch).as_floats())
    return losses


def test_initializer_loss_decreases_on_a_fixed_batch():
    """A frozen EBM: the initializer regresses onto the revised samples."""
    losses = [step["initializer_loss"] for step in
              _losses_on_a_fixed_batch(["training.initializer_lr=1e-3", "training.ebm_lr=0"], 30)]
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(later <= earlier + 1e-3 for earlier, later in zip(losses[5:], losses[6:])), losses


def test_ebm_loss_decreases_against_frozen_negatives():
    """A frozen initializer and a vanishing Langevin step: fixed negatives, so the contrastive loss must fall."""
    losses = [step["ebm_loss"] for step in _losses_on_a_fixed_batch(
        ["training.initializer_lr=0", "training.ebm_lr=1e-3", "langevin.step_multiplier=1e-6"], 12)]
    assert losses[-1] < losses[0] - 1.0, losses
    assert all(later < earlier for earlier, later in zip(losses[2:], losses[3:])), losses


def test_drl_step_has_no_initializer():
    config = apply_overrides(preset("tiny"), ["training.method=drl"])
    trainer = make_trainer(config)
    stats = trainer.step(tiny_batch(config))
    assert trainer.initializer is None and stats.initializer_loss is None
    assert math.isfinite(stats.ebm_loss.item())


def test_conditional_step_uses_labels():
    base = preset("tiny")
    config = dataclasses.replace(base, energy=dataclasses.replace(base.energy, num_classes=10),
                                 initializer=dataclasses.replace(base.initializer, num_classes=10))
    trainer = make_trainer(config)
    with pytest.raises(ValueError, match="needs labels"):
        trainer.step(tiny_batch(config))
    assert math.isfinite(trainer.step(tiny_batch(config), torch.arange(8) % 10).ebm_loss.item())


def _sample_tiny(seed: int, batch: int = 4, noise=None):
    config = preset("tiny")
    trainer = make_trainer(config)
    trainer.ebm.eval()
    trainer.initializer.eval()
    shape = (batch, 1, 8, 8)
    return sample(trainer.ebm, trainer.initializer, shape, trainer.schedule, config.langevin,
                  SamplerConfig(steps_per_level=2), noise=noise or GeneratorNoise(torch.Generator().manual_seed(seed)))


def test_sampler_is_deterministic_under_a_seed_and_shaped():
    first, second, other = _sample_tiny(1), _sample_tiny(1), _sample_tiny(2)
    assert first.shape == (4, 1, 8, 8) and torch.isfinite(first).all()
    assert first.abs().max() <= 1.0
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_per_example_noise_makes_samples_independent_of_batch_size():
    """On a trained model, where the chains contract, batching moves samples by float32 rounding only.

    (An untrained network's chains are chaotic: there one rounding difference flips whole pixels.)
    """
    model = load_model(GATE_MODELS / "toy-cdrl.pt")
    schedule = LogSNRSchedule(model.config.schedule)

    def draw(batch: int, seeds: range) -> torch.Tensor:
        return sample(model.ebm, model.initializer, (batch, 2), schedule, model.config.langevin,
                      dataclasses.replace(model.config.sampler, steps_per_level=5), noise=PerExampleNoise(seeds))

    together, alone = draw(6, range(100, 106)), draw(2, range(104, 106))
    assert together.abs().max() < 12 and together.std() > 1  # spread over the board, not collapsed or exploded
    # Measured: at most 2e-6 (float32) between batch sizes; a different seed moves points by ~5.
    torch.testing.assert_close(together[4:], alone, rtol=0, atol=1e-4)
    assert (together[4:] - draw(2, range(200, 202))).abs().max() > 1


def test_step_multiplier_rule():
    config = LangevinConfig()
    assert multiplier_for_steps(15, config) == 1.0
    assert multiplier_for_steps(5, config) == pytest.approx(math.sqrt(3))
    assert multiplier_for_steps(3, dataclasses.replace(config, step_multiplier=2.0)) == pytest.approx(2 * math.sqrt(5))
    with pytest.raises(ValueError):
        multiplier_for_steps(0, config)


def test_langevin_without_energy_follows_the_gaussian_coupling():
    """With f = 0 and no noise the chain contracts towards x_t at the rate the coupling implies."""
    schedule = LogSNRSchedule()
    level = schedule.level(2, batch_size=1)
    x_t = torch.zeros(1, 3)
    y = torch.ones(1, 3)
    config = LangevinConfig(n_steps=1)
    out = langevin_revision(lambda v, logsnr: (v * 0).sum(dim=1), y, x_t, level, config, 9.8, add_noise=False)
    step_factor = torch.sqrt(1 - level.alpha_bar_s) / math.sqrt(1 - 1 / (1 + math.exp(-9.8)))
    expected = (1 - config.step_constant * step_factor) / torch.sqrt(level.r_mul)
    torch.testing.assert_close(out, expected.expand(1, 3))


@pytest.mark.parametrize("index", [1, 3])
@pytest.mark.parametrize("steps", [15, 3])
def test_tweedie_step_with_the_exact_score_is_the_posterior_mean_of_gaussian_data(index, steps):
    """Data N(0, s^2 I) make x_s ~ N(0, v I), v = alpha_bar_s s^2 + 1 - alpha_bar_s, and E[x | x_s] =
    sqrt(alpha_bar_s) s^2 x_s / v. An energy with f(sqrt(r_mul) x) / c = -||x||^2 / 2v is that
    density; the exact score recovers the mean at any K, the published one takes 2 / m^2 of it."""
    schedule, langevin, data_variance = LogSNRSchedule(), LangevinConfig(), 0.5
    level = schedule.level(index, batch_size=4)
    step_size = step_coefficients(level, langevin, schedule.logsnr_max).step_size[:, None]
    variance = level.alpha_bar_s[:, None] * data_variance + level.variance_s[:, None]

    def energy(z, logsnr):
        return -(step_size * z ** 2 / (2 * variance * level.r_mul[:, None])).sum(dim=1)

    x_s = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    multiplier = multiplier_for_steps(steps, langevin)
    root_alpha = torch.sqrt(level.alpha_bar_s)[:, None]
    # The Tweedie correction alone (it is 1e-4 of x_s at the least noisy level).
    exact_correction = -level.variance_s[:, None] / variance * x_s
    for score, correction in [("exact", exact_correction), ("published", 2 / multiplier ** 2 * exact_correction)]:
        denoised = tweedie_denoise(energy, x_s, level, langevin, schedule.logsnr_max, multiplier, score)
        torch.testing.assert_close(denoised * root_alpha - x_s, correction, rtol=2e-3, atol=0)
    torch.testing.assert_close(tweedie_denoise(energy, x_s, level, langevin, schedule.logsnr_max, multiplier, "exact"),
                               root_alpha * data_variance * x_s / variance, rtol=1e-5, atol=0)


def test_ema_matches_torch_ema_semantics():
    module = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(0.0)
    ema = EMA(module, decay=0.9)
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.update()  # decay min(0.9, 2/11)
    assert ema.shadow[0][0, 0].item() == pytest.approx(1 - 2 / 11)
    with ema.average_parameters():
        assert module.weight[0, 0].item() == pytest.approx(1 - 2 / 11)
    assert module.weight[0, 0].item() == 1.0


def test_overrides_are_typed_and_checked():
    config = apply_overrides(preset("cifar10"), ["training.ebm_lr=2e-4", "langevin.n_steps=5",
                                                 "initializer.attention_resolutions=16,8",
                                                 "energy.num_classes=10", "initializer.num_classes=10",
                                                 "training.variance_reduction=false"])
    assert config.training.ebm_lr == 2e-4 and config.langevin.n_steps == 5
    assert config.initializer.attention_resolutions == (16, 8) and config.energy.num_classes == 10
    assert config.training.variance_reduction is False
    for bad, message in [("training.ebm_lr", "key=value"), ("training.nope=1", "unknown config key"),
                         ("training.iterations=ten", "needs an integer"), ("training.method=gan", "one of")]:
        with pytest.raises(ConfigError, match=message):
            apply_overrides(config, [bad])


def test_relations_between_fields_are_checked_with_the_fix():
    with pytest.raises(ConfigError, match=r"initializer.channel_mults must all be equal .* got \[1, 2\]"):
        apply_overrides(preset("digits"), ["initializer.channel_mults=1,2"])
    drl_levels = ["schedule.kind=ddpm-linear", "schedule.ddpm_steps=20"]
    assert apply_overrides(preset("tiny"), [*drl_levels, "schedule.n_levels=11"]).schedule.n_levels == 11
    with pytest.raises(ConfigError, match="schedule of 20 steps fits 2 to 11 noise levels, not 12"):
        apply_overrides(preset("tiny"), [*drl_levels, "schedule.n_levels=12"])
    # The levels DRL reads are distinct at the largest count, and its published ones at six.
    assert ddpm_read_steps(11, 20) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 19]
    assert ddpm_read_steps(6, 1000) == [0, 100, 200, 300, 400, 500, 999]
    with pytest.raises(ValueError, match="fits 2 to 2 noise levels, not 2"):
        LogSNRSchedule(ScheduleConfig(kind="ddpm-linear", n_levels=2, ddpm_steps=2))


def test_networks_must_fit_the_data_before_training():
    check_networks_fit_data(preset("digits"))
    check_networks_fit_data(preset("toy-checkerboard"))
    smaller = apply_overrides(preset("digits"), ["data.image_size=8"])
    with pytest.raises(ConfigError, match=r"^initializer.image_size=16 does not fit the data \(digits items of shape "
                                          r"\(1, 8, 8\)\): add --set initializer.image_size=8$"):
        check_networks_fit_data(smaller)
    check_networks_fit_data(apply_overrides(smaller, ["initializer.image_size=8"]))
    # DRL has no initializer to fit.
    check_networks_fit_data(apply_overrides(smaller, ["training.method=drl"]))
    with pytest.raises(ConfigError, match="energy.in_channels=1, initializer.channels=1 do not fit .* add --set "
                                          "energy.in_channels=3 --set initializer.channels=3"):
        check_networks_fit_data(apply_overrides(preset("digits"), ["data.channels=3"]))


def test_the_mlp_initializer_honours_tanh_output():
    config = InitializerConfig(architecture="mlp", channels=2, width=32, blocks_per_level=1, tanh_output=True)
    torch.manual_seed(0)
    out = build_initializer(config)(torch.full((3, 2), 5.0), torch.zeros(3))
    assert out.abs().max() < 1 and torch.allclose(out, torch.tanh(torch.full((3, 2), 5.0)))


def test_saved_configs_and_overrides_are_checked_against_the_field_types():
    saved = preset("tiny").to_dict()
    for section, key, value, message in [("training", "iterations", "20", "must be an integer"),
                                         ("training", "ebm_lr", True, "must be a number"),
                                         ("training", "method", "gan", "must be one of 'cdrl', 'drl'"),
                                         ("training", "surprise", 1, "is not a known key"),
                                         ("langevin", "n_steps", float("nan"), "must be an integer"),
                                         ("training", "adam_betas", [0.9], "takes 2 values, got 1"),
                                         ("training", "ema_decay", 2.0, "must be at least 0 and less than 1")]:
        broken = {**saved, section: {**saved[section], key: value}}
        with pytest.raises(ConfigError, match=f"saved config: {section}.{key} {message}"):
            ExperimentConfig.from_dict(broken)
    with pytest.raises(ConfigError, match="training.ebm_lr must be a finite number"):
        apply_overrides(preset("tiny"), ["training.ebm_lr=nan"])


def test_config_round_trips_through_a_dict():
    for name in ("cifar10", "imagenet32-cond", "toy-checkerboard", "tiny"):
        config = preset(name)
        assert ExperimentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("cifar100")


def test_checkpoint_round_trip_restores_training_exactly(tmp_path):
    config = preset("tiny")
    trainer = make_trainer(config)
    batch = tiny_batch(config)
    trainer.step(batch)
    path = save_atomic(make_checkpoint(config, trainer.state_dict()), tmp_path / "ckpt.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    restored = make_trainer(config, seed=5)
    restored.load_state_dict(torch.load(path, weights_only=True)["trainer"])
    trainer.generator.manual_seed(9)
    restored.generator.manual_seed(9)
    torch.manual_seed(9)
    expected = trainer.step(batch).as_floats()
    torch.manual_seed(9)
    assert restored.step(batch).as_floats() == expected
    model = load_model(path)
    assert model.iteration == 1 and model.uses_ema and not model.ebm.training
