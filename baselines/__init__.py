"""Baselines and ablations as config deltas: the core's one training step and sampler serve them all.

* :func:`drl` turns any CDRL config into DRL (Gao et al., ICLR 2021): no initializer, so
  every Langevin chain starts at the noisy sample x_t, and 30 steps per level (which is then
  also the reference count of the sqrt(K_ref / K) step-size rule, so DRL samples at m = 1).
  Only the algorithm changes: the networks, schedule and optimiser stay those of the preset,
  so CDRL and DRL compare at equal budgets. DRL's own published hyperparameters are recorded
  in ``results/paper/drl_config.csv``.
* :data:`ABLATIONS` names override lists, one per practical detail of the published code
  that the README's faithfulness table lists; :func:`apply_ablations` applies them.
"""

from __future__ import annotations

from typing import Iterable

from cdrl.config import ConfigError, ExperimentConfig, apply_overrides

#: Langevin steps per level of DRL (its paper: T = 6 levels x K = 30 steps).
DRL_STEPS_PER_LEVEL = 30

METHODS = ("cdrl", "drl")

ABLATIONS: dict[str, tuple[str, ...]] = {
    # No noise on the initializer's proposal, in training and in sampling.
    "no-initializer-noise": ("training.initializer_noise=false", "sampler.initializer_noise=false"),
    # x_s drawn from q(x_s | x_t, x) instead of sharing x_t's noise.
    "no-variance-reduction": ("training.variance_reduction=false",),
    # Every level's EBM loss weighted 1 instead of sigma_1 / sqrt(beta).
    "no-loss-weighting": ("training.loss_weighting=false",),
    # Plain EMA decay from the first update (no torch_ema warm-up).
    "no-ema-warmup": ("training.ema_warmup=false",),
    # Langevin step size independent of the noise level (k = 1 / sqrt(1 - sigmoid(logsnr_max))).
    "constant-step-size": ("langevin.step_scales_with_noise=false",),
    # The network output is the energy itself, not the energy divided by the step size.
    "energy-not-divided-by-step-size": ("langevin.energy_divided_by_step_size=false",),
    # r_mul = r at the noisiest level too (the EBM models a conditional there as well).
    "final-level-scaled": ("schedule.final_level_unscaled=false",),
    # No final Tweedie denoising step when sampling.
    "no-tweedie-step": ("sampler.tweedie_step=false",),
    # Clamp every Langevin revision to [-1, 1] (the published option Langevin_clip, off there).
    "langevin-clip": ("langevin.clip=true",),
}


def drl(config: ExperimentConfig) -> ExperimentConfig:
    """The DRL baseline of ``config``: no initializer, chains start at x_t, 30 Langevin steps per level."""
    return apply_overrides(config, ["training.method=drl", f"langevin.n_steps={DRL_STEPS_PER_LEVEL}",
                                    "sampler.steps_per_level=none"])


def apply_method(config: ExperimentConfig, method: str) -> ExperimentConfig:
    """``config`` trained by ``method``: "cdrl" leaves it as it is, "drl" applies :func:`drl`."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    return drl(config) if method == "drl" else config


def ablation_overrides(names: Iterable[str]) -> list[str]:
    """The overrides of the named ablations, in order."""
    overrides: list[str] = []
    for name in names:
        if name not in ABLATIONS:
            raise ConfigError(f"unknown ablation {name!r}: choose one of {', '.join(ABLATIONS)}")
        overrides.extend(ABLATIONS[name])
    return overrides


def apply_ablations(config: ExperimentConfig, names: Iterable[str]) -> ExperimentConfig:
    return apply_overrides(config, ablation_overrides(names))
