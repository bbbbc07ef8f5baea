"""Exponential moving average of a network's parameters, with torch_ema's semantics.

The published code keeps ``torch_ema.ExponentialMovingAverage`` shadows of the parameters
only (decay warmed up as min(decay, (1 + n) / (10 + n))) and evaluates them inside the live
module, so spectral-norm ``weight_u``/``weight_v`` buffers always come from the live
network. :meth:`EMA.average_parameters` does the same.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.module = module
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = [parameter.detach().clone() for parameter in module.parameters()]

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        parameters = [parameter.detach() for parameter in self.module.parameters()]
        torch._foreach_lerp_(self.shadow, parameters, 1.0 - self.current_decay())

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for shadow, parameter in zip(self.shadow, module.parameters(), strict=True):
            parameter.copy_(shadow)

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Temporarily swap the averaged parameters into the live module."""
        saved = [parameter.detach().clone() for parameter in self.module.parameters()]
        self.copy_to(self.module)
        try:
            yield
        finally:
            with torch.no_grad():
                for stored, parameter in zip(saved, self.module.parameters()):
                    parameter.copy_(stored)

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The live state dict with every parameter replaced by its average (buffers live)."""
        with self.average_parameters():
            return {name: tensor.detach().clone() for name, tensor in self.module.state_dict().items()}

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow_params": [tensor.clone() for tensor in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow_params"]
        if len(shadow) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(shadow)} tensors but the network has {len(self.shadow)} parameters")
        for mine, theirs in zip(self.shadow, shadow):
            if mine.shape != theirs.shape:
                raise ValueError(f"EMA tensor of shape {list(theirs.shape)} does not fit parameter {list(mine.shape)}")
            mine.copy_(theirs)
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.warmup = state.get("warmup", True)
