"""Langevin revision of the recovery-likelihood conditional p(x_s | x_t), the one MCMC of cdrl-bench.

At a transition s -> t the chain runs on y = sqrt(r_mul) x_s ("scaled" space, where
x_t = y + sqrt(beta) eps; r_mul is r except at the noisiest level, cdrl.schedule.Level) with the energy

    E(y) = f(y, logsnr_s) / c - (1 - final) ||y - x_t||^2 / (2 beta),
    c = 2 * step_constant * k * beta,

and the update y <- y + (delta^2 / 2) grad E(y) + delta * noise with delta^2 = c m^2, where m is
the step-size multiplier. Dividing the network output by the step size c is the published
parameterisation (``energy_divided_by_step_size``); k = sqrt(1 - alpha_bar_s) / sqrt(1 -
sigmoid(logsnr_max)) for images, 1 / sqrt(1 - sigmoid(logsnr_max)) for the 2-D toy
(``step_scales_with_noise``). After K steps the chain is mapped back: x_s = y / sqrt(r_mul).
Taking K steps instead of the reference count scales m by sqrt(reference_steps / K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from cdrl.noise import GeneratorNoise, NoiseSource
from cdrl.schedule import Level, broadcast
from cdrl.typed import above, at_least

#: energy(y, logsnr) -> one energy per example; networks with labels are bound beforehand.
EnergyFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Guards the division by sqrt(r_mul), exactly as the published code.
_UNSCALE_EPSILON = 1e-8


@dataclass(frozen=True)
class LangevinConfig:
    #: Steps per noise level in training (and the reference of the sqrt(15/K) rule).
    n_steps: int = field(default=15, metadata=at_least(1))
    #: 2e-4 for images (published CIFAR-10/ImageNet code), 1e-3 for the 2-D toy.
    step_constant: float = field(default=2e-4, metadata=above(0))
    #: Multiplier m on the step size, in training and sampling (the published ``sz_mul``: 1 in
    #: the paper's runs). A K-step chain multiplies it by sqrt(n_steps / K).
    step_multiplier: float = field(default=1.0, metadata=above(0))
    step_scales_with_noise: bool = True
    energy_divided_by_step_size: bool = True
    #: Clamp the revised sample to [-1, 1] (published option ``Langevin_clip``, off).
    clip: bool = False


def multiplier_for_steps(n_steps: int, config: LangevinConfig) -> float:
    """m for a chain of ``n_steps``: delta proportional to 1/sqrt(K), 15 steps being the reference."""
    if n_steps < 1:
        raise ValueError(f"a Langevin chain needs at least one step, got {n_steps}")
    return config.step_multiplier * math.sqrt(config.n_steps / n_steps)


@dataclass
class StepCoefficients:
    """Per-example (B,) coefficients of the chain at one level."""

    #: k: the factor by which the step size grows with the noise at s.
    step_factor: torch.Tensor
    #: c = 2 * step_constant * k * beta, the step size delta^2 at m = 1.
    step_size: torch.Tensor


def step_coefficients(level: Level, config: LangevinConfig, logsnr_max: float) -> StepCoefficients:
    clean_variance = 1.0 - 1.0 / (1.0 + math.exp(-logsnr_max))
    if config.step_scales_with_noise:
        step_factor = torch.sqrt(level.variance_s) / math.sqrt(clean_variance)
    else:
        step_factor = torch.ones_like(level.beta) / math.sqrt(clean_variance)
    return StepCoefficients(step_factor, 2.0 * config.step_constant * step_factor * level.beta)


def energy_gradient(energy: EnergyFn, y: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    """grad_y sum_i f(y_i, logsnr_i); the network's own parameter gradients are left untouched."""
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(energy(y, logsnr).sum(), y)
    return gradient


def langevin_revision(energy: EnergyFn, y: torch.Tensor, x_t: torch.Tensor, level: Level,
                      config: LangevinConfig, logsnr_max: float, n_steps: int | None = None,
                      step_multiplier: float | None = None, noise: NoiseSource | None = None,
                      add_noise: bool = True, noise_scale: float = 1.0) -> torch.Tensor:
    """Run K Langevin steps from the proposal ``y`` (scaled space) and return x_s = y_K / sqrt(r_mul).

    ``n_steps`` defaults to ``config.n_steps``; ``step_multiplier`` defaults to the
    sqrt(reference / K) rule for that K. ``noise_scale`` shrinks the injected noise, not the
    step (DRL samples at test time with 0.99). The result is detached.
    """
    n_steps = config.n_steps if n_steps is None else n_steps
    multiplier = multiplier_for_steps(n_steps, config) if step_multiplier is None else step_multiplier
    noise = noise or GeneratorNoise()
    coefficients = step_coefficients(level, config, logsnr_max)
    squared_multiplier = multiplier ** 2
    # The drift (delta^2 / 2) grad E split into its two terms; the coupling one is analytic.
    gradient_scale = 0.5 * squared_multiplier * (
        torch.ones_like(coefficients.step_size) if config.energy_divided_by_step_size else coefficients.step_size)
    coupling = squared_multiplier * config.step_constant * coefficients.step_factor * (1.0 - level.is_final)
    noise_std = torch.sqrt(coefficients.step_size * squared_multiplier) * noise_scale
    gradient_scale, coupling, noise_std = (broadcast(v, y) for v in (gradient_scale, coupling, noise_std))
    y = y.detach()
    for _ in range(n_steps):
        y = y + gradient_scale * energy_gradient(energy, y, level.logsnr_s) - coupling * (y - x_t)
        if add_noise:
            y = y + noise_std * noise.randn_like(y)
    x_s = y / (broadcast(torch.sqrt(level.r_mul), y) + _UNSCALE_EPSILON)
    return x_s.clamp(-1.0, 1.0) if config.clip else x_s
