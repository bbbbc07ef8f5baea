"""The regression gate's stored models: one command trains each and writes it to ``results/gate/``.

    python -m tools.gate_models toy-cdrl            # train (resumably), then export
    python -m tools.gate_models toy-cdrl --export-only runs/gate/toy-cdrl

Each model is a preset trained with fixed settings and seed (:data:`GATE_MODELS`); the run
folder, its checkpoints and its MLflow run are ordinary ``cdrl-bench train`` ones. The
exported file keeps only what sampling and the gate's fingerprints need: the config and
the EMA weights of both networks (with their spectral-norm buffers), stored in float16 to
keep the repository small. Loading casts them back to float32, so the stored model *is*
the float16-rounded one, exactly, on every machine.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from baselines import ABLATIONS, apply_method
from benchmarks.suite import results_path
from cdrl.checkpoint import load_checkpoint, make_checkpoint, save_atomic
from cdrl.config import ExperimentConfig, apply_overrides, preset
from cdrl.ema import EMA
from cdrl.networks import build_energy_net, build_initializer
from cdrl.run_folder import RunFolder
from cdrl.tags import TAG_GATE_MODEL
from cdrl.train_loop import train

GATE_FOLDER = results_path("results/gate")


@dataclass(frozen=True)
class GateModel:
    preset: str
    method: str
    iterations: int
    overrides: tuple[str, ...] = ()
    #: Also store the live weights (beside the EMA's), so that loading the wrong ones changes the fingerprints.
    keep_live: bool = False

    def config(self) -> ExperimentConfig:
        config = apply_method(apply_overrides(preset(self.preset), list(self.overrides)), self.method)
        return apply_overrides(config, [f"training.iterations={self.iterations}", "training.seed=0"])


_CADENCE = ("run.checkpoint_every=1000", "run.sample_every=500")
_DIGITS_8X8 = ("data.image_size=8", "energy.channel_mults=[1,2]", "initializer.image_size=8",
               "initializer.attention_resolutions=[4]", "training.ebm_lr=5e-4", "training.initializer_lr=5e-4",
               "training.warmup_iterations=100", "run.sample_every=500", "run.checkpoint_every=500")

GATE_MODELS: dict[str, GateModel] = {
    # The published toy networks and chains (6 x 15) at the toy preset's CPU-scale settings.
    "toy-cdrl": GateModel("toy-checkerboard", "cdrl", 4000, _CADENCE),
    # CDRL without initializer (chains start at x_t, 6 x 30 steps), otherwise the same: the
    # DRL algorithm on CDRL's schedule and step size, as DRL was run here before baselines.drl.
    "toy-drl": GateModel("toy-checkerboard", "cdrl", 3000, (*ABLATIONS["no-initializer"], *_CADENCE)),
    # Class-conditional digits at their native 8 x 8, as the digits-cfg suite trains them.
    "digits-cond": GateModel("digits-cond", "cdrl", 2000, _DIGITS_8X8),
    # DRL as published (baselines.drl: DDPM linear levels, half the step size, test-time noise x 0.99, no
    # Tweedie step) on a narrower EBM (its 6 x 30 chains cost twice CDRL's), with its live weights too:
    # they differ from the EMA's.
    "toy-drl-published": GateModel("toy-checkerboard", "drl", 1500, ("energy.width=64", *_CADENCE), keep_live=True),
}


def _ema_state(module: torch.nn.Module, state: dict, ema_state: dict | None) -> dict[str, torch.Tensor]:
    module.load_state_dict(state)
    if ema_state is None:
        return dict(module.state_dict())
    ema = EMA(module)
    ema.load_state_dict(ema_state)
    return ema.averaged_state_dict()


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def _half_ema(ema_state: dict) -> dict:
    return {**ema_state, "shadow_params": [tensor.half() for tensor in ema_state["shadow_params"]]}


def export(checkpoint: Path, out: Path, keep_live: bool = False) -> Path:
    """Write the EMA weights of a training checkpoint (float16) with its config: a stored gate model.

    ``keep_live``: the live weights and the EMA state as they are (both float16), instead of the live
    weights replaced by their average.
    """
    config, payload = load_checkpoint(checkpoint)
    trainer = payload["trainer"]
    builders = {"ebm": lambda: build_energy_net(config.energy, config.schedule), "initializer": lambda: build_initializer(config.initializer)}
    state = {"iteration": trainer["iteration"]}
    for network, build in builders.items():
        if network not in trainer:
            continue
        if keep_live and f"{network}_ema" in trainer:
            state[network] = _half(trainer[network])
            state[f"{network}_ema"] = _half_ema(trainer[f"{network}_ema"])
        else:
            state[network] = _half(_ema_state(build(), trainer[network], trainer.get(f"{network}_ema")))
    storage = "live and EMA weights in float16" if keep_live else "EMA weights in float16"
    return save_atomic(make_checkpoint(config, state, exported_from=checkpoint.name, storage=storage), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(GATE_MODELS))
    parser.add_argument("--runs-dir", default="runs/gate", help="where the training run folder goes")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: as cdrl-bench train)")
    parser.add_argument("--export-only", metavar="RUN_FOLDER", help="export the newest checkpoint of this run")
    parser.add_argument("--out", default=None, help="exported file (default results/gate/MODEL.pt)")
    arguments = parser.parse_args(argv)
    out = Path(arguments.out) if arguments.out else GATE_FOLDER / f"{arguments.model}.pt"
    if arguments.export_only:
        checkpoints = RunFolder(Path(arguments.export_only)).checkpoint_paths()
        if not checkpoints:
            parser.error(f"{arguments.export_only} holds no checkpoints: train it first")
        checkpoint = checkpoints[-1]
    else:
        folder = Path(arguments.runs_dir) / arguments.model
        started = RunFolder(folder).checkpoint_paths()
        result = train(GATE_MODELS[arguments.model].config(), resume=folder if started else None,
                       out=None if started else folder, tracking_uri=arguments.tracking_uri,
                       experiment_name="cdrl-gate-models", tags={TAG_GATE_MODEL: arguments.model})
        checkpoint = result.checkpoint
    print(f"wrote {export(checkpoint, out, GATE_MODELS[arguments.model].keep_live)} from {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
