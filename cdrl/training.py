"""One cooperative training step (METHOD.md, "Training step"), shared by CDRL, DRL and ablations.

:class:`CooperativeTrainer` owns the networks, optimisers, learning-rate warm-ups and EMAs
of one run; :meth:`CooperativeTrainer.step` performs one iteration. The training loop,
checkpointing and logging live outside (``cdrl.train_loop``); DRL is the same step with
``training.method = "drl"`` (no initializer: chains start at x_t).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from cdrl.config import ExperimentConfig
from cdrl.ema import EMA
from cdrl.guidance import embedding_labels
from cdrl.langevin import langevin_revision
from cdrl.networks import build_energy_net, build_initializer
from cdrl.noise import GeneratorNoise
from cdrl.performance import ChainEnergy, as_network_input, compile_initializer, configure_device, ebm_autocast, \
    optimizer_options, prepare_network
from cdrl.sampler import propose
from cdrl.schedule import Level, LogSNRSchedule, broadcast, diffuse, posterior


@dataclass
class StepStats:
    """Detached per-step scalars (tensors: no host sync until someone reads them)."""

    ebm_loss: torch.Tensor
    #: mean(w f) over the data and over the revised samples: energies weighted by the loss's
    #: w = sigma_1 / sqrt(beta), as the published code logs them (the MLflow metric names).
    positive_energy: torch.Tensor
    negative_energy: torch.Tensor
    initializer_loss: torch.Tensor | None
    ebm_lr: float
    initializer_lr: float | None

    def as_floats(self) -> dict[str, float]:
        values = {"ebm_loss": self.ebm_loss, "positive_energy": self.positive_energy,
                  "negative_energy": self.negative_energy, "ebm_lr": self.ebm_lr}
        if self.initializer_loss is not None:
            values.update(initializer_loss=self.initializer_loss, initializer_lr=self.initializer_lr)
        return {key: float(value) for key, value in values.items()}


def _linear_warmup(warmup: int, lead: int = 0):
    return lambda iteration: 1.0 if warmup <= 0 else min(1.0, (iteration + lead) / float(warmup))


class CooperativeTrainer:
    def __init__(self, config: ExperimentConfig, device: torch.device | str = "cpu",
                 distributed: bool = False, generator: torch.Generator | None = None):
        self.config = config
        self.device = torch.device(device)
        self.schedule = LogSNRSchedule(config.schedule)
        self.generator = generator
        self.noise = GeneratorNoise(generator)
        training, performance = config.training, config.performance
        configure_device(performance, self.device)
        self.ebm = prepare_network(build_energy_net(config.energy, config.schedule).to(self.device), performance)
        self.ebm_optimizer = torch.optim.Adam(self.ebm.parameters(), lr=training.ebm_lr, betas=training.adam_betas,
                                              **optimizer_options(performance))
        self.ebm_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.ebm_optimizer, _linear_warmup(training.warmup_iterations))
        self.ebm_ema = EMA(self.ebm, training.ema_decay, training.ema_warmup)
        self.initializer: nn.Module | None = None
        if training.method == "cdrl":
            self.initializer = prepare_network(build_initializer(config.initializer).to(self.device), performance)
            compile_initializer(self.initializer, performance)
            self.initializer_optimizer = torch.optim.AdamW(
                self.initializer.parameters(), lr=training.initializer_lr, betas=training.adam_betas,
                weight_decay=training.initializer_weight_decay, **optimizer_options(performance))
            self.initializer_scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.initializer_optimizer,
                _linear_warmup(training.warmup_iterations, training.initializer_warmup_lead))
            self.initializer_ema = EMA(self.initializer, training.ema_decay, training.ema_warmup)
        # DDP wrappers carry the parameter-gradient passes; Langevin uses the bare modules
        # (input gradients only). DDP broadcasts rank 0's spectral-norm u/v buffers each forward.
        self.ebm_for_loss: nn.Module = self.ebm
        self.initializer_for_loss: nn.Module | None = self.initializer
        self.distributed = distributed
        if distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ebm_for_loss = nn.parallel.DistributedDataParallel(self.ebm, device_ids=device_ids)
            if self.initializer is not None:
                self.initializer_for_loss = nn.parallel.DistributedDataParallel(self.initializer,
                                                                                device_ids=device_ids)
        self.chain_ebm = ChainEnergy(self.ebm, performance, self.device)
        self.sigma_lowest = self.schedule.sigma_lowest()
        self.iteration = 0

    @property
    def conditional(self) -> bool:
        return self.config.energy.num_classes is not None

    def _conditioning(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Class c -> embedding index c + 1, dropped to the null class 0 with probability label_dropout."""
        if not self.conditional:
            return None
        if labels is None:
            raise ValueError("a class-conditional preset needs labels: use a labelled dataset")
        condition = embedding_labels(labels, batch, self.device)
        keep = torch.rand(batch, generator=self.generator, device=self.device) >= self.config.training.label_dropout
        return torch.where(keep, condition, torch.zeros_like(condition))

    def _noisy_pair(self, x: torch.Tensor, level: Level) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.training.variance_reduction:
            # Same noise at both levels: x_s and x_t lie on one diffusion path.
            eps = self.noise.randn_like(x)
            return diffuse(x, level.logsnr_t, eps), diffuse(x, level.logsnr_s, eps)
        x_t = diffuse(x, level.logsnr_t, self.noise.randn_like(x))
        reverse = posterior(x, x_t, level.logsnr_s, level.logsnr_t)
        return x_t, reverse.mean + reverse.std * self.noise.randn_like(x)

    def step(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> StepStats:
        config, training, performance = self.config, self.config.training, self.config.performance
        x = as_network_input(x.to(self.device), performance)
        batch = x.shape[0]
        index = torch.randint(1, self.schedule.n_levels + 1, (batch,), generator=self.generator, device=self.device)
        # In range by construction: skip the range check, a host sync on CUDA.
        level = self.schedule.level(index, device=self.device, check=False)
        condition = self._conditioning(labels, batch)
        x_t, x_s = self._noisy_pair(x, level)
        weight = self.sigma_lowest / torch.sqrt(level.beta) if training.loss_weighting else torch.ones_like(level.beta)
        root_r = broadcast(torch.sqrt(level.r_mul), x)

        self.ebm_optimizer.zero_grad(set_to_none=True)
        # Positive phase in train mode: the step's one spectral-norm power iteration happens here.
        # Under DDP its gradients only accumulate locally: the negative phase's backward all-reduces
        # the sum once (the same average, half the communication).
        self.ebm.train()
        with self.ebm_for_loss.no_sync() if self.distributed else contextlib.nullcontext():
            with ebm_autocast(performance, self.device):
                positive = self.ebm_for_loss(x_s * root_r, level.logsnr_s, condition).float()
            positive_loss = -(positive * weight).mean()
            positive_loss.backward()

        initializer_start = None
        if self.initializer is not None:
            self.initializer_optimizer.zero_grad(set_to_none=True)
            self.initializer.train()
            proposal = lambda y, logsnr: self.initializer_for_loss(y, logsnr, condition)  # noqa: E731
            initializer_start = propose(proposal, x_t, level, self.noise, training.initializer_noise)
            start = initializer_start.detach()
        else:
            start = x_t
        # Revision in eval mode, so power iterations do not advance during sampling.
        self.ebm.eval()
        with self.chain_ebm.frozen() as chain_energy:
            revised = langevin_revision(lambda y, logsnr: chain_energy(y, logsnr, condition), start, x_t, level,
                                        config.langevin, self.schedule.logsnr_max, noise=self.noise)
        with ebm_autocast(performance, self.device):
            negative = self.ebm_for_loss(revised * root_r, level.logsnr_s, condition).float()
        negative_loss = (negative * weight).mean()
        negative_loss.backward()
        if training.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.ebm.parameters(), training.grad_clip)
        self.ebm_optimizer.step()
        self.ebm_scheduler.step()
        self.ebm_ema.update()

        initializer_loss = None
        if initializer_start is not None:
            # Regress the proposal onto the revised sample (scaled space), summed over pixels.
            initializer_loss = (revised * root_r - initializer_start).pow(2).flatten(1).sum(dim=1).mean()
            initializer_loss.backward()
            if training.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.initializer.parameters(), training.grad_clip)
            self.initializer_optimizer.step()
            self.initializer_scheduler.step()
            self.initializer_ema.update()
            initializer_loss = initializer_loss.detach()

        self.iteration += 1
        return StepStats(
            ebm_loss=(positive_loss + negative_loss).detach(),
            positive_energy=-positive_loss.detach(),
            negative_energy=negative_loss.detach(),
            initializer_loss=initializer_loss,
            ebm_lr=self.ebm_scheduler.get_last_lr()[0],
            initializer_lr=self.initializer_scheduler.get_last_lr()[0] if self.initializer is not None else None,
        )

    @contextlib.contextmanager
    def ema_networks(self) -> Iterator[None]:
        """The EMA weights in both networks, in eval mode (for sampling); the live weights come back on exit."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.ebm_ema.average_parameters())
            self.ebm.eval()
            if self.initializer is not None:
                stack.enter_context(self.initializer_ema.average_parameters())
                self.initializer.eval()
            yield

    def start_from(self, state: dict) -> None:
        """Continue from stored network weights only (e.g. an exported model): optimisers fresh, EMAs restarted there."""
        training = self.config.training
        self.ebm.load_state_dict(state["ebm"])
        self.ebm_ema = EMA(self.ebm, training.ema_decay, training.ema_warmup)
        if self.initializer is not None:
            self.initializer.load_state_dict(state["initializer"])
            self.initializer_ema = EMA(self.initializer, training.ema_decay, training.ema_warmup)

    def state_dict(self) -> dict:
        state = {"iteration": self.iteration, "ebm": self.ebm.state_dict(),
                 "ebm_optimizer": self.ebm_optimizer.state_dict(), "ebm_scheduler": self.ebm_scheduler.state_dict(),
                 "ebm_ema": self.ebm_ema.state_dict()}
        if self.initializer is not None:
            state.update(initializer=self.initializer.state_dict(),
                         initializer_optimizer=self.initializer_optimizer.state_dict(),
                         initializer_scheduler=self.initializer_scheduler.state_dict(),
                         initializer_ema=self.initializer_ema.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.ebm.load_state_dict(state["ebm"])
        self.ebm_optimizer.load_state_dict(state["ebm_optimizer"])
        self.ebm_scheduler.load_state_dict(state["ebm_scheduler"])
        self.ebm_ema.load_state_dict(state["ebm_ema"])
        if self.initializer is not None:
            self.initializer.load_state_dict(state["initializer"])
            self.initializer_optimizer.load_state_dict(state["initializer_optimizer"])
            self.initializer_scheduler.load_state_dict(state["initializer_scheduler"])
            self.initializer_ema.load_state_dict(state["initializer_ema"])

    def rng_state(self) -> dict[str, torch.Tensor]:
        """This process's random streams, for a checkpoint: torch's global one, the trainer's and CUDA's."""
        # Python's and numpy's global RNGs are not used in training (batches are seeded per batch).
        state = {"torch": torch.get_rng_state(), "trainer": self.generator.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"])
        self.generator.set_state(state["trainer"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)
