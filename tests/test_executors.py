"""Executors: the tiny suite trained and scored for real through submitit's local cluster and a local Ray.

Each runs real jobs in processes of their own (no mocks): submitit with 2 Gloo ranks per
training, Ray through Ray Train's TorchTrainer and Ray tasks.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

import cli
from benchmarks.executors import JobSettings, SuiteJob, WorkUnit, _cause, _SubmititTask, work_units
from benchmarks.runner import evaluation_lease, run_folder
from benchmarks.suite import select
from cdrl.errors import CdrlBenchError
from cdrl.run_folder import RunFolder
from cdrl.tags import TAG_PID
from tiny_suite import TINY_SUITE


#: The tiny suite with one model (CDRL, scored at K=2 and K=1): two jobs per executor.
ONE_MODEL_SUITE = TINY_SUITE[:TINY_SUITE.index('[[models]]\nkey = "drl"')]


@pytest.fixture
def suite_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "tiny-test.toml").write_text(ONE_MODEL_SUITE)
    return tmp_path


def _run(*arguments: str):
    # An absolute store: MLflow caches a store per URI string, so a relative one would reach the first test's folder.
    result = CliRunner().invoke(cli.app, ["run", "--suite", "tiny-test.toml", "--device", "cpu",
                                          "--tracking-uri", f"sqlite:///{Path.cwd() / 'mlflow.db'}", *arguments])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _finished_runs(folder: Path) -> dict[str, object]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert all(run.info.status == "FINISHED" for run in runs)
    by_key = {run.data.tags["cdrl.run_key"]: run for run in runs}
    assert len(by_key) == len(runs), "a key was logged twice"
    return by_key


def _assert_one_run_per_key(folder: Path, world_size: int) -> None:
    by_key = _finished_runs(folder)
    assert sorted(by_key) == ["cdrl/K1/seed0", "cdrl/K2/seed0", "cdrl/seed0"]
    training = by_key["cdrl/seed0"]
    assert training.data.tags["cdrl.world_size"] == str(world_size)
    assert {by_key[key].data.tags["mlflow.parentRunId"] for key in ("cdrl/K1/seed0", "cdrl/K2/seed0")} == {
        training.info.run_id}


def test_submitit_local_cluster_trains_with_two_ranks_then_scores(suite_folder):
    output = _run("--executor", "submitit", "--cluster", "local", "--processes-per-training", "2")
    assert "submitted tiny-test:cdrl/seed0:train as job" in output and "2 jobs finished through submitit" in output
    _assert_one_run_per_key(suite_folder, world_size=2)
    logs = sorted(path.name for path in (suite_folder / "runs" / "jobs").rglob("*_log.out"))
    assert len(logs) == 3  # two ranks of the training, one evaluation
    # Everything is finished: a second call submits nothing.
    assert "0 jobs finished" in _run("--executor", "submitit", "--cluster", "local")


def test_ray_trains_through_torchtrainer_and_scores_in_tasks(suite_folder):
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    output = _run("--executor", "ray")
    # Ray's signal handlers leave with it (a later training must see SIGTERM as before).
    assert {number: signal.getsignal(number) for number in handlers} == handlers
    assert "1 trained and 2 scored through Ray (local)" in output
    _assert_one_run_per_key(suite_folder, world_size=1)
    assert (suite_folder / "runs" / "ray").is_dir()  # Ray Train's own record of the training


def test_jobs_are_portable_and_requeue_themselves(tmp_path, monkeypatch, tracking_uri):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-test.toml").write_text(TINY_SUITE)
    settings = JobSettings("tiny-test.toml", tracking_uri="sqlite:///relative.db", data_dir="data").portable()
    assert settings.suite == str(tmp_path / "tiny-test.toml") and settings.runs_dir == str(tmp_path / "runs")
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'relative.db'}"
    assert settings.data_dir == str(tmp_path / "data")
    assert JobSettings("ci-smoke").portable().suite == "ci-smoke"  # a suite's name is found anywhere

    settings = JobSettings(str(tmp_path / "tiny-test.toml"), tracking_uri=tracking_uri)
    units = work_units(settings.plan(), settings, processes_per_training=2)
    scored = {training: tuple(job.key for job in settings.plan().evaluations if job.training.key == training)
              for training in ("cdrl/seed0", "drl/seed0")}
    assert units == [WorkUnit(SuiteJob(settings, key, "train"), SuiteJob(settings, key, "eval", scored[key]))
                     for key in ("cdrl/seed0", "drl/seed0")]
    task = _SubmititTask(units[0].training)
    assert pickle.loads(pickle.dumps(task)) == task
    requeued = task.checkpoint()  # what submitit resubmits when SLURM preempts the job
    assert requeued.function == task and requeued.args == ()
    with pytest.raises(CdrlBenchError, match="does not split evenly over 3 processes"):
        work_units(settings.plan(), settings, processes_per_training=3)
    # A failed job is one line: the last line of its traceback, out of submitit's report.
    report = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent "
              "call last):\n  File \"x.py\", line 1\ncdrl.config.ConfigError: training.batch_size=32 does not "
              "split\n\n----------------------\nYou can check full logs with 'job.stderr(0)' or at paths:\n"
              "  - /jobs/1_0_log.err\n  - /jobs/1_0_log.out\n")
    assert _cause(report) == "cdrl.config.ConfigError: training.batch_size=32 does not split"


def test_the_jobs_of_shards_run_disjoint_evaluations(tracking_uri, monkeypatch):
    """A job names a model; a shard's jobs must still run only that shard's evaluations of it."""
    ran = []
    monkeypatch.setattr("benchmarks.runner.run_plan",
                        lambda plan, **options: ran.extend(job.key for job in plan.evaluations))
    settings = JobSettings("gate", seeds=4, tracking_uri=tracking_uri)
    for index in range(2):
        for unit in work_units(select(settings.plan(), shard=(index, 2)), settings):
            unit.evaluation()
    assert sorted(ran) == sorted(job.key for job in settings.plan().evaluations)


def test_a_preempted_submitit_job_is_requeued_and_resumes_its_training_to_the_end(suite_folder, tracking_uri):
    """submitit's local cluster signals the running training as SLURM does before a preemption (USR2):
    the training checkpoints the step it is in and closes its MLflow run KILLED, submitit requeues the
    job, and the requeued job resumes the same run folder and MLflow run to the last iteration."""
    import time

    import submitit

    long_suite = ONE_MODEL_SUITE.replace("iterations = 3", "iterations = 1500")
    (suite_folder / "long.toml").write_text(long_suite.replace("run.checkpoint_every=1000", "run.checkpoint_every=100"))
    settings = JobSettings("long.toml", tracking_uri=tracking_uri, device="cpu", threads=1).portable()
    (unit,) = work_units(settings.plan(), settings, processes_per_training=1)
    executor = submitit.AutoExecutor(folder=suite_folder / "jobs", cluster="local")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(_SubmititTask(unit.training))
    deadline = time.monotonic() + 300
    while not any((suite_folder / "runs").rglob("ckpt-*.pt")):  # training, its signal handlers installed
        assert job.state not in ("FINISHED", "INTERRUPTED") and time.monotonic() < deadline, job.stderr()
        time.sleep(0.05)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    os.kill(int(run.data.tags[TAG_PID]), signal.SIGUSR2)  # what SLURM sends the job's task, as submitit asks
    job.result()
    log = job.stdout()
    assert "Requeued job" in log and log.count("Starting with JobEnvironment") == 2
    assert [found.info.run_id for found in client.search_runs([run.info.experiment_id])] == [run.info.run_id]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.params["training.iterations"] == "1500"
    stop = re.match(r"stopped by SIGUSR2 after iteration (\d+); checkpoint .*ckpt-0*\1\.pt", run.data.tags["cdrl.preempted"])
    stopped_at = int(stop.group(1))
    assert 100 < stopped_at < 1500 and f"trained cdrl/seed0 (iterations {stopped_at + 1}-1500, continued" in log
    # One loss curve to the end, the stop's step on it once: the requeued job resumed, it did not start again.
    steps = [metric.step for metric in client.get_metric_history(run.info.run_id, "ebm_loss")]
    assert len(steps) == len(set(steps)) and stopped_at in steps and max(steps) == 1500


def test_the_suite_says_which_iterations_a_training_ran(suite_folder):
    from benchmarks.runner import _trained_line

    training = JobSettings("tiny-test.toml").plan().trainings[0]  # 3 iterations
    assert _trained_line(training, 0, 14.2) == "trained cdrl/seed0 (3 iterations, 14 s)"
    assert _trained_line(training, 1, 2.0) == "trained cdrl/seed0 (iterations 2-3, continued from its checkpoint, 2 s)"
    assert _trained_line(training, 3, 0.1) == "trained cdrl/seed0 (3 iterations, already trained, 0 s)"


def test_local_executor_refuses_cluster_options(suite_folder):
    result = CliRunner().invoke(cli.app, ["run", "--suite", "tiny-test.toml", "--processes-per-training", "2"])
    assert result.exit_code != 0 and "torchrun --nproc_per_node" in str(result.exception)
    result = CliRunner().invoke(cli.app, ["run", "--suite", "tiny-test.toml", "--executor", "ray", "--phase",
                                          "train"])
    assert result.exit_code != 0 and "--phase is for --executor local" in str(result.exception)
    assert not (suite_folder / "runs").exists()
    assert os.listdir(suite_folder) == ["tiny-test.toml"]


def test_ray_train_starts_its_process_group_with_the_collective_timeout(monkeypatch):
    import ray
    import ray.train.torch

    from benchmarks import executors

    started = {}

    class RecordingTrainer:  # Ray Train's TorchTrainer as far as the group's settings go
        def __init__(self, *args, torch_config, **kwargs):
            started["timeout_s"] = torch_config.timeout_s

        def fit(self):
            return type("Result", (), {"error": None})()

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", RecordingTrainer)
    job = SuiteJob(JobSettings("ci-smoke"), "cdrl/seed0", "train")
    assert executors._fit_training(job, 2, False, "unused", 0, timeout_s=5400) == "cdrl/seed0"
    assert started == {"timeout_s": 5400}
    # The executor reads the bound where the command runs, and a bad one stops it before Ray starts.
    monkeypatch.setattr(ray, "init", lambda **_: pytest.fail("Ray started before the timeout was checked"))
    monkeypatch.setenv("CDRL_BENCH_COLLECTIVE_TIMEOUT_MINUTES", "soon")
    with pytest.raises(CdrlBenchError, match="CDRL_BENCH_COLLECTIVE_TIMEOUT_MINUTES='soon' is not a number"):
        executors.RayExecutor().execute(JobSettings("ci-smoke").plan(), JobSettings("ci-smoke"), None)
    # submitit's jobs read it themselves: a bad value stops the command before any job is submitted.
    import submitit

    monkeypatch.setattr(submitit, "AutoExecutor", lambda **_: pytest.fail("submitted before the check"))
    with pytest.raises(CdrlBenchError, match="CDRL_BENCH_COLLECTIVE_TIMEOUT_MINUTES='soon' is not a number"):
        executors.SubmititExecutor(Path("unused"), cluster="local").execute(JobSettings("ci-smoke").plan(),
                                                                            JobSettings("ci-smoke"), None)


#: Another process that holds a lease, as a second `run --suite` of the same suite does while it works.
_HOLD = "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); " \
        "time.sleep(600)"


@contextlib.contextmanager
def _held_by_another_process(lock_file: Path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(lock_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_concurrent_runs_of_a_suite_split_the_work_and_report_it(suite_folder):
    """Issue #31.4: two `run --suite` in one folder both scored every point, and the second exited 2."""
    plan = JobSettings("tiny-test.toml").plan()
    first, second = plan.evaluations[:2]
    with _held_by_another_process(evaluation_lease(plan, first, Path("runs"))):
        output = _run()
    assert re.search(r"1 trained, 1 scored, 0 already finished, 0 scored by another process running this suite "
                     r"\(1 still running there: the same command again reports them\)", " ".join(output.split()))
    # The held evaluation was left to its holder (the training's own run is there too).
    assert set(_finished_runs(suite_folder)) == {second.training.key, second.key}
    # The other process died without scoring it: its lease went with it, and the next run scores it.
    assert "1 trained, 1 scored, 1 already finished;" in " ".join(_run().split())  # "trained": reopened
    assert set(_finished_runs(suite_folder)) == {second.training.key, first.key, second.key}


def test_a_training_another_run_holds_is_left_to_it_with_its_evaluations(suite_folder):
    plan = JobSettings("tiny-test.toml").plan()
    (training,) = plan.trainings
    folder = RunFolder(run_folder(plan, training, Path("runs")))
    folder.root.mkdir(parents=True)
    with _held_by_another_process(folder.lease_file):
        output = " ".join(_run().split())
    assert f"left {training.key} and its 2 evaluations to the process training it" in output
    assert "0 trained, 0 scored, 0 already finished, 0 scored by another process running this suite (2 still " \
           "running there" in output
    assert not (suite_folder / "mlflow.db").exists() or _finished_runs(suite_folder) == {}
