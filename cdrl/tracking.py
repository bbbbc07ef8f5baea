"""MLflow tracking shared by training, evaluation and suites.

Where runs go: ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else an embedded SQLite store
in the working directory (``sqlite:///mlflow.db``; MLflow's plain ``./mlruns`` file store is
deprecated). Experiments created in a SQLite store keep their artifacts in ``mlartifacts/``
beside the database file; a tracking server chooses its own artifact store.

Tag conventions (other commands filter on them):

* ``cdrl.kind``: ``train`` or ``eval``;
* ``cdrl.preset``, ``cdrl.method`` (``cdrl`` | ``drl``);
* ``cdrl.checkpoint_dir`` (training runs): the folder of the run's checkpoints;
* ``cdrl.suite``, ``cdrl.run_key``: set by callers that run suites;
* ``cdrl.diverged``: present when a non-finite value was seen (it is never logged raw).

:func:`tracked_run` opens (or resumes) a run and closes it FINISHED, FAILED or KILLED;
:class:`TrackedRun` buffers metrics and sends them with ``log_batch``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from cdrl.errors import CdrlBenchError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "cdrl-bench"
ARTIFACT_FOLDER = "mlartifacts"

TAG_KIND = "cdrl.kind"
TAG_PRESET = "cdrl.preset"
TAG_METHOD = "cdrl.method"
TAG_CHECKPOINT_DIR = "cdrl.checkpoint_dir"
TAG_SUITE = "cdrl.suite"
TAG_RUN_KEY = "cdrl.run_key"
TAG_DIVERGED = "cdrl.diverged"
#: training.batch_size (the global batch) and each process's share of it.
TAG_GLOBAL_BATCH = "cdrl.global_batch"
TAG_PER_PROCESS_BATCH = "cdrl.per_process_batch"
#: Metric logged (value 1) at the step where a non-finite value was seen.
DIVERGED_METRIC = "diverged"

# MLflow's per-request limits of log_batch.
_METRICS_PER_BATCH = 1000
_PARAMS_PER_BATCH = 100


class TrackingError(CdrlBenchError):
    """The tracking store or a run in it cannot be used; the message names the fix."""


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _artifact_location(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite database; None lets other stores and servers decide."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.resolve().parent / ARTIFACT_FOLDER).as_uri()


def _millis() -> int:
    return int(time.time() * 1000)


class TrackedRun:
    """One MLflow run: params and tags go out at once, metrics are buffered and sent in batches."""

    def __init__(self, client: MlflowClient, run_id: str, flush_seconds: float = 30.0):
        self.client = client
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()

    def log_params(self, params: dict[str, Any]) -> None:
        entries = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(entries), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[start:start + _PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, Any]) -> None:
        entries = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(entries), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=entries[start:start + _PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Queue finite values; a non-finite one becomes ``diverged`` = 1 and a ``cdrl.diverged`` tag."""
        timestamp = _millis()
        bad = sorted(key for key, value in metrics.items() if not math.isfinite(value))
        self._pending.extend(Metric(key, float(value), timestamp, step)
                             for key, value in metrics.items() if key not in bad)
        if bad:
            self._pending.append(Metric(DIVERGED_METRIC, 1.0, timestamp, step))
            self.set_tags({TAG_DIVERGED: f"non-finite {', '.join(bad)} at step {step}"})
        if len(self._pending) >= _METRICS_PER_BATCH or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            self.client.log_batch(self.run_id, metrics=self._pending[:_METRICS_PER_BATCH])
            del self._pending[:_METRICS_PER_BATCH]
        self._last_flush = time.monotonic()

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, dictionary: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, dictionary, artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        """Send what is buffered and mark the run FINISHED, FAILED or KILLED."""
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status)


def _experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage != "active":
            raise TrackingError(f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore`) "
                                "or pass another experiment name")
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri))


def get_run_tags(run_id: str, tracking_uri: str | None = None) -> dict[str, str]:
    """The tags of an existing run; TrackingError naming the store when it is not there."""
    uri = resolve_tracking_uri(tracking_uri)
    try:
        return dict(MlflowClient(uri).get_run(run_id).data.tags)
    except MlflowException:
        raise TrackingError(f"MLflow run {run_id} is not in {uri}: pass the --tracking-uri it was logged to") from None


def start_or_resume_run(*, tracking_uri: str | None = None, experiment_name: str | None = None,
                        run_id: str | None = None, run_name: str | None = None,
                        tags: dict[str, Any] | None = None, flush_seconds: float = 30.0) -> TrackedRun:
    """A new RUNNING run in ``experiment_name`` (default ``cdrl-bench``), or run ``run_id`` set RUNNING again."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    if run_id is not None:
        get_run_tags(run_id, uri)
        client.update_run(run_id, status="RUNNING")
        run = TrackedRun(client, run_id, flush_seconds)
        run.set_tags(tags or {})
        return run
    experiment_id = _experiment_id(client, experiment_name or DEFAULT_EXPERIMENT, uri)
    created = client.create_run(experiment_id, tags={key: str(value) for key, value in (tags or {}).items()},
                                run_name=run_name)
    return TrackedRun(client, created.info.run_id, flush_seconds)


@contextlib.contextmanager
def tracked_run(*, tracking_uri: str | None = None, experiment_name: str | None = None, run_id: str | None = None,
                run_name: str | None = None, tags: dict[str, Any] | None = None,
                flush_seconds: float = 30.0) -> Iterator[TrackedRun]:
    """:func:`start_or_resume_run`, closed FINISHED on success, KILLED on Ctrl-C, FAILED on any other error."""
    run = start_or_resume_run(tracking_uri=tracking_uri, experiment_name=experiment_name, run_id=run_id,
                              run_name=run_name, tags=tags, flush_seconds=flush_seconds)
    try:
        yield run
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        # A store that fails while closing must not hide the error that ended the run.
        with contextlib.suppress(Exception):
            run.finish(status)
        raise
    run.finish("FINISHED")
