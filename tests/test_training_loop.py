"""The training loop: MLflow tracking, kill-and-resume, 2-process DDP, divergence guard, bad input (CPU, tiny)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mlflow import MlflowClient

import cli
from cdrl.checkpoint import load_checkpoint
from cdrl.config import preset
from cdrl.run_folder import RunFolder
from cdrl.divergence import TrainingDiverged
from cdrl.train_loop import train
from cdrl.training import CooperativeTrainer

REPO = Path(__file__).resolve().parents[1]
#: Cheap cadences for the tiny preset: every iteration logged, few samples.
QUICK = ["run.log_every=1", "run.n_samples=4", "run.sample_every=100", "run.checkpoint_every=3"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (tests/conftest.py)."""


def all_runs(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    return client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])


def curve(tracking_uri: str, run_id: str, key: str = "ebm_loss") -> dict[int, float]:
    return {metric.step: metric.value for metric in MlflowClient(tracking_uri).get_metric_history(run_id, key)}


def stray_files(run_dir: Path) -> list[str]:
    return [path.name for path in (run_dir / "checkpoints").iterdir() if not path.name.startswith("ckpt-")]


def test_training_run_holds_params_metrics_sample_grid_and_checkpoints(tmp_path, tracking_uri):
    result = train(preset("tiny"), overrides=[*QUICK, "training.iterations=4", "run.sample_every=4"],
                   out=tmp_path / "run", tracking_uri=tracking_uri, experiment_name="unit",
                   tags={"cdrl.suite": "unit", "cdrl.run_key": "tiny-0"}, show_progress=False)
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and result.iteration == 4
    assert run.data.params["training.ebm_lr"] == "0.0001" and run.data.params["langevin.n_steps"] == "3"
    tags = run.data.tags
    assert (tags["cdrl.kind"], tags["cdrl.preset"], tags["cdrl.method"]) == ("train", "tiny", "cdrl")
    assert (tags["cdrl.suite"], tags["cdrl.run_key"], tags["cdrl.world_size"]) == ("unit", "tiny-0", "1")
    assert Path(tags["cdrl.checkpoint_dir"]) == (tmp_path / "run" / "checkpoints").resolve()
    assert sorted(curve(tracking_uri, result.run_id)) == [1, 2, 3, 4]
    assert set(run.data.metrics) >= {"ebm_loss", "positive_energy", "negative_energy", "initializer_loss", "ebm_lr"}
    assert [a.path for a in client.list_artifacts(result.run_id, "samples")] == ["samples/samples-00000004.png"]
    assert "config.json" in [a.path for a in client.list_artifacts(result.run_id)]
    config, payload = load_checkpoint(result.checkpoint)
    assert payload["mlflow_run_id"] == result.run_id and config.training.iterations == 4
    assert [p.name for p in RunFolder(tmp_path / "run").checkpoint_paths()] == ["ckpt-00000003.pt",
                                                                                     "ckpt-00000004.pt"]


def test_toy_run_logs_scatter_plot_and_in_support_fraction(tmp_path, tracking_uri):
    result = train(preset("toy-checkerboard"), overrides=[*QUICK, "training.iterations=2", "training.batch_size=32",
                                                           "run.n_samples=100"],
                   out=tmp_path / "toy", tracking_uri=tracking_uri, show_progress=False)
    fraction = curve(tracking_uri, result.run_id, "in_support_fraction")
    assert list(fraction) == [2] and 0.0 <= fraction[2] <= 1.0
    assert (tmp_path / "toy" / "samples" / "samples-00000002.png").stat().st_size > 1000


def test_killed_run_resumes_the_same_mlflow_run_and_loss_curve(tmp_path, tracking_uri):
    settings = [*QUICK, "training.iterations=12"]
    reference = train(preset("tiny"), overrides=settings, out=tmp_path / "reference", tracking_uri=tracking_uri,
                      experiment_name="reference", show_progress=False)

    run_dir = tmp_path / "killed"
    command = [sys.executable, "-c", "import cli; cli.main()", "train", "--preset", "tiny", "--out", str(run_dir),
               "--tracking-uri", tracking_uri, "--experiment", "killed"]
    for setting in settings:
        command += ["--set", setting]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # a bound for a busy machine, not a timing
    while not RunFolder(run_dir).checkpoint_paths() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    stderr = process.communicate()[1].decode()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed: {stderr[-2000:]}"
    killed_at = load_checkpoint(RunFolder(run_dir).checkpoint_paths()[-1])[1]["trainer"]["iteration"]
    assert killed_at < 12

    resumed = train(resume=run_dir, tracking_uri=tracking_uri, show_progress=False)
    assert resumed.iteration == 12 and resumed.run_dir == run_dir.resolve()
    (run,) = [other for other in all_runs(tracking_uri) if other.info.run_id != reference.run_id]
    assert run.info.run_id == resumed.run_id and run.info.status == "FINISHED"
    assert curve(tracking_uri, resumed.run_id) == curve(tracking_uri, reference.run_id)
    assert sorted(curve(tracking_uri, resumed.run_id)) == list(range(1, 13))
    assert stray_files(run_dir) == []
    final, expected = load_checkpoint(resumed.checkpoint)[1], load_checkpoint(reference.checkpoint)[1]
    for network in ("ebm", "initializer", "ebm_optimizer"):
        torch.testing.assert_close(final["trainer"][network], expected["trainer"][network], rtol=0, atol=0)


def _ddp_rank(rank: int, world_size: int, port: int, out: Path, tracking_uri: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    batch_sizes, step = [], CooperativeTrainer.step
    CooperativeTrainer.step = lambda self, x, labels=None: batch_sizes.append(len(x)) or step(self, x, labels)
    result = train(preset("tiny"), overrides=[*QUICK, "training.iterations=3"], out=out, tracking_uri=tracking_uri,
                   device="cpu", show_progress=False)
    torch.save({"ebm": result.trainer.ebm.state_dict(), "initializer": result.trainer.initializer.state_dict(),
                "run_id": result.run_id, "batch_sizes": batch_sizes}, out / f"rank{rank}.pt")


def test_two_process_gloo_ddp_keeps_ranks_in_sync(tmp_path, tracking_uri, free_port):
    run_dir = tmp_path / "ddp"
    run_dir.mkdir()
    mp.spawn(_ddp_rank, args=(2, free_port, run_dir, tracking_uri), nprocs=2)
    first, second = (torch.load(run_dir / f"rank{rank}.pt") for rank in (0, 1))
    # Parameters and the spectral-norm u/v buffers alike.
    torch.testing.assert_close(first["ebm"], second["ebm"], rtol=0, atol=0)
    torch.testing.assert_close(first["initializer"], second["initializer"], rtol=0, atol=0)
    assert second["run_id"] is None
    run = MlflowClient(tracking_uri).get_run(first["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["cdrl.world_size"] == "2"
    # training.batch_size is the global batch: the tiny preset's 8 is 4 per process, and both are recorded.
    assert first["batch_sizes"] == second["batch_sizes"] == [4, 4, 4]
    assert (run.data.tags["cdrl.global_batch"], run.data.tags["cdrl.per_process_batch"]) == ("8", "4")
    _, payload = load_checkpoint(RunFolder(run_dir).checkpoint_paths()[-1])
    assert payload["world_size"] == 2 and len(payload["rng"]) == 2


def test_divergence_rolls_back_to_the_last_checkpoint_with_lower_learning_rates(tmp_path, tracking_uri, poison):
    poison(4)
    result = train(preset("tiny"), overrides=[*QUICK, "training.iterations=6", "run.checkpoint_every=2"],
                   out=tmp_path / "run", tracking_uri=tracking_uri, show_progress=False)
    run = MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and result.iteration == 6
    assert "iteration 4" in run.data.tags["cdrl.diverged"]
    assert curve(tracking_uri, result.run_id, "diverged") == {4: 1.0}
    assert curve(tracking_uri, result.run_id, "lr_scale") == {4: 0.5}
    assert all(math.isfinite(value) for value in curve(tracking_uri, result.run_id).values())
    # The speed restarts at the step rolled back to: never zero or negative across the rollback.
    assert all(rate > 0 for rate in curve(tracking_uri, result.run_id, "iterations_per_second").values())
    assert result.trainer.ebm_scheduler.base_lrs == [0.5 * 1e-4]
    assert load_checkpoint(result.checkpoint)[1]["rollbacks"] == 1


def test_divergence_stop_policy_fails_the_run_and_keeps_checkpoints_whole(tmp_path, tracking_uri, poison):
    poison(3)
    with pytest.raises(TrainingDiverged, match="iteration 3"):
        train(preset("tiny"), overrides=[*QUICK, "training.iterations=6", "run.checkpoint_every=2",
                                         "run.on_divergence=stop"],
              out=tmp_path / "run", tracking_uri=tracking_uri, show_progress=False)
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FAILED" and "cdrl.diverged" in run.data.tags
    assert all(math.isfinite(value) for value in curve(tracking_uri, run.info.run_id).values())
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["ckpt-00000002.pt"]


def run_cli(monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["cdrl-bench", "train", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "\n" not in error
    return error


def test_bad_input_is_one_line_and_leaves_nothing_behind(tmp_path, tracking_uri, monkeypatch, capsys):
    out = ["--out", str(tmp_path / "run"), "--tracking-uri", tracking_uri]
    assert "unknown preset 'nope'" in run_cli(monkeypatch, capsys, "--preset", "nope", *out)
    assert "needs a number" in run_cli(monkeypatch, capsys, "--preset", "tiny", "--set", "training.ebm_lr=fast", *out)
    assert "not key=value" in run_cli(monkeypatch, capsys, "--preset", "tiny", "--set", "training.ebm_lr", *out)
    assert "run.checkpoint_every must be at least 1" in run_cli(monkeypatch, capsys, "--preset", "tiny", "--set",
                                                                 "run.checkpoint_every=0", *out)
    assert "CIFAR-10 not found" in run_cli(monkeypatch, capsys, "--preset", "cifar10", "--data-dir",
                                           str(tmp_path / "no-data"), "--set", "data.download=false", *out)
    assert "no such checkpoint file, run folder or MLflow run id" in run_cli(
        monkeypatch, capsys, "--resume", str(tmp_path / "missing"), "--tracking-uri", tracking_uri)
    assert not (tmp_path / "run").exists() and all_runs(tracking_uri) == []


def test_resume_refuses_model_changes_and_occupied_run_folders(tmp_path, tracking_uri, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    train(preset("tiny"), overrides=[*QUICK, "training.iterations=3"], out=run_dir, tracking_uri=tracking_uri,
          show_progress=False)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "energy.width differ" in run_cli(monkeypatch, capsys, "--resume", str(run_dir), "--set", "energy.width=8",
                                            "--tracking-uri", tracking_uri)
    assert "already holds checkpoints" in run_cli(monkeypatch, capsys, "--preset", "tiny", "--out", str(run_dir),
                                                  "--tracking-uri", tracking_uri)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    assert [run.info.status for run in all_runs(tracking_uri)] == ["FINISHED"]
    # A best.pt alone (a run stopped after a selection, before its first checkpoint) is not a fresh folder either.
    lone = tmp_path / "lone" / "checkpoints"
    lone.mkdir(parents=True)
    (lone / "best.pt").write_bytes((run_dir / "checkpoints" / before[-1]).read_bytes())
    assert "holds the best.pt of an earlier run" in run_cli(monkeypatch, capsys, "--preset", "tiny", "--out",
                                                            str(lone.parent), "--tracking-uri", tracking_uri)
    # A longer budget is a legitimate change: the same run goes on, found here by its MLflow run id.
    (run,) = all_runs(tracking_uri)
    resumed = train(resume=run.info.run_id, overrides=["training.iterations=4"], tracking_uri=tracking_uri,
                    show_progress=False)
    assert resumed.iteration == 4 and [run.info.run_id for run in all_runs(tracking_uri)] == [resumed.run_id]


def test_a_run_folder_trains_in_one_process_at_a_time(tmp_path, tracking_uri, monkeypatch, capsys):
    import filelock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with filelock.FileLock(run_dir / ".lease"):  # another worker is training into this folder
        assert "is being trained by another process" in run_cli(
            monkeypatch, capsys, "--preset", "tiny", "--out", str(run_dir), "--tracking-uri", tracking_uri)
        assert not (run_dir / "checkpoints").exists() and all_runs(tracking_uri) == []
    # Released (as the OS releases it when its holder dies): the folder trains.
    result = train(preset("tiny"), overrides=[*QUICK, "training.iterations=1"], out=run_dir, tracking_uri=tracking_uri,
                   show_progress=False)
    assert result.iteration == 1


def test_interrupted_run_is_marked_killed(tmp_path, tracking_uri, monkeypatch):
    original = CooperativeTrainer.step

    def step(self, x, labels=None):
        if self.iteration == 2:
            raise KeyboardInterrupt
        return original(self, x, labels)

    monkeypatch.setattr(CooperativeTrainer, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train(preset("tiny"), overrides=[*QUICK, "run.checkpoint_every=1"], out=tmp_path / "run",
              tracking_uri=tracking_uri, show_progress=False)
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "KILLED" and sorted(curve(tracking_uri, run.info.run_id)) == [1, 2]
    assert stray_files(tmp_path / "run") == []
