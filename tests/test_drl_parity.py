"""``baselines.drl`` computes what DRL's published formulas compute (tests/fixtures/drl_formulas.py).

The fixture is float64 numpy written from Gao et al.'s code, independent of cdrl/; cdrl runs
in float32. Tolerances: every coefficient within 1e-6 (schedule) or 1e-5 (step sizes) of its
own value, entry by entry, since they span five orders of magnitude (float32 arithmetic on
1 - alpha_bar would miss level 0's step size by 8e-5); samples after 6 x 30 Langevin steps
within 1e-5 x their largest value (measured: 2.5e-7).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines import ABLATIONS, apply_ablations, drl
from cdrl.config import preset
from cdrl.langevin import multiplier_for_steps, step_coefficients
from cdrl.sampler import sample
from cdrl.schedule import LogSNRSchedule

FIXTURE = Path(__file__).with_name("fixtures") / "drl_parity.npz"
ENERGY_SCALE = 0.02


def assert_relative(actual: torch.Tensor, expected: np.ndarray, tolerance: float) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    error = (actual.double() - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= tolerance * scale, f"max error {error:.3e} exceeds {tolerance:g} x {scale:.3e}"


def assert_entrywise(actual: torch.Tensor, expected: np.ndarray, tolerance: float) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    error = ((actual.double() - expected).abs() / expected.abs()).max().item()
    assert error <= tolerance, f"largest relative error {error:.3e} exceeds {tolerance:g}"


class Replay:
    """The fixture's noise, in the order the sampler draws it: x_T, then every Langevin step."""

    def __init__(self, draws: list[np.ndarray]):
        self.draws = iter(draws)

    def randn_like(self, reference: torch.Tensor) -> torch.Tensor:
        draw = torch.as_tensor(next(self.draws), dtype=reference.dtype)
        assert draw.shape == reference.shape
        return draw


def stand_in_energy(y: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    weight = 1.0 + torch.sigmoid(logsnr)
    return ENERGY_SCALE * (-0.5 * weight * (y - 0.3).pow(2).sum(1) + 0.5 * torch.cos(y).sum(1))


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def config():
    return drl(preset("cifar10"))


def test_drl_config_is_drl(config):
    assert config.training.method == "drl" and config.langevin.n_steps == 30
    assert config.schedule.kind == "ddpm-linear" and not config.training.variance_reduction
    assert not config.sampler.tweedie_step and config.sampler.langevin_noise_scale == 0.99
    assert config.training.grad_clip is None and config.training.ema_decay == 0.999
    assert not config.training.ema_warmup and config.training.warmup_iterations == 1000
    assert multiplier_for_steps(30, config.langevin) == 1.0


def test_schedule_levels(fixture, config):
    schedule = LogSNRSchedule(config.schedule)
    _, logsnrs = schedule.grid()
    assert_entrywise(logsnrs, fixture["logsnr"], 1e-6)
    level = schedule.level(torch.arange(1, 7))
    assert_entrywise(level.r_mul.sqrt(), fixture["a_s_prev"][1:], 1e-6)
    assert_entrywise(level.beta.sqrt(), fixture["sigmas"][1:], 1e-6)
    assert_entrywise(level.variance_s.sqrt(), fixture["sigmas_cum"][:-1], 1e-6)
    assert torch.equal(level.is_final, torch.as_tensor(1.0 - fixture["is_recovery"][1:], dtype=torch.float32))
    assert_entrywise(schedule.sigma_lowest() / level.beta.sqrt(), fixture["loss_scale"], 1e-6)


def test_langevin_step_size(fixture, config):
    schedule = LogSNRSchedule(config.schedule)
    coefficients = step_coefficients(schedule.level(torch.arange(1, 7)), config.langevin, schedule.logsnr_max)
    assert_entrywise(coefficients.step_size, fixture["step_size_square"], 1e-5)


def test_sampler_matches_drl_formulas(fixture, config):
    draws = [fixture["x_top"]] + [fixture["step_noise"][level, step] for level in range(6) for step in range(30)]
    states = []
    # Unclamped, to compare every value (the clamp to [-1, 1] is cdrl's, applied after the last level).
    samples = sample(stand_in_energy, None, fixture["x_top"].shape, LogSNRSchedule(config.schedule), config.langevin,
                     replace(config.sampler, clamp=False), noise=Replay(draws),
                     on_level=lambda index, x: states.append(x.clone()))
    for index, state in enumerate(states):
        assert_relative(state, fixture["states"][index + 1], 1e-5)
    assert_relative(samples, fixture["states"][-1], 1e-5)


def test_cdrl_without_initializer_is_the_old_drl_row():
    """The ablation keeps CDRL's schedule, step size, noise pairs and Tweedie step: only the initializer goes."""
    base = preset("cifar10")
    ablated = apply_ablations(base, ["no-initializer"])
    assert ablated.training.method == "drl" and ablated.langevin.n_steps == 30
    assert (ablated.schedule, ablated.sampler.tweedie_step, ablated.training.variance_reduction) == (
        base.schedule, True, True)
    assert ablated.langevin.step_constant == base.langevin.step_constant
    assert "ddpm-linear-schedule" in ABLATIONS and "no-variance-reduction" in ABLATIONS
