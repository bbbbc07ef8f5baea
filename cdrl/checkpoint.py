"""Checkpoints: cdrl-bench's own format, atomic writes, and import of the published code's files.

Our format is a plain dict (loadable with ``weights_only=True``)::

    {"format": "cdrl-bench/1", "config": ExperimentConfig.to_dict(),
     "trainer": CooperativeTrainer.state_dict(), ...extra (RNG states, MLflow run id)}

The published code saves ``pi_state_dict``/``p_state_dict`` (energy network / initializer,
keys prefixed ``module.`` by DDP) and torch_ema states whose ``shadow_params`` follow
``parameters()`` order; :func:`import_official_checkpoint` maps them onto our networks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cdrl.config import ExperimentConfig, preset
from cdrl.ema import EMA
from cdrl.errors import CdrlBenchError
from cdrl.files import atomic_write
from cdrl.networks import build_energy_net, build_initializer

FORMAT = "cdrl-bench/1"


class CheckpointError(CdrlBenchError):
    """A checkpoint that cannot be read or does not fit; the message names the fix."""


def save_atomic(payload: Any, path: str | os.PathLike) -> Path:
    """torch.save ``payload`` to ``path`` atomically: a crash leaves the old file or the new one."""
    return atomic_write(path, lambda stream: torch.save(payload, stream))


def read_checkpoint_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the path of a .pt/.pth.tar file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: the file is truncated or not a PyTorch "
                              f"checkpoint ({first_line}); re-download or re-copy it") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a dict of state")
    return payload


def make_checkpoint(config: ExperimentConfig, trainer_state: dict, **extra: Any) -> dict:
    return {"format": FORMAT, "config": config.to_dict(), "trainer": trainer_state, **extra}


def load_checkpoint(path: str | os.PathLike) -> tuple[ExperimentConfig, dict]:
    """(config, full payload) of a cdrl-bench checkpoint."""
    payload = read_checkpoint_file(path)
    if payload.get("format") != FORMAT:
        hint = (" it looks like a checkpoint of the published code: convert it with "
                "`cdrl-bench import-checkpoint PATH --preset NAME --out FILE`"
                if "pi_state_dict" in payload else "")
        raise CheckpointError(f"{path} is not a cdrl-bench checkpoint (format {payload.get('format')!r});{hint}")
    return ExperimentConfig.from_dict(payload["config"]), payload


@dataclass
class LoadedModel:
    config: ExperimentConfig
    ebm: nn.Module
    initializer: nn.Module | None
    iteration: int
    uses_ema: bool


def _with_ema(module: nn.Module, state: dict, ema_state: dict | None, use_ema: bool) -> nn.Module:
    module.load_state_dict(state)
    if use_ema and ema_state is not None:
        ema = EMA(module)
        ema.load_state_dict(ema_state)
        ema.copy_to(module)
    return module.eval()


def load_model(path: str | os.PathLike, use_ema: bool = True, device: torch.device | str = "cpu") -> LoadedModel:
    """Networks of a checkpoint in eval mode, with EMA weights by default."""
    config, payload = load_checkpoint(path)
    state = payload["trainer"]
    ebm = _with_ema(build_energy_net(config.energy), state["ebm"], state.get("ebm_ema"), use_ema)
    initializer = None
    if "initializer" in state:
        initializer = _with_ema(build_initializer(config.initializer), state["initializer"],
                                state.get("initializer_ema"), use_ema)
        initializer.to(device)
    return LoadedModel(config, ebm.to(device), initializer, state["iteration"], use_ema)


# --------------------------------------------------------------------------- published checkpoints

def _strip_ddp_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key.removeprefix("module."): value for key, value in state.items()}


def _check_fits(network: str, state: dict[str, torch.Tensor], module: nn.Module, preset_name: str) -> None:
    expected = module.state_dict()
    fix = "pass the preset the checkpoint was trained with (`cdrl-bench presets` lists them)"
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        detail = f"lacks {missing[0]}" if missing else f"has unexpected {unexpected[0]}"
        raise CheckpointError(f"checkpoint does not fit preset {preset_name!r}: its {network} {detail} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected tensors); {fix}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(f"checkpoint does not fit preset {preset_name!r}: {network} tensor {key} is "
                                  f"{list(state[key].shape)} in the file but {list(tensor.shape)} in the preset; {fix}")


def _official_ema(ema_state: Any, module: nn.Module, network: str) -> dict:
    if not isinstance(ema_state, dict) or "shadow_params" not in ema_state:
        raise CheckpointError(f"the {network} EMA state has no shadow_params: the file is not a published CDRL checkpoint")
    ema = EMA(module, decay=float(ema_state.get("decay", 0.9999)))
    try:
        ema.load_state_dict({"shadow_params": ema_state["shadow_params"], "decay": ema.decay,
                             "num_updates": int(ema_state.get("num_updates") or 0)})
    except ValueError as error:
        raise CheckpointError(f"the {network} EMA does not fit the preset: {error}") from None
    return ema.state_dict()


def import_official_checkpoint(path: str | os.PathLike, preset_name: str) -> dict:
    """Convert a published-code checkpoint into a cdrl-bench checkpoint payload (live and EMA weights)."""
    config = preset(preset_name)
    payload = read_checkpoint_file(path)
    required = ("pi_state_dict", "p_state_dict")
    if any(key not in payload for key in required):
        raise CheckpointError(f"{path} lacks {', '.join(k for k in required if k not in payload)}: "
                              "not a checkpoint of the published CDRL code")
    ebm, initializer = build_energy_net(config.energy), build_initializer(config.initializer)
    ebm_state, initializer_state = _strip_ddp_prefix(payload["pi_state_dict"]), _strip_ddp_prefix(payload["p_state_dict"])
    _check_fits("energy network", ebm_state, ebm, preset_name)
    _check_fits("initializer", initializer_state, initializer, preset_name)
    ebm.load_state_dict(ebm_state)
    initializer.load_state_dict(initializer_state)
    trainer_state = {"iteration": int(payload.get("pi_ema_state_dict", {}).get("num_updates") or 0),
                     "ebm": ebm.state_dict(), "initializer": initializer.state_dict()}
    if "pi_ema_state_dict" in payload:
        trainer_state["ebm_ema"] = _official_ema(payload["pi_ema_state_dict"], ebm, "energy network")
    if "p_ema_state_dict" in payload:
        trainer_state["initializer_ema"] = _official_ema(payload["p_ema_state_dict"], initializer, "initializer")
    return make_checkpoint(config, trainer_state, imported_from=str(Path(path).resolve()))
