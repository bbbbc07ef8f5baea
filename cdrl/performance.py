"""Speed options that keep the math (``ExperimentConfig.performance``); the defaults are exact float32.

Every option acts inside the one training step (:mod:`cdrl.training`) and the one Langevin
chain (:mod:`cdrl.langevin`, :mod:`cdrl.sampler`); none is a second copy of the algorithm.
:class:`ChainEnergy` is the energy network as the chains call it: spectral-norm weights
computed once per chain (always: bit-identical to the per-step recomputation), then the
options below. ``cdrl-bench perf`` (benchmarks/speed/perf.py) measures each of them against the FLOP count.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

import torch
from torch import nn

from cdrl.errors import CdrlBenchError
from cdrl.networks import EnergyConditioning, EnergyNet, frozen_spectral_norm
from cdrl.typed import at_least


class PerformanceError(CdrlBenchError):
    """A speed option that this device cannot run; the message names the fix."""


@dataclass(frozen=True)
class PerformanceConfig:
    #: NHWC ("channels last") parameters and activations for the convolutional networks, the
    #: layout oneDNN and cuDNN run fastest. Same arithmetic.
    channels_last: bool = False
    #: CUDA only: TF32 tensor-core matmuls and convolutions (10-bit-mantissa products). Off means
    #: IEEE float32 everywhere, which also turns off the TF32 convolutions PyTorch enables by default.
    tf32: bool = False
    #: Fused Adam/AdamW (one kernel over all parameters; CUDA and CPU). Same update to rounding.
    fused_optimizer: bool = False
    #: torch.compile the energy network as the Langevin chains call it (forward and input gradient):
    #: "inductor" fuses the element-wise work around the convolutions; "cuda-graphs" also replays each
    #: fixed-shape step as one CUDA graph (torch.compile's "reduce-overhead"; one recording per batch shape).
    chain_compile: Literal["off", "inductor", "cuda-graphs"] = "off"
    #: Run the energy network under bfloat16 autocast (chains and energy losses); parameters, Langevin
    #: state and losses stay float32. Changes the arithmetic: its effect is a benchmark claim.
    ebm_precision: Literal["float32", "bfloat16"] = "float32"
    #: CPU threads of each process (torch.set_num_threads); None: torch's default, every core. On a
    #: shared machine one thread per process is often fastest (:func:`use_threads` warns when busy).
    threads: int | None = field(default=None, metadata=at_least(1))


def use_threads(threads: int | None) -> str | None:
    """Run torch on ``threads`` CPU threads (None: leave torch's choice); a warning when the machine is too busy.

    OpenMP threads spin while they wait for each other: with other work on the cores, a
    multi-threaded process waits for descheduled peers (25-40x slower measured on a loaded
    2-core machine). The warning is returned, for the caller to print once.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    in_use, cores, load = torch.get_num_threads(), os.cpu_count() or 1, os.getloadavg()[0]
    # Busy: the other work on the machine (the load average) leaves fewer free cores than threads.
    if in_use > 1 and cores - load < in_use - 1:
        return (f"load average {load:.1f} on {cores} cores, and this process runs {in_use} threads: they will wait "
                "for each other; pass --threads 1 (or set OMP_WAIT_POLICY=PASSIVE)")
    return None


def configure_device(config: PerformanceConfig, device: torch.device) -> None:
    """Set the process-wide float32 matmul/convolution precision for ``config`` on CUDA."""
    if config.chain_compile == "cuda-graphs" and device.type != "cuda":
        raise PerformanceError(f"performance.chain_compile=cuda-graphs needs a CUDA device, not {device}: "
                               "use performance.chain_compile=inductor")
    if device.type == "cuda":
        precision = "tf32" if config.tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision


def prepare_network(network: nn.Module, config: PerformanceConfig) -> nn.Module:
    """Apply the memory-format option in place (before optimisers and EMAs are built); returns ``network``."""
    if config.channels_last:
        network.to(memory_format=torch.channels_last)
    return network


def optimizer_options(config: PerformanceConfig) -> dict[str, Any]:
    """Extra keyword arguments for torch.optim.Adam/AdamW."""
    return {"fused": True} if config.fused_optimizer else {}


def as_network_input(x: torch.Tensor, config: PerformanceConfig) -> torch.Tensor:
    """``x`` in the networks' memory format (a no-op for the default layout and for 2-D toy points)."""
    if config.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def ebm_autocast(config: PerformanceConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast around energy-network calls when ``ebm_precision`` asks for it."""
    if config.ebm_precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class ChainEnergy:
    """The energy network for Langevin chains and the Tweedie step (input gradients only).

    ``with chain.frozen() as energy:`` yields ``energy(y, logsnr, labels=None)`` backed by
    weights frozen for the context (:func:`cdrl.networks.frozen_spectral_norm`), compiled,
    autocast and channels-last as configured. The network's conditioning on (logsnr, labels)
    is computed once for as long as the chain passes the same two tensor objects, as a chain
    at one level does (:meth:`cdrl.networks.EnergyNet.conditioning`); same arithmetic, bit for
    bit. The network's parameters do not require gradients inside the context (their flags are
    restored after it). Keep one instance per network: compiled code is cached on it. The
    network must be in eval mode inside the context.
    """

    def __init__(self, network: EnergyNet, config: PerformanceConfig, device: torch.device | str):
        self.network = network
        self.config = config
        self.device = torch.device(device)
        self._cached: tuple[torch.Tensor, torch.Tensor | None, EnergyConditioning] | None = None
        if config.chain_compile == "off":
            self._body: Callable[..., torch.Tensor] = network.energy
        else:
            # dynamic=False: every batch shape gets its own specialised graph (and CUDA graph),
            # which is what CUDA graphs require; training and sampling use one or two shapes.
            mode = "reduce-overhead" if config.chain_compile == "cuda-graphs" else None
            self._body = torch.compile(network.energy, mode=mode, dynamic=False)

    def _conditioning(self, logsnr: torch.Tensor, labels: torch.Tensor | None) -> EnergyConditioning:
        # Keyed on the tensor objects themselves (held here, so their ids cannot be reused).
        if self._cached is None or self._cached[0] is not logsnr or self._cached[1] is not labels:
            with torch.no_grad():  # chains differentiate with respect to y only
                self._cached = (logsnr, labels, self.network.conditioning(logsnr, labels))
        return self._cached[2]

    def _energy(self, y: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        with ebm_autocast(self.config, self.device):
            conditioning = self._conditioning(logsnr, labels)
            if self.config.chain_compile == "cuda-graphs":
                # Each call starts a new graph replay: the previous step's outputs are no longer read.
                torch.compiler.cudagraph_mark_step_begin()
            energy = self._body(as_network_input(y, self.config), conditioning)
        return energy.float()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[Callable[..., torch.Tensor]]:
        # Chains differentiate with respect to y alone. With the parameters out of autograd a
        # compiled chain's backward computes input gradients only: AOTAutograd otherwise also
        # builds the parameter gradients and throws them away (3x slower convolution backward
        # measured on CPU). Eager autograd.grad prunes them either way: same numbers.
        parameters = list(self.network.parameters())
        requires_grad = [parameter.requires_grad for parameter in parameters]
        try:
            for parameter in parameters:
                parameter.requires_grad_(False)
            with frozen_spectral_norm(self.network):
                yield self._energy
        finally:
            self._cached = None  # the weights may change after the context
            for parameter, flag in zip(parameters, requires_grad):
                parameter.requires_grad_(flag)
