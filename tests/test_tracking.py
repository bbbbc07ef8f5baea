"""Crash-safe tracking (#15): a store a kill cannot break, one-line URI errors, runs that end KILLED, orphans closed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

import cli
from cdrl.checkpoint import load_checkpoint
from cdrl.config import preset
from cdrl.run_folder import RunFolder
from cdrl.metrics import measure
from cdrl.scoring import Recording, ScoringRequest, score_data
from cdrl.tags import (TAG_CHECKPOINT_DIR, TAG_DESCRIPTION, TAG_EXPERIMENT_KIND, TAG_HOST, TAG_KILLED, TAG_KIND,
                       TAG_PARENT_RUN, TAG_PID, TAG_RUN_KEY, TAG_SUITE)
from cdrl.store import Store, TrackingError, open_store
from cdrl.tracking import DEFAULT_DESCRIPTION, RunInterrupted, RunTerminated, tracked_run
from cdrl.train_loop import train

REPO = Path(__file__).resolve().parents[1]
QUICK = ["run.log_every=1", "run.n_samples=4", "run.sample_every=100", "run.checkpoint_every=3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
DEADLINE = 300  # seconds: a bound for a busy machine, not a timing


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (tests/conftest.py)."""


def all_runs(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    return client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])


def litter(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(".mlflow.db"))


def creating(folder: Path) -> bool:
    return any(".creating-" in name for name in litter(folder))


# --------------------------------------------------------------------------- (a) creating the store

def test_a_crash_while_the_schema_is_made_leaves_no_store(tmp_path, monkeypatch):
    import mlflow.store.db.utils as db_utils

    def half_made(engine):
        with engine.begin() as connection:  # what a kill during MLflow's migrations leaves behind
            connection.exec_driver_sql("CREATE TABLE _alembic_tmp_experiments (id INTEGER)")
        raise KeyboardInterrupt

    monkeypatch.setattr(db_utils, "_initialize_tables", half_made)
    database = tmp_path / "mlflow.db"
    with pytest.raises(KeyboardInterrupt):
        open_store(f"sqlite:///{database}")
    assert not database.exists()
    assert not creating(tmp_path)  # its temporary file went with it


_CREATE = textwrap.dedent("""
    import sys
    from cdrl.tracking import start_or_resume_run
    start_or_resume_run(tracking_uri=sys.argv[1], experiment_name="both").finish()
""")


def test_a_sigkill_during_creation_leaves_no_store_and_concurrent_first_commands_share_one(tmp_path):
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    creator = subprocess.Popen([sys.executable, "-c", _CREATE, uri], env=ENV, stderr=subprocess.PIPE)
    deadline = time.monotonic() + DEADLINE
    while not (creating(tmp_path) or database.exists()) and creator.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.3)  # into the schema's migrations
    creator.send_signal(signal.SIGKILL)
    stderr = creator.communicate()[1].decode()
    assert creator.returncode == -signal.SIGKILL, f"ended before the kill: {stderr[-2000:]}"
    if database.exists():  # a store after a kill must work
        open_store(uri)
    else:
        assert creating(tmp_path)  # the killed creator's temporary file, dropped by the next creator

    # Two first commands at once: one creates the store (dropping the dead one's file), both use it.
    both = [subprocess.Popen([sys.executable, "-c", _CREATE, uri], env=ENV, stderr=subprocess.PIPE)
            for _ in range(2)]
    for process in both:
        stderr = process.communicate(timeout=DEADLINE)[1].decode()
        assert process.returncode == 0, stderr[-2000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("both").experiment_id])
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    assert litter(tmp_path) == []


def test_an_existing_store_is_used_as_it_is(tracking_uri):
    kept = MlflowClient(tracking_uri).create_experiment("kept")
    opened, uri = open_store(tracking_uri)
    assert uri.uri == tracking_uri and opened.get_experiment(kept).name == "kept"
    assert litter(Path(tracking_uri.removeprefix("sqlite:///")).parent) == []


# --------------------------------------------------------------------------- (b) URIs

def run_cli_error(monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["cdrl-bench", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "\n" not in error, error
    return error


def test_bad_tracking_uris_are_one_line_errors_before_anything_is_made(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no-such-folder" / "mlflow.db"
    train_args = ["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--tracking-uri"]
    assert "no store for the scheme 'foo'" in run_cli_error(monkeypatch, capsys, *train_args, "foo://bar")
    error = run_cli_error(monkeypatch, capsys, *train_args, f"sqlite:///{missing}")
    assert f"{missing.parent} of the SQLite store does not exist: create it" in error
    assert "is a folder, not a database file" in run_cli_error(monkeypatch, capsys, *train_args,
                                                               f"sqlite:///{tmp_path}")
    assert "no store for the scheme 'foo'" in run_cli_error(monkeypatch, capsys, "run", "--suite", "ci-smoke",
                                                            "--runs-dir", str(tmp_path / "runs"), "--tracking-uri",
                                                            "foo://bar")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    assert "MLFLOW_TRACKING_URI=foo://bar" in run_cli_error(monkeypatch, capsys, *train_args[:-1])
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    assert not missing.parent.exists()


@pytest.mark.parametrize("uri", ["http://localhost:5000", "https://mlflow.example.org", "databricks",
                                 "postgresql://user@host/db", "mysql+pymysql://u@h/db"])
def test_every_database_and_server_scheme_mlflow_supports_passes(uri):
    assert Store.resolve(uri).uri == uri


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "mlruns", "garbage"])
def test_a_folder_store_is_refused_in_one_line(uri):
    with pytest.raises(TrackingError, match=r"a folder store \(a plain path or file://\) is not supported: pass "
                                            r"sqlite:///PATH.db"):
        Store.resolve(uri)


# --------------------------------------------------------------------------- (c) signals

@pytest.mark.parametrize("name, raised", [("SIGTERM", RunTerminated), ("SIGHUP", RunTerminated),
                                          ("SIGINT", RunInterrupted)])
def test_a_signal_inside_a_run_ends_it_killed_with_its_metrics_sent(tracking_uri, name, raised):
    signum = getattr(signal, name)
    if signal.getsignal(signum) not in (signal.SIG_DFL, signal.default_int_handler):
        pytest.skip(f"{name} is handled by the test runner here")
    before = signal.getsignal(signum)
    with pytest.raises(raised) as caught:
        with tracked_run(tracking_uri=tracking_uri, flush_seconds=1e9) as run:
            run.log_metrics({"loss": 0.5}, step=7)  # buffered: sent only when the run closes
            os.kill(os.getpid(), signum)
            time.sleep(60)  # the handler raises here
    assert signal.getsignal(signum) is before  # the previous handler is back
    if raised is RunTerminated:
        assert caught.value.code == 128 + signum
    record = MlflowClient(tracking_uri).get_run(run.run_id)
    assert record.info.status == "KILLED" and record.data.tags[TAG_KILLED] == f"interrupted by {name}"
    assert record.data.metrics == {"loss": 0.5}


def test_an_ignored_sighup_stays_ignored_and_a_signal_while_closing_waits(tracking_uri, monkeypatch):
    from cdrl.tracking import TrackedRun

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with tracked_run(tracking_uri=tracking_uri) as run:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert MlflowClient(tracking_uri).get_run(run.run_id).info.status == "FINISHED"

    finish = TrackedRun.finish

    def signalled_while_closing(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        finish(self, *args, **kwargs)

    monkeypatch.setattr(TrackedRun, "finish", signalled_while_closing)
    with pytest.raises(RunTerminated):
        with tracked_run(tracking_uri=tracking_uri) as run:
            pass
    assert MlflowClient(tracking_uri).get_run(run.run_id).info.status == "FINISHED"  # closed, then stopped


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT", "SIGHUP"])
@pytest.mark.usefixtures("sighup_heard")
def test_a_stop_signal_to_a_training_checkpoints_it(tmp_path, tracking_uri, name):
    """SIGTERM (a scheduler), Ctrl-C and SIGHUP (a closed terminal) alike: checkpoint, KILLED, the resume command."""
    signum = getattr(signal, name)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-c", "import cli; cli.main()", "train", "--preset", "tiny", "--out", str(run_dir),
               "--tracking-uri", tracking_uri]
    for setting in ("training.iterations=100000", "run.log_every=1", "run.flush_seconds=100000",
                    "run.checkpoint_every=100000", "run.sample_every=2", "run.n_samples=4"):
        command += ["--set", setting]
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    grid = run_dir / "samples" / "samples-00000002.png"
    deadline = time.monotonic() + DEADLINE
    while not grid.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signum)
    stderr = process.communicate(timeout=DEADLINE)[1].decode()
    assert process.returncode == 128 + signum, f"status {process.returncode}: {stderr[-2000:]}"
    assert "Traceback" not in stderr
    # Preemption (cdrl.preemption): the step the signal came in is finished, logged and checkpointed.
    assert f"stopped by {name} after iteration" in stderr and f"cdrl-bench train --resume {run_dir}" in stderr
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "KILLED" and run.data.tags[TAG_KILLED] == f"interrupted by {name}"
    # A 100000 s flush interval: the metrics reached the store when the run stopped.
    steps = [metric.step for metric in MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "ebm_loss")]
    (checkpoint,) = RunFolder(run_dir).checkpoint_paths()
    stopped_at = load_checkpoint(checkpoint)[1]["trainer"]["iteration"]
    assert steps[:2] == [1, 2] and steps[-1] == stopped_at
    resumed = train(resume=run_dir, overrides=[f"training.iterations={stopped_at + 1}"], tracking_uri=tracking_uri,
                    show_progress=False)
    assert resumed.iteration == stopped_at + 1 and resumed.run_id == run.info.run_id


# --------------------------------------------------------------------------- (d) orphans

def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: gone
    return process.pid


def _planted(client: MlflowClient, experiment: str, pid: int, **tags: str) -> str:
    """A RUNNING run as a process that ``pid`` was left it, here on this machine."""
    return client.create_run(experiment, tags={TAG_HOST: socket.gethostname(), TAG_PID: str(pid),
                                               **tags}).info.run_id


def test_training_in_a_folder_closes_the_runs_that_sigkilled_trainings_left_running(tmp_path, tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("orphans")
    run_dir = tmp_path / "run"
    folder = {TAG_CHECKPOINT_DIR: str((run_dir / "checkpoints").resolve())}
    orphan = _planted(client, experiment, _dead_pid(), **folder)  # killed before its first checkpoint
    elsewhere = _planted(client, experiment, _dead_pid(), **{TAG_CHECKPOINT_DIR: str(tmp_path / "other")})
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        alive = _planted(client, experiment, sleeper.pid, **folder)  # its process still runs: not an orphan

        first = train(preset("tiny"), overrides=[*QUICK, "training.iterations=3"], out=run_dir,
                      tracking_uri=tracking_uri, show_progress=False)
        killed = client.get_run(orphan)
        assert killed.info.status == "KILLED" and first.run_id in killed.data.tags[TAG_KILLED]
        assert client.get_run(alive).info.status == client.get_run(elsewhere).info.status == "RUNNING"

        # Resuming keeps its own run and closes a twin left beside it.
        twin = _planted(client, experiment, _dead_pid(), **folder)
        resumed = train(resume=run_dir, overrides=["training.iterations=4"], tracking_uri=tracking_uri,
                        show_progress=False)
        assert resumed.run_id == first.run_id and client.get_run(first.run_id).info.status == "FINISHED"
        assert client.get_run(twin).info.status == "KILLED"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_suite_evaluation_closes_the_twin_a_killed_one_left(tracking_uri, tmp_path):
    client = MlflowClient(tracking_uri)
    # Artifacts beside the store: MLflow's default is ./mlruns in the working directory.
    experiment = client.create_experiment("suite", artifact_location=(tmp_path / "artifacts").as_uri())
    key = {TAG_KIND: "eval", TAG_SUITE: "unit", TAG_RUN_KEY: "toy/K3/seed0"}
    twin = _planted(client, experiment, _dead_pid(), **key)
    other = _planted(client, experiment, _dead_pid(), **{**key, TAG_RUN_KEY: "toy/K5/seed0"})
    result = score_data(preset("toy-checkerboard"), 50, ScoringRequest(n_reference=50),
                        record=Recording(tracking_uri, "suite", {TAG_SUITE: "unit", TAG_RUN_KEY: "toy/K3/seed0"}))
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert client.get_run(twin).info.status == "KILLED"
    assert client.get_run(other).info.status == "RUNNING"


def test_a_store_left_half_made_by_an_older_version_is_a_one_line_error(tmp_path):
    import sqlite3

    database = tmp_path / "mlflow.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE _alembic_tmp_experiments (id INTEGER)")
        connection.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    with pytest.raises(TrackingError, match=r"is half-made .* move it away") as caught:
        open_store(f"sqlite:///{database}")
    assert "\n" not in str(caught.value)


def test_an_evaluation_logs_the_feature_and_metric_seconds_that_scoring_measured(tracking_uri, monkeypatch):
    import dataclasses

    import cdrl.scoring

    def measure_with_known_seconds(request):
        return dataclasses.replace(measure(request), feature_seconds=12.5, metric_seconds=34.5)

    monkeypatch.setattr(cdrl.scoring, "measure", measure_with_known_seconds)
    result = score_data(preset("toy-checkerboard"), 50, ScoringRequest(n_reference=50), record=Recording(tracking_uri))
    logged = MlflowClient(tracking_uri).get_run(result.run_id).data.metrics
    # One definition of each phase: what measure counted, not what is left of the scoring run's wall time.
    assert result.timing["feature_seconds"] == logged["feature_seconds"] == 12.5
    assert result.timing["metric_seconds"] == logged["metric_seconds"] == 34.5
    assert logged["scoring_seconds"] < 12.5


def test_a_run_whose_last_metrics_cannot_be_sent_ends_failed_not_finished(tracking_uri, monkeypatch):
    """A suite counts a FINISHED evaluation as done for good: one whose metrics never arrived must not be."""
    def unreachable(self, run_id, metrics=(), **options):
        raise ConnectionError("tracking server unreachable")

    with pytest.raises(ConnectionError):
        with tracked_run(tracking_uri=tracking_uri, experiment_name="flush") as run:
            monkeypatch.setattr(MlflowClient, "log_batch", unreachable)
            run.log_metrics({"fid": 12.5}, step=0)
    monkeypatch.undo()
    (ended,) = all_runs(tracking_uri)
    assert ended.info.status == "FAILED" and "fid" not in ended.data.metrics


def test_a_floor_reads_its_data_with_the_reference_overrides(tracking_uri, monkeypatch):
    """A floor is compared with rows scored under a suite's reference_overrides: it must read data the same way."""
    import cdrl.scoring

    seen, original = [], cdrl.scoring.data_as_samples
    monkeypatch.setattr(cdrl.scoring, "data_as_samples",
                        lambda config, *arguments: seen.append(config.data.toy_scale) or original(config, *arguments))
    result = score_data(preset("toy-checkerboard"), 50,
                        ScoringRequest(n_reference=50, reference_overrides=("data.toy_scale=2.0",)),
                        record=Recording(tracking_uri))
    assert seen == [2.0] and result.protocol["reference_overrides"] == "data.toy_scale=2.0"


def test_a_standalone_evaluation_is_named_and_nested_under_the_training_it_scores(tmp_path, tracking_uri, empty_store):
    """`eval RUN_FOLDER` logged a randomly named run (fun-newt-863) beside, not under, the training it scored; and
    MLflow 3 opened experiments without a kind in its GenAI traces view."""
    from typer.testing import CliRunner

    trained = train(preset("toy-checkerboard"), overrides=["training.iterations=2", "training.batch_size=32",
                                                           "run.n_samples=4", "run.sample_every=100"],
                    out=tmp_path / "run", tracking_uri=tracking_uri, show_progress=False)

    def evaluate(uri: str):
        result = CliRunner().invoke(cli.app, ["eval", str(trained.run_dir), "--n-samples", "100", "--steps", "2",
                                              "--device", "cpu", "--tracking-uri", uri])
        assert result.exit_code == 0, result.output
        return MlflowClient(uri).get_run(result.output.split("MLflow run ")[1].split()[0])

    evaluation = evaluate(tracking_uri)
    assert evaluation.info.run_name == "eval toy-checkerboard 6x2"
    assert evaluation.data.tags[TAG_PARENT_RUN] == trained.run_id
    assert evaluation.info.experiment_id == MlflowClient(tracking_uri).get_run(trained.run_id).info.experiment_id
    experiment = MlflowClient(tracking_uri).get_experiment(evaluation.info.experiment_id)
    assert experiment.tags[TAG_EXPERIMENT_KIND] == "custom_model_development"
    assert experiment.tags[TAG_DESCRIPTION] == DEFAULT_DESCRIPTION
    # In a store without its training run (a copied checkpoint) the evaluation stands alone: no dangling parent.
    elsewhere = tmp_path / "elsewhere.db"
    elsewhere.write_bytes(empty_store.read_bytes())
    assert TAG_PARENT_RUN not in evaluate(f"sqlite:///{elsewhere}").data.tags
    # An experiment made before cdrl-bench set the kind gets it with its next run.
    old = MlflowClient(tracking_uri).create_experiment("made-before")
    with tracked_run(tracking_uri=tracking_uri, experiment_name="made-before"):
        pass
    assert MlflowClient(tracking_uri).get_experiment(old).tags[TAG_EXPERIMENT_KIND] == "custom_model_development"
