"""Divergence trajectories: each iteration's largest |loss|, |energy| or initializer loss, in short trainings.

The data behind ``run.divergence_jump`` (:class:`cdrl.divergence.DivergenceWatch`): healthy runs
of every CPU preset (CDRL, and DRL on a toy and on digits; not official-small, which trains on
CIFAR-10, absent from this project's offline machine) and issue #31's finite blow-up,
toy-checkerboard at ``training.ebm_lr=1``. Stored as ``tests/fixtures/divergence_trajectories.json``,
which tests/test_integrity.py replays through the watch at several check cadences::

    python -m benchmarks.divergence_trajectories --out tests/fixtures/divergence_trajectories.json

One thread, sample grids and checkpoints off: about 20 minutes on this project's (shared, busy) CPU machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from baselines import drl
from cdrl.config import preset
from cdrl.divergence import watched
from cdrl.train_loop import train
from cdrl.training import CooperativeTrainer

class TrajectoryRun(NamedTuple):
    label: str
    preset: str
    #: Short, but past the warm-ups, and past the start of the blow-up that diverges.
    iterations: int
    method: str = "cdrl"
    overrides: tuple[str, ...] = ()
    diverges: bool = False


RUNS = [
    TrajectoryRun("toy-checkerboard ebm_lr=1", "toy-checkerboard", 200, overrides=("training.ebm_lr=1",),
                  diverges=True),
    TrajectoryRun("toy-checkerboard", "toy-checkerboard", 300),
    TrajectoryRun("toy-8gaussians", "toy-8gaussians", 300),
    TrajectoryRun("toy-2rings", "toy-2rings", 300),
    TrajectoryRun("toy-quadrants-cond", "toy-quadrants-cond", 300),
    TrajectoryRun("toy-checkerboard drl", "toy-checkerboard", 150, "drl"),
    TrajectoryRun("tiny", "tiny", 300),
    TrajectoryRun("toy-checkerboard-published", "toy-checkerboard-published", 30),
    TrajectoryRun("digits", "digits", 80),
    TrajectoryRun("digits-cond", "digits-cond", 80),
    TrajectoryRun("digits drl", "digits", 50, "drl"),
    TrajectoryRun("digits-colour-cond", "digits-colour-cond", 80),
    TrajectoryRun("digits-0to4", "digits-0to4", 80),
]
#: Off the training's path: no grids, no checkpoint before the last, one thread.
_QUIET = ("run.sample_every=100000", "run.n_samples=4", "run.checkpoint_every=100000", "performance.threads=1")


def record(name: str, iterations: int, method: str, overrides: tuple[str, ...], folder: Path) -> list[float]:
    """Each iteration's largest |loss|, |energy| or initializer loss (what the watch sees), to 4 digits."""
    values: list[float] = []
    original = CooperativeTrainer.step

    def step(self, x, labels=None):
        stats = original(self, x, labels)
        values.append(float(f"{float(watched(stats).abs().amax()):.4g}"))
        return stats

    config = preset(name) if method == "cdrl" else drl(preset(name))
    CooperativeTrainer.step = step
    try:
        # The watch stays on, with a jump no run reaches: the diverging run is recorded to its end.
        train(config, overrides=[f"training.iterations={iterations}", *_QUIET, "run.divergence_jump=1e30",
                                 *overrides], out=folder / "run", tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
              show_progress=False)
    finally:
        CooperativeTrainer.step = original
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (after every run)")
    parser.add_argument("--only", action="append", default=[], help="record this run (its label) only, into the "
                                                                    "existing --out file; repeatable")
    arguments = parser.parse_args()
    unknown = set(arguments.only) - {run.label for run in RUNS}
    if unknown:
        parser.error(f"no run labelled {', '.join(sorted(unknown))}")
    document = {"provenance": "python -m benchmarks.divergence_trajectories (one thread, CPU)", "runs": []}
    if arguments.only:
        document = json.loads(arguments.out.read_text())
    for run in RUNS:
        if arguments.only and run.label not in arguments.only:
            continue
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as folder:
            values = record(run.preset, run.iterations, run.method, run.overrides, Path(folder))
        document["runs"] = [kept for kept in document["runs"] if kept["label"] != run.label]
        document["runs"].append({**run._asdict(), "values": values})
        arguments.out.write_text(json.dumps(document) + "\n")  # after each run: a long recording keeps its part
        print(f"{run.label}: {run.iterations} iterations in {time.monotonic() - started:.0f} s, largest "
              f"{max(values):.4g}", flush=True)


if __name__ == "__main__":
    main()
