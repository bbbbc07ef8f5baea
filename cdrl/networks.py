"""The energy network f(y, logsnr) and the initializer g(x_t, logsnr), as published.

Module and parameter names follow the authors' code so that their checkpoints map one to
one onto these networks (``official_full_layouts.json``): ``temb_map1``, ``module_list``,
``short_cut``, ``downs``/``ups``, ``time_mlp``... Both networks take ``labels`` for the
class-conditional variants: index 0 is the null class used by classifier-free guidance,
classes are 1..num_classes. Image networks use convolutions; the 2-D toy networks
(``architecture="mlp"``) use the same blocks with Linear layers.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

from cdrl.drl_network import (RESIDUAL_OUTPUT_INIT_SCALE, level_index, level_logsnrs, published_init_,
                               spectral_norm_at_most_one)
from cdrl.schedule import ScheduleConfig
from cdrl.typed import at_least, bounds

Activation = Literal["lrelu", "swish"]


@dataclass(frozen=True)
class EnergyNetConfig:
    #: "conv": CDRL's published EBM; "mlp": its 2-D toy EBM; "drl": DRL's published EBM (Gao et al.
    #: 2021), the same body conditioned on the integer level index, with its own initialisation,
    #: spectral norm and head (cdrl.drl_network).
    architecture: Literal["conv", "mlp", "drl"] = "conv"
    in_channels: int = field(default=3, metadata=at_least(1))
    #: Width of the first layer and of the time embedding (the published ``temb_dim``).
    width: int = field(default=128, metadata=at_least(1))
    channel_mults: tuple[int, ...] = field(default=(1, 2, 2, 2), metadata=at_least(1))
    blocks_per_level: int = field(default=8, metadata=at_least(1))
    activation: Activation = "lrelu"
    spectral_norm: bool = True
    #: Add -||x||^2 / 2 to the energy (published option ``add_q``, off in the paper).
    add_quadratic: bool = False
    #: Class-conditional when set; embedding index 0 is the null class.
    num_classes: int | None = field(default=None, metadata=at_least(1))


@dataclass(frozen=True)
class InitializerConfig:
    architecture: Literal["unet", "mlp"] = "unet"
    channels: int = field(default=3, metadata=at_least(1))
    image_size: int = field(default=32, metadata=at_least(1))
    width: int = field(default=64, metadata=at_least(1))
    #: U-Net only (as are image_size, attention_resolutions, dropout and num_heads; the published
    #: toy MLP has no dropout): width multiplier of each resolution, all equal as published.
    channel_mults: tuple[int, ...] = field(default=(1, 1, 1), metadata=at_least(1))
    blocks_per_level: int = field(default=3, metadata=at_least(1))
    #: Resolutions (in pixels, counted from image_size) whose blocks are followed by attention.
    attention_resolutions: tuple[int, ...] = field(default=(16, 8), metadata=at_least(1))
    dropout: float = field(default=0.1, metadata=bounds(at_least=0, below=1))
    num_heads: int = field(default=1, metadata=at_least(1))
    #: Output x + network(x): the proposal starts at its input (published default).
    residual: bool = True
    tanh_output: bool = False
    #: MLP initializer only: width of the time embedding (published toy: 128).
    time_width: int = field(default=128, metadata=at_least(1))
    num_classes: int | None = field(default=None, metadata=at_least(1))


def logsnr_to_time_input(logsnr: torch.Tensor) -> torch.Tensor:
    """Map logSNR to (0, 1): arctan(exp(-logsnr / 2)) / (pi / 2), logsnr clamped to [-20, 20]."""
    return torch.arctan(torch.exp(-0.5 * torch.clamp(logsnr, min=-20.0, max=20.0))) / (0.5 * math.pi)


def sinusoidal_embedding(time_input: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style embedding of ``1000 * time_input`` (frequencies exp(-ln(1e4) k / (half - 1)))."""
    return sinusoid(1000.0 * time_input.float(), dim)


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """concat[sin, cos] of ``positions`` times the frequencies exp(-ln(1e4) k / (half - 1)), k < half."""
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32, device=positions.device)
                            * -(math.log(10000.0) / (half - 1)))
    angles = positions[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, 1)) if dim % 2 else embedding


def _activation(name: Activation) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "lrelu":
        return lambda x: F.leaky_relu(x, negative_slope=0.2)
    if name == "swish":
        return F.silu
    raise ValueError(f"unknown activation {name!r}: use 'lrelu' or 'swish'")


def _one_hot(labels: torch.Tensor | None, num_classes: int | None, batch_size: int,
             device: torch.device) -> torch.Tensor | None:
    if num_classes is None:
        if labels is not None:
            raise ValueError("labels given to an unconditional network: build it with num_classes set")
        return None
    if labels is None:
        labels = torch.zeros(batch_size, dtype=torch.long, device=device)
    return F.one_hot(labels.long(), num_classes + 1).float()


# --------------------------------------------------------------------------- energy network

class EnergyResidualBlock(nn.Module):
    """act -> layer1 -> + act(temb_map(act(emb))) -> act -> layer2 * g, plus the shortcut.

    DRL's block (``drl``) adds temb_map(act(emb)) without the outer act, and its layer2 starts
    near zero under a spectral norm bounded by one (cdrl.drl_network).
    """

    def __init__(self, in_width: int, out_width: int, embedding_width: int,
                 make_layer: "_LayerFactory", activation: Activation, spatial: bool, drl: bool = False):
        super().__init__()
        self.act = _activation(activation)
        self.spatial = spatial
        self.activate_time_bias = not drl
        gain_shape = (1, out_width, 1, 1) if spatial else (1, out_width)
        # Registered first so that the state dict order matches the published checkpoints.
        self.g = nn.Parameter(torch.ones(gain_shape))
        self.conv1 = make_layer(in_width, out_width)
        self.conv2 = make_layer(out_width, out_width, residual_output=drl)
        self.temb_map = make_layer.linear(embedding_width, out_width)
        self.short_cut = make_layer(in_width, out_width) if in_width != out_width else nn.Identity()

    def time_bias(self, embedding: torch.Tensor) -> torch.Tensor:
        """act(temb_map(act(emb))) (DRL's: no outer act), shaped to add to the block's activations: a function of
        (logsnr, label) only."""
        time_bias = self.temb_map(self.act(embedding))
        if self.activate_time_bias:
            time_bias = self.act(time_bias)
        return time_bias[:, :, None, None] if self.spatial else time_bias

    def forward(self, x: torch.Tensor, time_bias: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(x)) + time_bias
        h = self.conv2(self.act(h)) * self.g
        return h + self.short_cut(x)


class _LayerFactory:
    """Builds (optionally spectrally normalised) conv-or-linear layers of the energy network.

    ``published_init``: DRL's initialisation (cdrl.drl_network) instead of torch's defaults.
    """

    def __init__(self, spatial: bool, use_spectral_norm: bool, published_init: bool = False):
        self.spatial, self.use_spectral_norm, self.published_init = spatial, use_spectral_norm, published_init

    def _wrap(self, layer: nn.Module, residual_output: bool = False) -> nn.Module:
        if self.published_init:
            published_init_(layer, RESIDUAL_OUTPUT_INIT_SCALE if residual_output else 1.0)
        if not self.use_spectral_norm:
            return layer
        return spectral_norm_at_most_one(layer) if residual_output else nn.utils.spectral_norm(layer)

    def __call__(self, in_width: int, out_width: int, residual_output: bool = False) -> nn.Module:
        """``residual_output``: DRL's near-zero residual-branch output layer (the only kind with it set)."""
        if self.spatial:
            return self._wrap(nn.Conv2d(in_width, out_width, kernel_size=3, padding=1), residual_output)
        return self._wrap(nn.Linear(in_width, out_width), residual_output)

    def linear(self, in_width: int, out_width: int) -> nn.Module:
        return self._wrap(nn.Linear(in_width, out_width))


class EnergyConditioning(NamedTuple):
    """What :class:`EnergyNet` computes from (logsnr, label) alone (see :meth:`EnergyNet.conditioning`)."""

    #: act(temb_map(act(emb))) of each residual block, in order.
    block_biases: tuple[torch.Tensor, ...]
    #: temb_final(act(emb)), the per-channel weights of the conv head; None for the MLP.
    head: torch.Tensor | None


class EnergyNet(nn.Module):
    """f(y, logsnr[, label]) -> one scalar energy per example (higher = more likely).

    ``architecture="drl"`` needs ``schedule``: its time input is the index of the level of each logSNR.
    """

    def __init__(self, config: EnergyNetConfig, schedule: ScheduleConfig | None = None):
        super().__init__()
        self.config = config
        spatial = config.architecture != "mlp"
        drl = config.architecture == "drl"
        if drl:
            if schedule is None:
                raise ValueError("DRL's energy network is conditioned on the level index: build it with the schedule")
            # Derived from the config, so kept out of the state dict.
            self.register_buffer("level_logsnrs", level_logsnrs(schedule), persistent=False)
        make_layer = _LayerFactory(spatial, config.spectral_norm, published_init=drl)
        self.act = _activation(config.activation)
        # ReLU before the sum-pooling head when the body is leaky-ReLU, as published.
        self.final_act = F.relu if config.activation == "lrelu" else F.silu
        width, embedding_width = config.width, 4 * config.width
        self.temb_map1 = make_layer.linear(width, embedding_width)
        self.temb_map2 = make_layer.linear(embedding_width, embedding_width)
        if config.num_classes is not None:
            self.y_map = make_layer.linear(config.num_classes + 1, embedding_width)
        layers: list[nn.Module] = [make_layer(config.in_channels, width)]
        in_width = width
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.blocks_per_level):
                layers.append(EnergyResidualBlock(in_width, width * mult, embedding_width, make_layer,
                                                  config.activation, spatial, drl))
                in_width = width * mult
            if spatial and level != len(config.channel_mults) - 1:
                layers.append(nn.AvgPool2d(2))
        self.module_list = nn.ModuleList(layers)
        if spatial:
            # DRL's head projection has a bias; neither is spectrally normalised.
            self.temb_final = nn.Linear(embedding_width, in_width, bias=drl)
            if drl:
                published_init_(self.temb_final)
        else:
            self.final_dense = nn.Linear(in_width, 1, bias=False)

    def forward(self, x: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.energy(x, self.conditioning(logsnr, labels))

    def conditioning(self, logsnr: torch.Tensor, labels: torch.Tensor | None = None) -> EnergyConditioning:
        """Every term that depends on (logsnr, label) alone: one bias per residual block and the head's weights.

        Constant along a Langevin chain, so :class:`cdrl.performance.ChainEnergy` computes it once
        per chain; for the 2-D toy MLP it is about half of a forward pass.
        """
        if self.config.architecture == "drl":
            embedding = sinusoid(level_index(logsnr, self.level_logsnrs), self.config.width)
        else:
            embedding = sinusoidal_embedding(logsnr_to_time_input(logsnr), self.config.width)
        embedding = self.temb_map2(self.act(self.temb_map1(embedding)))
        one_hot = _one_hot(labels, self.config.num_classes, logsnr.shape[0], logsnr.device)
        if one_hot is not None:
            embedding = embedding + self.y_map(one_hot)
        biases = tuple(layer.time_bias(embedding) for layer in self.module_list
                       if isinstance(layer, EnergyResidualBlock))
        head = self.temb_final(self.act(embedding)) if self.config.architecture != "mlp" else None
        return EnergyConditioning(biases, head)

    def energy(self, x: torch.Tensor, conditioning: EnergyConditioning) -> torch.Tensor:
        """f(x) given the :meth:`conditioning` of its (logsnr, label)."""
        biases = iter(conditioning.block_biases)
        h = self.module_list[0](x)
        for layer in self.module_list[1:]:
            h = layer(h, next(biases)) if isinstance(layer, EnergyResidualBlock) else layer(h)
        h = self.final_act(h)
        if self.config.architecture != "mlp":
            energy = (h.sum(dim=(2, 3)) * conditioning.head).sum(dim=1)
        else:
            energy = self.final_dense(h).sum(dim=1)
        if self.config.add_quadratic:
            energy = energy - 0.5 * x.flatten(1).pow(2).sum(dim=1)
        return energy


# --------------------------------------------------------------------------- initializer

class InitializerResidualBlock(nn.Module):
    """GroupNorm/SiLU residual block with scale-shift time conditioning and optional resampling."""

    def __init__(self, in_width: int, out_width: int, embedding_width: int, dropout: float,
                 resample: Literal["up", "down"] | None = None, spatial: bool = True):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, in_width, eps=1e-6)
        self.norm2 = nn.GroupNorm(32, out_width, eps=1e-6)
        self.resample = resample
        if spatial:
            self.conv1 = nn.Conv2d(in_width, out_width, kernel_size=3, padding=1)
            self.conv2 = nn.Conv2d(out_width, out_width, kernel_size=3, padding=1)
        else:
            self.conv1 = nn.Linear(in_width, out_width)
            self.conv2 = nn.Linear(out_width, out_width)
        nn.init.zeros_(self.conv2.weight)
        # Dropout is a module so that train()/eval() switch it (the published toy has none).
        self.dropout = nn.Dropout(dropout) if spatial else nn.Identity()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(embedding_width, 2 * out_width))
        if in_width == out_width:
            self.res_conv = nn.Identity()
        else:
            self.res_conv = nn.Conv2d(in_width, out_width, 1) if spatial else nn.Linear(in_width, out_width)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self._resample(F.silu(self.norm1(x)))
        x = self._resample(x)
        h = self.conv1(h)
        scale, shift = self.mlp(embedding).chunk(2, dim=1)
        if h.dim() == 4:
            scale, shift = scale[:, :, None, None], shift[:, :, None, None]
        h = F.silu(self.norm2(h) * (1.0 + scale) + shift)
        h = self.conv2(self.dropout(h))
        return h + self.res_conv(x)


class AttentionBlock(nn.Module):
    """Single- or multi-head self-attention over spatial positions, residual, zero-initialised output."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"attention width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(32, width, eps=1e-6)
        self.to_qkv = nn.Conv2d(width, 3 * width, 1)
        self.to_out = nn.Conv2d(width, width, 1)
        nn.init.zeros_(self.to_out.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, width, height, breadth = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=1)
        # (B, heads, positions, head_width); SDPA's default scale is head_width ** -0.5 as published.
        q, k, v = (t.reshape(batch, self.num_heads, width // self.num_heads, height * breadth).transpose(2, 3)
                   for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(2, 3).reshape(batch, width, height, breadth)
        return self.to_out(out) + x


class UNetInitializer(nn.Module):
    """g(x_t, logsnr_t[, label]): the U-Net that proposes x_s (scaled by sqrt(r)) from x_t."""

    def __init__(self, config: InitializerConfig):
        super().__init__()
        self.config = config
        dim, embedding_width = config.width, 4 * config.width
        self.init_conv = nn.Conv2d(config.channels, dim, kernel_size=3, padding=1)
        # Index 0 stands for the parameter-free sinusoid, keeping the published key names.
        self.time_mlp = nn.Sequential(nn.Identity(), nn.Linear(dim, embedding_width), nn.SiLU(),
                                      nn.Linear(embedding_width, embedding_width))
        if config.num_classes is not None:
            self.y_mlp = nn.Sequential(nn.Linear(config.num_classes + 1, embedding_width))
        widths = [dim, *(dim * mult for mult in config.channel_mults)]
        transitions = list(zip(widths[:-1], widths[1:]))
        attention = set(config.attention_resolutions)

        def block(in_width: int, out_width: int, resample: Literal["up", "down"] | None = None) -> nn.Module:
            return InitializerResidualBlock(in_width, out_width, embedding_width, config.dropout, resample)

        size = config.image_size
        # Both lists are registered before the middle blocks: the published state-dict order.
        self.downs, self.ups = nn.ModuleList(), nn.ModuleList()
        for index, (in_width, out_width) in enumerate(transitions):
            level = nn.ModuleList()
            for block_index in range(config.blocks_per_level):
                level.append(block(in_width if block_index == 0 else out_width, out_width))
                if size in attention:
                    level.append(AttentionBlock(out_width, config.num_heads))
            if index != len(transitions) - 1:
                level.append(block(out_width, out_width, "down"))
                size //= 2
            self.downs.append(level)
        mid_width = widths[-1]
        self.mid_block1 = block(mid_width, mid_width)
        self.mid_attn = AttentionBlock(mid_width, config.num_heads)
        self.mid_block2 = block(mid_width, mid_width)
        for index, (in_width, out_width) in enumerate(reversed(transitions)):
            level = nn.ModuleList()
            # Channel arithmetic exactly as published (it assumes equal widths across levels).
            for block_index in range(config.blocks_per_level + 1):
                level.append(block((in_width if block_index == 0 else out_width) * 2, out_width))
                if size in attention:
                    level.append(AttentionBlock(out_width, config.num_heads))
            if index != len(transitions) - 1:
                level.append(block(out_width, out_width, "up"))
                size *= 2
            self.ups.append(level)
        self.norm = nn.GroupNorm(32, dim, eps=1e-6)
        self.final_conv = nn.Conv2d(dim, config.channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.final_conv.weight)

    def _embedding(self, x: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        embedding = self.time_mlp(sinusoidal_embedding(logsnr_to_time_input(logsnr), self.config.width))
        one_hot = _one_hot(labels, self.config.num_classes, x.shape[0], x.device)
        return embedding if one_hot is None else embedding + self.y_mlp(one_hot)

    def forward(self, x: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        embedding = self._embedding(x, logsnr, labels)
        h = self.init_conv(x)
        skips = [h]
        for level in self.downs:
            for layer in level:
                if isinstance(layer, AttentionBlock):
                    skips[-1] = layer(skips[-1])
                else:
                    skips.append(layer(skips[-1], embedding))
        h = self.mid_block2(self.mid_attn(self.mid_block1(skips[-1], embedding)), embedding)
        for level in self.ups:
            for layer in level:
                if isinstance(layer, AttentionBlock):
                    h = layer(h)
                elif layer.resample == "up":
                    h = layer(h, embedding)
                else:
                    h = layer(torch.cat([h, skips.pop()], dim=1), embedding)
        return _proposal_output(x, self.final_conv(F.silu(self.norm(h))), self.config)


def _proposal_output(x: torch.Tensor, out: torch.Tensor, config: InitializerConfig) -> torch.Tensor:
    """The initializer's last step: x + out when residual, then tanh when asked."""
    if config.residual:
        out = x + out
    return torch.tanh(out) if config.tanh_output else out


class MLPInitializer(nn.Module):
    """The published 2-D toy initializer: Linear, GroupNorm residual blocks, residual output."""

    def __init__(self, config: InitializerConfig):
        super().__init__()
        self.config = config
        self.h1 = nn.Linear(config.channels, config.width)
        self.temb_map = nn.Sequential(nn.Linear(config.time_width, config.time_width), nn.SiLU(),
                                      nn.Linear(config.time_width, config.time_width))
        self.final_dense = nn.Linear(config.width, config.channels, bias=False)
        nn.init.zeros_(self.final_dense.weight)
        self.module_list = nn.ModuleList(
            InitializerResidualBlock(config.width, config.width, config.time_width, 0.0, spatial=False)
            for _ in range(config.blocks_per_level))
        if config.num_classes is not None:
            self.y_mlp = nn.Sequential(nn.Linear(config.num_classes + 1, config.time_width))

    def forward(self, x: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        embedding = self.temb_map(sinusoidal_embedding(logsnr_to_time_input(logsnr), self.config.time_width))
        one_hot = _one_hot(labels, self.config.num_classes, x.shape[0], x.device)
        if one_hot is not None:
            embedding = embedding + self.y_mlp(one_hot)
        h = self.h1(x)
        for block in self.module_list:
            h = block(h, embedding)
        return _proposal_output(x, self.final_dense(F.silu(h)), self.config)


@contextlib.contextmanager
def frozen_spectral_norm(network: nn.Module) -> Iterator[None]:
    """Compute every spectrally normalised weight W / sigma once and keep it for the context.

    In eval mode the spectral-norm hook recomputes W / sigma from unchanged W, u and v at every
    forward: a full pass over the weights per Langevin step. Inside this context each layer
    holds the value the hook would compute (bit for bit), detached, since a chain only needs
    input gradients. Use it only while parameters and u/v stay fixed (a chain, a sampling run).
    """
    if network.training:
        raise RuntimeError("frozen_spectral_norm needs the network in eval mode (no power iterations)")
    saved: list[tuple[nn.Module, dict]] = []
    try:
        for module in network.modules():
            hooks = {key: hook for key, hook in module._forward_pre_hooks.items() if isinstance(hook, SpectralNorm)}
            if not hooks:
                continue
            saved.append((module, dict(module._forward_pre_hooks)))
            for key, hook in hooks.items():
                with torch.no_grad():
                    setattr(module, hook.name, hook.compute_weight(module, do_power_iteration=False))
                del module._forward_pre_hooks[key]
        yield
    finally:
        # Restore each hook table in its original order; the next forward recomputes the weights.
        for module, hooks in saved:
            module._forward_pre_hooks.clear()
            module._forward_pre_hooks.update(hooks)


def build_energy_net(config: EnergyNetConfig, schedule: ScheduleConfig | None = None) -> EnergyNet:
    """The energy network; ``schedule`` (the experiment's) is needed by ``architecture="drl"`` alone."""
    return EnergyNet(config, schedule)


def build_initializer(config: InitializerConfig) -> nn.Module:
    return UNetInitializer(config) if config.architecture == "unet" else MLPInitializer(config)


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
