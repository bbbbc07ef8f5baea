"""Speed options that keep the math (``ExperimentConfig.performance``); the defaults are exact float32.

Every option acts inside the one training step (:mod:`cdrl.training`) and the one Langevin
chain (:mod:`cdrl.langevin`, :mod:`cdrl.sampler`); none is a second copy of the algorithm.
:class:`ChainEnergy` is the energy network as the chains call it: spectral-norm weights
computed once per chain (always: bit-identical to the per-step recomputation), then the
options below. ``cdrl-bench perf`` (benchmarks/speed/perf.py) measures each of them against the FLOP count.
"""

from __future__ import annotations

import collections
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
    #: torch.compile the energy and its input gradient as the Langevin chains call them (one graph:
    #: forward and backward fused) and the initializer's forward: "inductor" fuses the element-wise
    #: work around the convolutions and the Python dispatch of the small networks; "cuda-graphs" also
    #: replays each fixed-shape call as one CUDA graph (one recording per batch shape).
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


#: Calls of compiled graphs since the process started, by network ("chain": the energy and its input
#: gradient, "initializer"): what actually ran, so that a compiled path that fell back to eager
#: (a graph break, a guard failure, a wiring mistake) reads 0 instead of "compiled".
compiled_graph_calls: collections.Counter[str] = collections.Counter()


def _counting_inductor(network: str, config: PerformanceConfig) -> Callable:
    """torch.compile's inductor backend whose compiled graphs count their calls in :data:`compiled_graph_calls`."""
    from torch._inductor.compile_fx import compile_fx

    def backend(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        patches = {"triton.cudagraphs": True} if config.chain_compile == "cuda-graphs" else None
        compiled = compile_fx(graph, example_inputs, config_patches=patches)

        def run(*args: Any) -> Any:
            compiled_graph_calls[network] += 1
            return compiled(*args)
        return run
    return backend


def compile_initializer(initializer: nn.Module, config: PerformanceConfig) -> None:
    """Compile the initializer's forward in place when ``chain_compile`` asks (idempotent; same state-dict keys)."""
    if config.chain_compile != "off" and getattr(initializer, "_compiled_call_impl", None) is None:
        # dynamic=False: one specialised graph per batch shape, as CUDA graphs require.
        initializer.compile(backend=_counting_inductor("initializer", config), dynamic=False)


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


class _PrecomputedGradient(torch.autograd.Function):
    """Energies whose input gradient was computed with them (by one compiled graph).

    backward scales each example's stored gradient by the incoming gradient of its energy. That is
    the chain rule because an example's energy depends on its own input alone (no batch statistics
    in eval mode), so any caller (a Langevin step, Tweedie's step, a guided sum of energies)
    differentiates through it as through the network.
    """

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, energy: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gradient)
        return energy

    @staticmethod
    def backward(ctx: Any, grad_energy: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (gradient,) = ctx.saved_tensors
        return grad_energy.view(-1, *([1] * (gradient.dim() - 1))) * gradient, None, None


class ChainEnergy:
    """The energy network for Langevin chains and the Tweedie step (input gradients only).

    ``with chain.frozen() as energy:`` yields ``energy(y, logsnr, labels=None)`` backed by
    weights frozen for the context (:func:`cdrl.networks.frozen_spectral_norm`), compiled,
    autocast and channels-last as configured. The network's conditioning on (logsnr, labels)
    is computed once for as long as the chain passes the same two tensor objects, as a chain
    at one level does (:meth:`cdrl.networks.EnergyNet.conditioning`); same arithmetic, bit for
    bit. The network's parameters do not require gradients inside the context (their flags are
    restored after it). Keep one instance per network: compiled code is cached on it. The
    network must be in eval mode inside the context. Compiled (``chain_compile``), each call
    computes the energies and their input gradient in one graph, and autograd through the
    result uses that gradient (:class:`_PrecomputedGradient`): callers only differentiate it.
    """

    def __init__(self, network: EnergyNet, config: PerformanceConfig, device: torch.device | str):
        self.network = network
        self.config = config
        self.device = torch.device(device)
        self._cached: tuple[torch.Tensor, torch.Tensor | None, EnergyConditioning] | None = None
        if config.chain_compile != "off":
            # One graph for forward and input gradient (torch.func), fullgraph so that a graph break
            # fails instead of running eager. dynamic=False: every batch shape gets its own
            # specialised graph (and CUDA graph); training and sampling use one or two shapes.
            value_and_gradient = torch.func.grad_and_value(self._energy_sum, has_aux=True)
            self._value_and_gradient = torch.compile(value_and_gradient, backend=_counting_inductor("chain", config),
                                                     fullgraph=True, dynamic=False)

    def _energy_sum(self, y: torch.Tensor, conditioning: EnergyConditioning) -> tuple[torch.Tensor, torch.Tensor]:
        energy = self.network.energy(y, conditioning)
        return energy.sum(), energy

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
            if self.config.chain_compile == "off":
                return self.network.energy(as_network_input(y, self.config), conditioning).float()
            gradient, (_, energy) = self._value_and_gradient(as_network_input(y.detach(), self.config), conditioning)
            if self.config.chain_compile == "cuda-graphs":
                # The next replay overwrites a graph's outputs, and a guided chain calls several energies
                # before it differentiates them.
                gradient, energy = gradient.clone(), energy.clone()
        return _PrecomputedGradient.apply(y, energy.float(), gradient)

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
