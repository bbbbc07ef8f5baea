"""Checkpoints: cdrl-bench's own format, atomic writes, and import of the published code's files.

Our format is a plain dict (loadable with ``weights_only=True``)::

    {"format": "cdrl-bench/1", "config": ExperimentConfig.to_dict(),
     "trainer": CooperativeTrainer.state_dict(), ...extra (RNG states, MLflow run id)}

The published code saves ``pi_state_dict``/``p_state_dict`` (energy network / initializer,
keys prefixed ``module.`` by DDP) and torch_ema states whose ``shadow_params`` follow
``parameters()`` order; :func:`import_official_checkpoint` maps them onto our networks, and
:func:`permute_classes` reorders a class-conditional one's classes from the published code's
ImageNet order to our npz label order (:mod:`cdrl.imagenet_classes`).
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
from cdrl.imagenet_classes import ClassMap, published_order_record
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
    #: Which class order the labels follow, for imported class-conditional checkpoints (import_official_checkpoint).
    class_order: str | None = None


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
    return LoadedModel(config, ebm.to(device), initializer, state["iteration"], use_ema,
                       payload.get("class_order", {}).get("description"))


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


# The class-embedding layer of each network: a Linear on the one-hot label (index 0: the null
# class), so column k of its weight is the embedding of label k.
_CLASS_EMBEDDINGS = {"ebm": "y_map", "initializer": "y_mlp.0"}


def _check_class_map(config: ExperimentConfig, class_map: ClassMap) -> None:
    num_classes = config.energy.num_classes
    if num_classes is None:
        raise CheckpointError(f"preset {config.name!r} is unconditional: a class map applies only to "
                              f"class-conditional checkpoints; drop the class map (--class-map-from/--class-map-to)")
    if len(class_map.published_index) != num_classes:
        raise CheckpointError(f"the class map lists {len(class_map.published_index)} classes but preset "
                              f"{config.name!r} has {num_classes}: pass the class files of its dataset")


def _move_columns(state: dict[str, torch.Tensor], layer: str, columns: torch.Tensor) -> dict[str, torch.Tensor]:
    """``state`` with the input columns of ``layer`` taken in the order ``columns``.

    Spectral norm's ``weight_v`` is a vector over the same inputs: moved alike, the normalised
    weight is the same matrix with its columns moved (sigma is unchanged).
    """
    moved = dict(state)
    for name in (f"{layer}.weight", f"{layer}.weight_orig"):
        if name in moved:
            moved[name] = moved[name][:, columns]
    if f"{layer}.weight_v" in moved:
        moved[f"{layer}.weight_v"] = moved[f"{layer}.weight_v"][columns]
    return moved


def _parameter_names(config: ExperimentConfig, network: str) -> list[str]:
    """A network's parameter names in parameters() order, the order of its EMA's shadow_params."""
    with torch.device("meta"):  # names only: no memory, no initialisation
        module = build_energy_net(config.energy) if network == "ebm" else build_initializer(config.initializer)
    return [name for name, _ in module.named_parameters()]


def permute_classes(payload: dict, class_map: ClassMap) -> dict:
    """A copy of checkpoint ``payload`` whose class c uses the published class ``class_map.published_index[c]``.

    Our class c is embedding index c + 1, so column c + 1 of each network's class embedding
    (live and EMA weights) becomes the published column ``published_index[c] + 1``; the null
    class (column 0) keeps its own. The map is recorded as ``payload["class_order"]``.
    """
    config = ExperimentConfig.from_dict(payload["config"])
    _check_class_map(config, class_map)
    if payload.get("class_order", {}).get("permuted"):
        raise CheckpointError("the checkpoint's classes are already permuted (see its class_order): import the "
                              "published checkpoint again instead of permuting twice")
    trainer = dict(payload["trainer"])
    if "ebm_optimizer" in trainer:
        raise CheckpointError("the checkpoint holds optimizer states, which would not follow the permuted "
                              "classes: permute an imported checkpoint, before any training")
    columns = torch.tensor([0] + [index + 1 for index in class_map.published_index])
    for network, layer in _CLASS_EMBEDDINGS.items():
        if network not in trainer:
            continue
        trainer[network] = _move_columns(trainer[network], layer, columns)
        if f"{network}_ema" in trainer:
            names = _parameter_names(config, network)
            shadow = dict(zip(names, trainer[f"{network}_ema"]["shadow_params"], strict=True))
            trainer[f"{network}_ema"] = {**trainer[f"{network}_ema"],
                                         "shadow_params": list(_move_columns(shadow, layer, columns).values())}
    return {**payload, "trainer": trainer, "class_order": class_map.record()}


def import_official_checkpoint(path: str | os.PathLike, preset_name: str, class_map: ClassMap | None = None) -> dict:
    """Convert a published-code checkpoint into a cdrl-bench checkpoint payload (live and EMA weights).

    A class-conditional checkpoint keeps the published code's class order unless ``class_map``
    is given (:func:`cdrl.imagenet_classes.load_class_map`): then its classes are reordered to
    our npz label order (:func:`permute_classes`). Either way ``payload["class_order"]`` says which.
    """
    config = preset(preset_name)
    if class_map is not None:
        _check_class_map(config, class_map)  # before reading a large file
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
    imported = make_checkpoint(config, trainer_state, imported_from=str(Path(path).resolve()))
    if class_map is not None:
        return permute_classes(imported, class_map)
    if config.energy.num_classes is not None:
        imported["class_order"] = published_order_record()
    return imported
