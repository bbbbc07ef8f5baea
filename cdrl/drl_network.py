"""What DRL's published energy network (Gao et al. 2021, ``net_res_temb2``) does differently.

Its body is the one CDRL's EBM took over (:class:`cdrl.networks.EnergyNet` builds both,
``architecture="drl"`` for this one); METHOD.md lists the differences, and this module holds
the pieces that are DRL's alone:

* the time input is the integer index of the level (0 = least noisy) instead of a function of
  logSNR: :func:`level_index` reads it off the schedule's grid;
* every weight starts from a uniform fan-average variance scaling (Glorot) and every bias at
  zero, each residual block's second convolution at scale 1e-10 (:func:`published_init_`);
* that near-zero convolution is spectrally normalised only where its norm exceeds one,
  W / max(sigma, 1) (:class:`SpectralNormAtMostOne`): dividing a near-zero W by its own
  sigma would make the residual branch start at full scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

from cdrl.schedule import LogSNRSchedule, ScheduleConfig

#: The published initial scale of each residual block's second convolution (``init_scale=0``,
#: which its initializer turns into 1e-10).
RESIDUAL_OUTPUT_INIT_SCALE = 1e-10
#: Added to sigma before bounding, as published.
SIGMA_EPSILON = 1e-6


def level_logsnrs(schedule: ScheduleConfig) -> torch.Tensor:
    """The logSNR of levels 0..T of ``schedule``: level i is DRL's integer time input i."""
    return LogSNRSchedule(schedule).grid()[1]


def level_index(logsnr: torch.Tensor, logsnrs: torch.Tensor) -> torch.Tensor:
    """The index of the level of each logSNR (the nearest of ``logsnrs``), as float positions for the sinusoid."""
    return torch.argmin(torch.abs(logsnr.float()[:, None] - logsnrs[None, :].to(logsnr.device)), dim=1).float()


def published_init_(layer: nn.Module, scale: float = 1.0) -> None:
    """Glorot-uniform weight of variance ``scale`` times Glorot's, zero bias (DRL's ``default_init``)."""
    nn.init.xavier_uniform_(layer.weight, gain=math.sqrt(scale))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class SpectralNormAtMostOne(SpectralNorm):
    """W / max(sigma + 1e-6, 1): torch's power iteration and sigma, applied only above one."""

    def compute_weight(self, module: nn.Module, do_power_iteration: bool) -> torch.Tensor:
        normalised = super().compute_weight(module, do_power_iteration)  # W / sigma, u and v updated
        # sigma again from the updated u and v, copied as torch does so that the next power iteration
        # may update them in place while autograd still holds these.
        u = getattr(module, self.name + "_u").clone(memory_format=torch.contiguous_format)
        v = getattr(module, self.name + "_v").clone(memory_format=torch.contiguous_format)
        sigma = torch.dot(u, torch.mv(self.reshape_weight_to_matrix(getattr(module, self.name + "_orig")), v))
        return normalised * (sigma / torch.clamp(sigma + SIGMA_EPSILON, min=1.0))


def spectral_norm_at_most_one(layer: nn.Module) -> nn.Module:
    """``torch.nn.utils.spectral_norm`` with its hook made a :class:`SpectralNormAtMostOne`.

    The hook keeps torch's buffers, state-dict layout and eval-mode behaviour (no power iteration),
    so :func:`cdrl.networks.frozen_spectral_norm` and checkpoints treat it like any other.
    """
    nn.utils.spectral_norm(layer)
    for hook in layer._forward_pre_hooks.values():
        if type(hook) is SpectralNorm:
            hook.__class__ = SpectralNormAtMostOne
    return layer
