"""The noise schedule and the Gaussian diffusion around it.

Conventions (METHOD.md): images in [-1, 1]; alpha_bar(logsnr) = sigmoid(logsnr),
sigma^2 = sigmoid(-logsnr), x_logsnr = sqrt(alpha_bar) x + sigma eps. Level 0 is the least
noisy (logsnr_max), level T the noisiest. Training and sampling move between neighbouring
levels s = t - 1/T and t; :class:`Level` holds every coefficient of such a pair.

Two schedules place the T + 1 levels: CDRL's "cosine logSNR" with endpoints, and DRL's
DDPM linear beta (1e-4 -> 0.02 over 1000 steps) read at steps 0, d, 2d, ..., (T - 1) d and 999,
d = 1000 // (2 (T - 1)) (Gao et al.'s published code: steps 0, 100, ..., 500, 999 for T = 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from cdrl.typed import at_least, bounds


@dataclass(frozen=True)
class ScheduleConfig:
    """Where the ``n_levels`` + 1 noise levels lie: CDRL's cosine logSNR, or DRL's DDPM linear beta."""

    n_levels: int = field(default=6, metadata=at_least(1))
    kind: Literal["cosine-logsnr", "ddpm-linear"] = "cosine-logsnr"
    #: cosine-logsnr: the logSNR of the noisiest and the least noisy level.
    logsnr_min: float = -5.1
    logsnr_max: float = 9.8
    #: ddpm-linear: betas linear from beta_start to beta_end over ddpm_steps diffusion steps.
    beta_start: float = field(default=1e-4, metadata=bounds(above=0, below=1))
    beta_end: float = field(default=0.02, metadata=bounds(above=0, below=1))
    ddpm_steps: int = field(default=1000, metadata=at_least(3))
    #: Use r_mul = 1 instead of r at the noisiest level, as the published code does.
    final_level_unscaled: bool = True


@dataclass
class Level:
    """Coefficients of one transition x_s -> x_t, one entry per example (shape (B,))."""

    logsnr_t: torch.Tensor
    logsnr_s: torch.Tensor
    alpha_bar_s: torch.Tensor
    #: r = alpha_bar_t / alpha_bar_s (x_t = sqrt(r) x_s + sqrt(1 - r) eps), except 1 at the
    #: noisiest level when ``ScheduleConfig.final_level_unscaled``.
    r_mul: torch.Tensor
    #: 1 - r.
    beta: torch.Tensor
    #: The "small" posterior variance of q(x_s | x_t, x).
    beta_tilde: torch.Tensor
    #: 1.0 at the noisiest level, where the EBM models the marginal at s, else 0.0.
    is_final: torch.Tensor
    #: 1 - alpha_bar_s, the noise variance at s (the Langevin step size's noise scale).
    variance_s: torch.Tensor


def ddpm_read_steps(n_levels: int, ddpm_steps: int) -> list[int]:
    """The diffusion steps DRL's schedule reads levels 0..T at (module docstring), strictly increasing."""
    stride = ddpm_steps // (2 * (n_levels - 1)) if n_levels >= 2 else 0
    if stride < 1 or stride * (n_levels - 1) >= ddpm_steps - 1:
        raise ValueError(f"a ddpm-linear schedule of {ddpm_steps} steps fits 2 to {ddpm_steps // 2 + 1} noise "
                         f"levels, not {n_levels}")
    return [level * stride for level in range(n_levels)] + [ddpm_steps - 1]


def ddpm_linear_alpha_bars(config: ScheduleConfig) -> torch.Tensor:
    """alpha_bar of levels 0..T under DRL's schedule, in float64 (as its published code computes them)."""
    read_at = ddpm_read_steps(config.n_levels, config.ddpm_steps)
    betas = torch.linspace(config.beta_start, config.beta_end, config.ddpm_steps, dtype=torch.float64)
    alpha_bars = torch.cumprod(1.0 - betas, dim=0)
    return alpha_bars[read_at]


def logsnr_of(alpha_bar: torch.Tensor) -> torch.Tensor:
    """log(alpha_bar / (1 - alpha_bar)), without cancellation near alpha_bar = 1."""
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


class LogSNRSchedule:
    """One schedule for training, sampling, DRL and guidance."""

    def __init__(self, config: ScheduleConfig = ScheduleConfig()):
        self.config = config
        self._alpha_bars = ddpm_linear_alpha_bars(config) if config.kind == "ddpm-linear" else None

    @property
    def n_levels(self) -> int:
        return self.config.n_levels

    @property
    def logsnr_max(self) -> float:
        """The logSNR of level 0 (the least noisy), which anchors the Langevin step size."""
        if self._alpha_bars is None:
            return self.config.logsnr_max
        return float(logsnr_of(self._alpha_bars[0]))

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """The logSNR at times t = level / T: -2 log tan(a t + b) (cosine) or the DDPM levels' (t on the grid)."""
        t = torch.as_tensor(t, dtype=torch.float32)
        if self._alpha_bars is not None:
            return logsnr_of(self._alpha_bars[torch.round(t * self.n_levels).long()]).float()
        b = math.atan(math.exp(-0.5 * self.config.logsnr_max))
        a = math.atan(math.exp(-0.5 * self.config.logsnr_min)) - b
        return -2.0 * torch.log(torch.tan(a * t + b))

    def grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Times 0, 1/T, ..., 1 and their logSNRs."""
        t = torch.arange(self.n_levels + 1, dtype=torch.float32) / self.n_levels
        return t, self.logsnr(t)

    def level(self, index: torch.Tensor | int, batch_size: int | None = None,
              device: torch.device | str | None = None, check: bool = True) -> Level:
        """Coefficients for the transition from level ``index`` (1..T) down to ``index - 1``.

        ``check=False`` skips the range check of a tensor ``index`` (a host sync on CUDA), for
        indices in range by construction; an int is checked on the host.
        """
        if isinstance(index, int):
            if not 1 <= index <= self.n_levels:
                raise ValueError(f"noise level index must lie in 1..{self.n_levels}, got {index}")
            index = torch.full((batch_size or 1,), index, device=device)
        elif check and torch.any((index < 1) | (index > self.n_levels)):
            raise ValueError(f"noise level index must lie in 1..{self.n_levels}, got {index.tolist()}")
        if self._alpha_bars is not None:
            # DRL's coefficients in float64, rounded once (its code's precision: 1 - alpha_bar at
            # level 0 is 1e-4, which float32 arithmetic would get only to ~1e-3 relative).
            alpha_bars = self._alpha_bars.to(index.device)
            alpha_bar_t, alpha_bar_s = alpha_bars[index], alpha_bars[index - 1]
            return self._level(index, alpha_bar_t, alpha_bar_s, logsnr_of(alpha_bar_t), logsnr_of(alpha_bar_s),
                               1.0 - alpha_bar_s, 1.0 - alpha_bar_t, rounded=True)
        t = index.to(torch.float32) / self.n_levels
        # s = t - 1/T as in the published training loop (not (index - 1) / T): identical
        # levels, and the same floating-point values as the reference fixtures.
        s = t - 1.0 / self.n_levels
        logsnr_t, logsnr_s = self.logsnr(t), self.logsnr(s)
        alpha_bar_t, alpha_bar_s = torch.sigmoid(logsnr_t), torch.sigmoid(logsnr_s)
        return self._level(index, alpha_bar_t, alpha_bar_s, logsnr_t, logsnr_s, 1.0 - alpha_bar_s, 1.0 - alpha_bar_t)

    def _level(self, index: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor,
               logsnr_t: torch.Tensor, logsnr_s: torch.Tensor, variance_s: torch.Tensor, variance_t: torch.Tensor,
               rounded: bool = False) -> Level:
        r = alpha_bar_t / alpha_bar_s
        is_final = (index == self.n_levels).to(r.dtype)
        r_mul = torch.where(is_final > 0, torch.ones_like(r), r) if self.config.final_level_unscaled else r
        beta = 1.0 - r
        beta_tilde = variance_s / variance_t * beta
        values = (logsnr_t, logsnr_s, alpha_bar_s, r_mul, beta, beta_tilde, is_final, variance_s)
        if rounded:
            values = tuple(value.float() for value in values)
        return Level(*values)

    def sigma_lowest(self) -> float:
        """sqrt(beta) of the least noisy transition (t = 1/T), the loss weighting's unit."""
        return float(torch.sqrt(self.level(1).beta)[0])


def broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-example values (B,) to broadcast against a batch shaped like ``like``."""
    return values.reshape(values.shape[0], *([1] * (like.dim() - 1)))


def diffuse(x: torch.Tensor, logsnr: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample q(x_logsnr | x) = N(sqrt(alpha_bar) x, (1 - alpha_bar) I) with the given noise."""
    return x * broadcast(torch.sqrt(torch.sigmoid(logsnr)), x) + broadcast(torch.sqrt(torch.sigmoid(-logsnr)), x) * noise


@dataclass
class Posterior:
    mean: torch.Tensor
    var: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.sqrt(self.var)


def posterior(x: torch.Tensor, x_t: torch.Tensor, logsnr_s: torch.Tensor, logsnr_t: torch.Tensor) -> Posterior:
    """q(x_s | x_t, x) with the "small" variance beta_tilde (the published code's default).

    Computed from the logSNRs in the published code's arithmetic (its fixtures hold this to
    float32 rounding), not from a :class:`Level`.
    """
    logsnr_s, logsnr_t = broadcast(logsnr_s, x), broadcast(logsnr_t, x)
    alpha_s_over_t = torch.sqrt((1.0 + torch.exp(-logsnr_t)) / (1.0 + torch.exp(-logsnr_s)))
    alpha_s = torch.sqrt(torch.sigmoid(logsnr_s))
    snr_ratio = torch.exp(logsnr_t - logsnr_s)
    one_minus_snr_ratio = -torch.expm1(logsnr_t - logsnr_s)
    mean = snr_ratio * alpha_s_over_t * x_t + one_minus_snr_ratio * alpha_s * x
    alpha_bar_t, alpha_bar_s = torch.sigmoid(logsnr_t), torch.sigmoid(logsnr_s)
    var = (1.0 - alpha_bar_s) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_s)
    return Posterior(mean, var.expand_as(mean))
