"""Preemption: a scheduler's signal, Ctrl-C or SIGHUP stops training after the current step, checkpointed, KILLED.

Real signals to the command line: tests/test_tracking.py::test_a_stop_signal_to_a_training_checkpoints_it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from cdrl.checkpoint import load_checkpoint
from cdrl.config import preset
from cdrl.preemption import Preempted
from cdrl.run_folder import RunFolder
from cdrl.train_loop import train
from cdrl.training import CooperativeTrainer

#: No checkpoint before the end: the only one mid-run is the preemption's.
SETTINGS = ["run.log_every=3", "run.n_samples=4", "run.sample_every=100", "run.checkpoint_every=100",
            "training.iterations=8"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (tests/conftest.py)."""


def _signal_during_step(monkeypatch, at_iteration: int, signum: int, times: int = 1) -> None:
    """The step from ``at_iteration`` receives ``signum`` ``times`` times halfway (the signal arrives mid-step)."""
    original = CooperativeTrainer.step

    def step(self, x, labels=None):
        if self.iteration == at_iteration:
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return original(self, x, labels)

    monkeypatch.setattr(CooperativeTrainer, "step", step)


def _weights(path: Path) -> dict:
    return load_checkpoint(path)[1]["trainer"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP])
@pytest.mark.usefixtures("sighup_heard")
def test_signal_checkpoints_the_step_it_interrupted_and_resumes_exactly(tmp_path, tracking_uri, monkeypatch, signum):
    before = signal.getsignal(signum)
    reference = train(preset("tiny"), overrides=SETTINGS, out=tmp_path / "reference", tracking_uri=tracking_uri,
                      experiment_name="reference", show_progress=False)
    _signal_during_step(monkeypatch, 4, signum)
    with pytest.raises(Preempted) as stopped:
        train(preset("tiny"), overrides=SETTINGS, out=tmp_path / "run", tracking_uri=tracking_uri,
              show_progress=False)
    assert stopped.value.code == 128 + signum and stopped.value.iteration == 5
    # The step that was running when the signal came is finished and kept: no step is lost.
    (checkpoint,) = RunFolder(tmp_path / "run").checkpoint_paths()
    assert checkpoint.name == "ckpt-00000005.pt" and _weights(checkpoint)["iteration"] == 5
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cdrl-bench").experiment_id])
    assert run.info.status == "KILLED"
    assert run.data.tags["cdrl.preempted"].startswith(f"stopped by {signal.Signals(signum).name} after iteration 5")
    # The last step is logged too, off the run.log_every cadence: a resumed curve has no gap.
    assert sorted(metric.step for metric in client.get_metric_history(run.info.run_id, "ebm_loss")) == [3, 5]
    assert signal.getsignal(signum) is before  # handed back

    monkeypatch.undo()
    resumed = train(resume=tmp_path / "run", tracking_uri=tracking_uri, show_progress=False)
    assert resumed.run_id == run.info.run_id and client.get_run(run.info.run_id).info.status == "FINISHED"
    final, expected = _weights(resumed.checkpoint), _weights(reference.checkpoint)
    for network in ("ebm", "initializer", "ebm_optimizer"):
        torch.testing.assert_close(final[network], expected[network], rtol=0, atol=0)


def test_signal_goes_on_to_the_handler_it_displaced_after_the_run_is_closed(tmp_path, tracking_uri, monkeypatch):
    """submitit's handler (requeue) runs once the checkpoint is written and the MLflow run is KILLED."""
    seen = []

    def scheduler_handler(signum, frame):
        client = MlflowClient(tracking_uri)
        (run,) = client.search_runs([client.get_experiment_by_name("cdrl-bench").experiment_id])
        seen.append((signum, run.info.status, [path.name for path in RunFolder(tmp_path / "run").checkpoint_paths()]))

    previous = signal.signal(signal.SIGUSR2, scheduler_handler)
    try:
        _signal_during_step(monkeypatch, 2, signal.SIGUSR2)
        with pytest.raises(Preempted):
            train(preset("tiny"), overrides=SETTINGS, out=tmp_path / "run", tracking_uri=tracking_uri,
                  show_progress=False)
        assert seen == [(signal.SIGUSR2, "KILLED", ["ckpt-00000003.pt"])]
        assert signal.getsignal(signal.SIGUSR2) is scheduler_handler
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path, tracking_uri, monkeypatch):
    _signal_during_step(monkeypatch, 4, signal.SIGINT, times=2)
    with pytest.raises(KeyboardInterrupt):
        train(preset("tiny"), overrides=SETTINGS, out=tmp_path / "run", tracking_uri=tracking_uri,
              show_progress=False)
    assert RunFolder(tmp_path / "run").checkpoint_paths() == []  # the user insisted: no step finished
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cdrl-bench").experiment_id])
    assert run.info.status == "KILLED"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_selection_due_at_the_interrupted_step_is_made_before_stopping(tmp_path, tracking_uri, monkeypatch):
    """A resumed run starts at the next step: a selection due at the stopped one (here the last) is made first."""
    from cdrl import selection

    scored = []

    def score(trainer, metric, ranks):
        scored.append(trainer.iteration)
        return 1.0 / trainer.iteration  # later is better: the last iteration's checkpoint is the best

    monkeypatch.setattr(selection, "selection_score", score)
    _signal_during_step(monkeypatch, 7, signal.SIGTERM)  # the last step, 8, is running when the signal comes
    with pytest.raises(Preempted):
        train(preset("tiny"), overrides=[*SETTINGS, "run.select_every=4", "run.select_samples=2"],
              out=tmp_path / "run", tracking_uri=tracking_uri, show_progress=False)
    assert scored == [4, 8]
    assert _weights(RunFolder(tmp_path / "run").best())["iteration"] == 8
