"""Checkpoints: cdrl-bench's own format, atomic writes, and import of the published code's files.

Our format is a plain dict (loadable with ``weights_only=True``)::

    {"format": "cdrl-bench/2", "config": ExperimentConfig.to_dict(),
     "trainer": CooperativeTrainer.state_dict(), ...extra (RNG states, MLflow run id),
     "sha256": payload_digest(everything else)}

Integrity: :func:`save_atomic` seals a checkpoint with the sha256 of a canonical byte
serialisation of its payload (:func:`payload_digest`: every key, value, tensor dtype, shape and
raw bytes, in order), and :func:`read_checkpoint_file` recomputes it on every load. Garbage
written into the file either breaks torch.load (zip records, pickle) or changes a loaded value
(tensor bytes, config, the recorded hash itself); both are a one-line :class:`CheckpointError`
naming the file. Files of the first format (``cdrl-bench/1``, written before hashes) carry no
hash: they are still read, unverified (:data:`UNVERIFIED_FORMATS`); the gate's stored models were
re-saved as ``cdrl-bench/2``.

The published code saves ``pi_state_dict``/``p_state_dict`` (energy network / initializer,
keys prefixed ``module.`` by DDP) and torch_ema states whose ``shadow_params`` follow
``parameters()`` order; :func:`import_official_checkpoint` maps them onto our networks, and
:func:`permute_classes` reorders a class-conditional one's classes from the published code's
ImageNet order to our npz label order (:mod:`cdrl.imagenet_classes`).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from cdrl.config import ExperimentConfig, preset
from cdrl.ema import EMA
from cdrl.errors import CdrlBenchError
from cdrl.files import atomic_write
from cdrl.guidance import (ClassLabel, ConditionalNetwork, GuidanceError, check_classes, guidance_concepts,
                           guided_callables)
from cdrl.imagenet_classes import ClassMap, published_order_record
from cdrl.langevin import EnergyFn
from cdrl.networks import build_energy_net, build_initializer
from cdrl.sampler import ProposalFn

FORMAT = "cdrl-bench/2"
#: Earlier formats of ours, read without verification: they were written before checkpoints carried a hash.
UNVERIFIED_FORMATS = ("cdrl-bench/1",)
#: The payload key that holds :func:`payload_digest` of the rest.
DIGEST_KEY = "sha256"


class CheckpointError(CdrlBenchError):
    """A checkpoint that cannot be read or does not fit; the message names the fix."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint file that is truncated, garbled or fails its integrity check; ``reason`` says which, briefly."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _feed(digest: Any, value: Any) -> None:
    """Add ``value`` to ``digest`` in a canonical, self-delimiting byte form (type tag, length, content)."""
    def tagged(tag: bytes, content: bytes) -> None:
        digest.update(tag + len(content).to_bytes(8, "little") + content)

    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        tagged(b"T", f"{value.dtype}{tuple(value.shape)}".encode())
        tagged(b"t", tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, dict):  # OrderedDict too: pickle keeps the order, so it is part of the form
        tagged(b"D", str(len(value)).encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):  # torch.Size is a tuple
        tagged(b"L" if isinstance(value, list) else b"U", str(len(value)).encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, bool):
        tagged(b"N", repr(value).encode())
    elif isinstance(value, int):
        tagged(b"I", str(value).encode())
    elif isinstance(value, float):
        tagged(b"F", value.hex().encode())
    elif isinstance(value, str):
        tagged(b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes):
        tagged(b"B", value)
    elif isinstance(value, (torch.dtype, torch.device)):
        tagged(b"O", str(value).encode())
    else:  # torch.load(weights_only=True) would refuse it anyway: fail at the write, not at the read
        raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}: use tensors, numbers, strings, "
                        "lists and dicts")


def payload_digest(payload: dict) -> str:
    """sha256 of everything in a checkpoint payload but its recorded digest: tensors by dtype, shape and bytes."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in payload.items() if key != DIGEST_KEY})
    return digest.hexdigest()


def _on_cpu(value: Any) -> Any:
    """``value`` with its tensors on the CPU: one device-to-host copy serves both the hash and torch.save."""
    if isinstance(value, torch.Tensor):
        return value if value.device.type == "cpu" else value.cpu()
    if isinstance(value, dict):
        moved = {key: _on_cpu(item) for key, item in value.items()}
        if type(value) is not dict:  # an OrderedDict state_dict keeps its type and its _metadata
            moved = type(value)(moved)
            if hasattr(value, "_metadata"):
                moved._metadata = value._metadata
        return moved
    if isinstance(value, list):
        return [_on_cpu(item) for item in value]
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(_on_cpu(item) for item in value)
    return value


def seal(payload: dict) -> dict:
    """A cdrl-bench checkpoint payload in the current format with its digest (:func:`payload_digest`)."""
    sealed = {key: value for key, value in _on_cpu(payload).items() if key != DIGEST_KEY}
    sealed["format"] = FORMAT
    sealed[DIGEST_KEY] = payload_digest(sealed)
    return sealed


def save_atomic(payload: Any, path: str | os.PathLike) -> Path:
    """torch.save ``payload`` to ``path`` atomically: a crash leaves the old file or the new one.

    A cdrl-bench checkpoint (``format`` ours, also an older one) is written sealed, in the current
    format with its digest (:func:`seal`); other objects as they are.
    """
    if isinstance(payload, dict) and payload.get("format") in (FORMAT, *UNVERIFIED_FORMATS):
        payload = seal(payload)
    return atomic_write(path, lambda stream: torch.save(payload, stream))


#: How torch.save's files begin: a zip archive (the default since torch 1.6), or a legacy pickle.
_ZIP_MAGIC, _PICKLE_PROTOCOL = b"PK\x03\x04", b"\x80"


def read_checkpoint_file(path: str | os.PathLike) -> dict:
    """The payload of a checkpoint file; a cdrl-bench checkpoint is verified against its digest (and returned without it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the path of a .pt/.pth.tar file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated, garbled or foreign files
        with path.open("rb") as file:
            start = file.read(4)
        if not (start.startswith(_ZIP_MAGIC) or start.startswith(_PICKLE_PROTOCOL)):
            raise CorruptCheckpoint(f"cannot read checkpoint {path}: it is not a PyTorch checkpoint (torch.save "
                                    "writes a zip archive or a pickle): pass the .pt/.pth.tar file it wrote",
                                    "unreadable: not a PyTorch checkpoint") from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CorruptCheckpoint(f"cannot read checkpoint {path}: the file is truncated or corrupt "
                                f"({first_line[:200]}); use an older checkpoint of the run, or re-download or "
                                "re-copy it", f"unreadable: {first_line[:120]}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a dict of state")
    if payload.get("format") == FORMAT:
        recorded = payload.pop(DIGEST_KEY, None)
        try:
            actual = payload_digest(payload)
        except TypeError:
            actual = "unhashable"
        if actual != recorded:
            found = f"{actual[:12]}… where the file records {recorded[:12]}…" if isinstance(recorded, str) \
                else "but the file records none"
            raise CorruptCheckpoint(f"checkpoint {path} fails its integrity check (sha256 {found}): it is corrupt; "
                                    "use an older checkpoint of the run", f"fails its integrity check (sha256 {found})")
    return payload


def make_checkpoint(config: ExperimentConfig, trainer_state: dict, **extra: Any) -> dict:
    """A checkpoint payload; :func:`save_atomic` adds its digest as it writes it."""
    return {"format": FORMAT, "config": config.to_dict(), "trainer": trainer_state, **extra}


def load_checkpoint(path: str | os.PathLike) -> tuple[ExperimentConfig, dict]:
    """(config, full payload) of a cdrl-bench checkpoint."""
    payload = read_checkpoint_file(path)
    if payload.get("format") not in (FORMAT, *UNVERIFIED_FORMATS):
        hint = (" it looks like a checkpoint of the published code: convert it with "
                "`cdrl-bench import-checkpoint PATH --preset NAME --out FILE`"
                if "pi_state_dict" in payload else "")
        raise CheckpointError(f"{path} is not a cdrl-bench checkpoint (format {payload.get('format')!r});{hint}")
    return ExperimentConfig.from_dict(payload["config"]), payload


#: The entries of a trainer state that hold weights: live and EMA, of both networks.
_WEIGHT_ENTRIES = ("ebm", "initializer", "ebm_ema", "initializer_ema")


def _named_tensors(value: Any, name: str):
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _named_tensors(item, f"{name}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _named_tensors(item, f"{name}.{index}")


def weights_problem(trainer_state: dict, bound: float) -> str | None:
    """Why a checkpoint's weights are unfit to continue from, or None when they are healthy.

    Unfit: a live or EMA weight (or floating buffer) that is non-finite, or above ``bound`` in
    magnitude (run.divergence_bound). Optimiser states are not weights and are not read.
    """
    for entry in _WEIGHT_ENTRIES:
        for name, tensor in _named_tensors(trainer_state.get(entry), entry):
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            largest = float(tensor.detach().abs().max())
            if not math.isfinite(largest):
                return f"has non-finite weights ({name})"
            if largest > bound:
                return f"has exploded weights ({name} reaches {largest:.3g}, beyond run.divergence_bound={bound:g})"
    return None


@dataclass
class LoadedModel:
    config: ExperimentConfig
    ebm: nn.Module
    initializer: nn.Module | None
    iteration: int
    uses_ema: bool
    #: Which class order the labels follow, for imported class-conditional checkpoints (import_official_checkpoint).
    class_order: str | None = None
    #: The MLflow run that trained it (a training checkpoint's), to nest its evaluations under; None if imported.
    training_run: str | None = None


def _with_ema(module: nn.Module, state: dict, ema_state: dict | None, use_ema: bool) -> nn.Module:
    module.load_state_dict(state)
    if use_ema and ema_state is not None:
        ema = EMA(module)
        ema.load_state_dict(ema_state)
        ema.copy_to(module)
    return module.eval()


def load_model(path: str | os.PathLike, use_ema: bool = True, device: torch.device | str = "cpu") -> LoadedModel:
    """Networks of a checkpoint in eval mode, with EMA weights by default; non-finite weights are refused."""
    config, payload = load_checkpoint(path)
    state = payload["trainer"]
    ebm = _with_ema(build_energy_net(config.energy, config.schedule), state["ebm"], state.get("ebm_ema"), use_ema)
    initializer = None
    if "initializer" in state:
        initializer = _with_ema(build_initializer(config.initializer), state["initializer"],
                                state.get("initializer_ema"), use_ema)
    # The weights that will draw samples (EMA or live): NaN weights give NaN samples, and scores of nothing.
    used = {"ebm": ebm.state_dict(), **({"initializer": initializer.state_dict()} if initializer else {})}
    problem = weights_problem(used, math.inf)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} {problem} ({'EMA' if use_ema else 'live'}): its training had "
                              "diverged; use an earlier checkpoint of the run")
    if initializer is not None:
        initializer.to(device)
    return LoadedModel(config, ebm.to(device), initializer, state["iteration"], use_ema,
                       payload.get("class_order", {}).get("description"), payload.get("mlflow_run_id"))


def build_guided_model(model: LoadedModel, guidance: float, class_label: ClassLabel | Sequence[ClassLabel],
                       ebm: ConditionalNetwork | None = None) -> tuple[EnergyFn, ProposalFn | None]:
    """(energy, proposal) of a loaded conditional model guided at scale ``guidance`` towards ``class_label``.

    ``class_label``: a dataset class (0-based), a (B,) tensor of them (one per example), or a
    list of classes to compose (f(c₁) + f(c₂) − f(∅) at w = 0), each guided at 1 + w.
    ``ebm`` replaces ``model.ebm`` as the energy network, e.g. a chain energy with speed options.
    """
    num_classes = model.config.energy.num_classes
    if num_classes is None:
        raise GuidanceError(f"model {model.config.name!r} is unconditional: guidance needs a class-conditional "
                            f"model (a preset with energy.num_classes set, e.g. digits-cond)")
    concepts = guidance_concepts(class_label, guidance)
    check_classes(concepts, num_classes)
    return guided_callables(ebm or model.ebm, model.initializer, concepts)


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
        module = build_energy_net(config.energy, config.schedule) if network == "ebm" else build_initializer(config.initializer)
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
    if payload.get("format") == FORMAT:
        raise CheckpointError(f"{path} is already a cdrl-bench checkpoint: pass it to sample, eval or "
                              "train --resume as it is")
    required = ("pi_state_dict", "p_state_dict")
    if any(key not in payload for key in required):
        raise CheckpointError(f"{path} lacks {', '.join(k for k in required if k not in payload)}: "
                              "not a checkpoint of the published CDRL code")
    ebm, initializer = build_energy_net(config.energy, config.schedule), build_initializer(config.initializer)
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
