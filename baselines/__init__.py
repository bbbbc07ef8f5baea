"""Baselines and ablations as config deltas: the core's one training step and sampler serve them all.

* :func:`drl` turns any CDRL config into DRL as Gao et al. (ICLR 2021) published it: no
  initializer (every Langevin chain starts at the noisy sample x_t), 30 steps per level, DDPM's
  linear-beta levels, step size delta^2 = b^2 k beta with b^2 = 2e-4 (half of CDRL's
  2 * 2e-4 * k * beta), x_s and x_t from independent noise, no Tweedie step, test-time Langevin
  noise x 0.99, and DRL's optimisation (no gradient clipping, EMA 0.999 without warm-up, a
  learning-rate warm-up of at most 1,000 iterations; an EMA decay that a CPU-scale preset or
  suite lowered is kept). The networks and the batch stay the preset's.
  ``results/paper/drl_config.csv`` records DRL's published configuration.
* :data:`ABLATIONS` names override lists: the two improvements the CDRL paper names (its
  noise schedule, variance reduction), every practical detail of the published code, and
  "CDRL without initializer" (the DRL algorithm on CDRL's schedule, step size and training).
"""

from __future__ import annotations

from typing import Iterable

from cdrl.config import ConfigError, ExperimentConfig, TrainingConfig, apply_overrides

#: Langevin steps per level of DRL (its paper: T = 6 levels x K = 30 steps).
DRL_STEPS_PER_LEVEL = 30
#: DRL's published flags: learning-rate warm-up (shorter preset warm-ups are kept), EMA decay
#: (``ma_decay``, a TensorFlow EMA: no warm-up) and the Langevin noise scale of its evaluation.
DRL_WARMUP_ITERATIONS = 1000
DRL_EMA_DECAY = 0.999
DRL_TEST_NOISE_SCALE = 0.99

METHODS = ("cdrl", "drl")

ABLATIONS: dict[str, tuple[str, ...]] = {
    # The paper's first improvement over DRL: its cosine-logSNR schedule, replaced by DRL's DDPM linear betas.
    "ddpm-linear-schedule": ("schedule.kind=ddpm-linear",),
    # CDRL with its initializer removed: chains start at x_t, 30 steps; schedule, step size and training stay CDRL's.
    "no-initializer": ("training.method=drl", f"langevin.n_steps={DRL_STEPS_PER_LEVEL}",
                       "sampler.steps_per_level=none"),
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
    # r_mul = r at the noisiest level too: the EBM's input there is scaled by sqrt(r) like the other
    # levels' (the coupling term stays dropped, so the chain still samples the marginal at s).
    "final-level-scaled": ("schedule.final_level_unscaled=false",),
    # No final Tweedie denoising step when sampling.
    "no-tweedie-step": ("sampler.tweedie_step=false",),
    # Clamp every Langevin revision to [-1, 1] (the published option Langevin_clip, off there).
    "langevin-clip": ("langevin.clip=true",),
}


def drl(config: ExperimentConfig) -> ExperimentConfig:
    """DRL of ``config``'s networks and data, with DRL's published algorithm and optimisation (module docstring).

    DRL's published EMA decay and warm-up replace CDRL's published ones; a preset or suite that
    scaled them down for a short CPU budget keeps its own (a 0.999 EMA without warm-up would
    still be mostly the initial weights after a few hundred iterations).
    """
    cdrl_published = TrainingConfig()
    overrides = [
        "training.method=drl", f"langevin.n_steps={DRL_STEPS_PER_LEVEL}", "sampler.steps_per_level=none",
        "schedule.kind=ddpm-linear",
        # delta^2 = 2 * step_constant * k * beta here; DRL's is b^2 k beta with the same b^2.
        f"langevin.step_constant={config.langevin.step_constant / 2!r}",
        "training.variance_reduction=false", "sampler.tweedie_step=false",
        f"sampler.langevin_noise_scale={DRL_TEST_NOISE_SCALE}", "training.grad_clip=none", "training.ema_warmup=false",
        f"training.warmup_iterations={min(config.training.warmup_iterations, DRL_WARMUP_ITERATIONS)}",
    ]
    if config.training.ema_decay == cdrl_published.ema_decay:
        overrides.append(f"training.ema_decay={DRL_EMA_DECAY}")
    return apply_overrides(config, overrides)


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
