"""Algorithm 2: sample from pure noise down through the noise levels, then one Tweedie step.

The sampler sees only callables: ``energy(y, logsnr)`` and ``proposal(x_t, logsnr_t)``
(the initializer, or ``None`` for DRL, whose chains start at x_t). Conditional,
classifier-free-guided and composed models plug in by binding labels or mixing networks
(:mod:`cdrl.guidance`), so one sampler serves all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch

from cdrl.langevin import EnergyFn, LangevinConfig, energy_gradient, langevin_revision, multiplier_for_steps, \
    step_coefficients
from cdrl.noise import GeneratorNoise, NoiseSource
from cdrl.schedule import Level, LogSNRSchedule, broadcast
from cdrl.typed import at_least

#: proposal(x_t, logsnr_t) -> the initializer's mean proposal of sqrt(r) x_s.
ProposalFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerConfig:
    #: Langevin steps per level; None means the training count (15 in the paper).
    steps_per_level: int | None = field(default=None, metadata=at_least(1))
    #: Final denoising step with Tweedie's formula (published for images, not for the toy).
    tweedie_step: bool = True
    #: The score in that step: "published" is grad f / c' with c' = step_constant k m^2 beta, the
    #: published code's (twice the model's score grad(f / c) at m = 1, and m-dependent);
    #: "exact" is the model's score, as the paper writes Tweedie's formula.
    tweedie_score: Literal["published", "exact"] = "published"
    #: Add sqrt(beta_tilde r_mul) noise to the initializer's proposal (published default).
    initializer_noise: bool = True
    #: Clamp the final samples to [-1, 1] (images; the toy data live on a wider range).
    clamp: bool = True
    #: Multiplier on the Langevin noise when sampling (DRL's published evaluation: 0.99; training: 1).
    langevin_noise_scale: float = field(default=1.0, metadata=at_least(0))

    def steps(self, langevin: LangevinConfig, requested: int | None = None) -> int:
        """Langevin steps per level of a sampling run: the requested count, else this config's, else training's."""
        return requested or self.steps_per_level or langevin.n_steps


def propose(proposal: ProposalFn | None, x_t: torch.Tensor, level: Level, noise: NoiseSource,
            add_noise: bool) -> torch.Tensor:
    """Start of the chain in scaled space: g(x_t) (+ sqrt(beta_tilde r_mul) noise), or x_t itself for DRL."""
    if proposal is None:
        return x_t
    start = proposal(x_t, level.logsnr_t)
    if add_noise:
        start = start + broadcast(torch.sqrt(level.beta_tilde * level.r_mul), x_t) * noise.randn_like(x_t)
    return start


def tweedie_denoise(energy: EnergyFn, x: torch.Tensor, level: Level, langevin: LangevinConfig,
                    logsnr_max: float, step_multiplier: float,
                    score: Literal["published", "exact"] = "published") -> torch.Tensor:
    """x_0 = (x_s + (1 - alpha_bar_s) score) / sqrt(alpha_bar_s) at the least noisy level.

    The model's log density at s is f(sqrt(r_mul) x) / c, c the Langevin step size at m = 1, so
    its score is grad f / c ("exact"). The published code divides by c' = c m^2 / 2 instead
    ("published", the default, kept for parity with the paper's numbers).
    """
    root_r = broadcast(torch.sqrt(level.r_mul), x)
    gradient = energy_gradient(lambda z, logsnr: energy(z * root_r, logsnr), x, level.logsnr_s)
    if langevin.energy_divided_by_step_size:
        step_size = step_coefficients(level, langevin, logsnr_max).step_size
        divisor = 0.5 * step_size * step_multiplier ** 2 if score == "published" else step_size
        gradient = gradient / broadcast(divisor, x)
    return (x + broadcast(level.variance_s, x) * gradient) / broadcast(torch.sqrt(level.alpha_bar_s), x)


@torch.no_grad()
def sample(energy: EnergyFn, proposal: ProposalFn | None, shape: Sequence[int], schedule: LogSNRSchedule,
           langevin: LangevinConfig, config: SamplerConfig = SamplerConfig(), noise: NoiseSource | None = None,
           device: torch.device | str = "cpu",
           on_level: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Draw ``shape[0]`` samples. Put the networks in eval mode (and under EMA weights) first.

    ``on_level(index, x)`` is called with the state after each level (for plots).
    """
    noise = noise or GeneratorNoise()
    steps = config.steps(langevin)
    multiplier = multiplier_for_steps(steps, langevin)
    batch = shape[0]
    x = noise.randn_like(torch.empty(tuple(shape), device=device))
    level = None
    for index in range(schedule.n_levels, 0, -1):
        level = schedule.level(index, batch, device)
        start = propose(proposal, x, level, noise, config.initializer_noise)
        x = langevin_revision(energy, start, x, level, langevin, schedule.logsnr_max, n_steps=steps,
                              step_multiplier=multiplier, noise=noise, noise_scale=config.langevin_noise_scale)
        if on_level is not None:
            on_level(index - 1, x)
    if config.tweedie_step and level is not None:
        x = tweedie_denoise(energy, x, level, langevin, schedule.logsnr_max, multiplier, config.tweedie_score)
    return x.clamp(-1.0, 1.0) if config.clamp else x
