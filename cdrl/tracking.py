"""MLflow tracking shared by training, evaluation and suites.

Where runs go is a :class:`cdrl.store.Store`, resolved and checked once at a command's edge and
passed whole. The tags runs carry (other commands filter on them) are :mod:`cdrl.tags`.

:func:`tracked_run` opens (or resumes) a run and closes it FINISHED, FAILED or KILLED;
:class:`TrackedRun` buffers metrics and sends them with ``log_batch``.

Crash safety. A kill at any moment leaves a store that works:

* a SQLite store that does not exist yet is created whole (:func:`cdrl.store.open_store`);
* while a run is open, SIGTERM and SIGHUP (and Ctrl-C, SIGINT) raise into :func:`tracked_run`,
  which sends the buffered metrics and closes the run KILLED before the process exits
  (SIGTERM/SIGHUP exit with status 128 + the signal's number);
* SIGKILL cannot be caught: a run opened with ``replaces=`` closes, KILLED, the RUNNING runs
  of dead processes that carry the same identifying tags (a training's ``cdrl.checkpoint_dir``,
  a suite evaluation's ``cdrl.run_key``).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import threading
import time
from typing import Any, Iterator, Sequence

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from cdrl.store import Store, TrackingError, open_store
from cdrl.tags import TAG_DESCRIPTION, TAG_DIVERGED, TAG_EXPERIMENT_KIND, TAG_HOST, TAG_KILLED, TAG_PID

DEFAULT_EXPERIMENT = "cdrl-bench"

#: Metric logged (value 1) at the step where a non-finite value was seen.
DIVERGED_METRIC = "diverged"
EXPERIMENT_KIND = "custom_model_development"
DEFAULT_DESCRIPTION = ("Runs of `cdrl-bench train` (tag cdrl.kind=train) and `cdrl-bench eval` (cdrl.kind=eval); "
                       "an evaluation is nested under the training run of its checkpoint when that run is here.")

# MLflow's per-request limits of log_batch.
_METRICS_PER_BATCH = 1000
_PARAMS_PER_BATCH = 100



# --------------------------------------------------------------------------- signals

class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) while a run was open: the run was closed KILLED."""

    signum = signal.SIGINT


class RunTerminated(SystemExit):
    """SIGTERM or SIGHUP while a run was open: the run was closed KILLED; the process exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


#: Taken over while a run is open, where their handler is Python's default (never an ignored one: nohup).
_SIGNALS = {"SIGINT": signal.default_int_handler, "SIGTERM": signal.SIG_DFL, "SIGHUP": signal.SIG_DFL}


class _SignalGuard:
    """Signals raise into the main thread; while deferring (opening or closing a run) the first one waits.

    One guard per process at a time: a run opened inside another shares the outer run's guard.
    """

    _active: _SignalGuard | None = None

    def __init__(self) -> None:
        self.deferring = False
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}
        self._depth = 0

    @classmethod
    def acquire(cls) -> _SignalGuard:
        guard = cls._active or cls()
        if guard._depth == 0 and threading.current_thread() is threading.main_thread():
            for name, default in _SIGNALS.items():
                number = getattr(signal, name, None)
                if number is not None and signal.getsignal(number) is default:
                    guard._previous[number] = signal.signal(number, guard._handle)
            cls._active = guard
        guard._depth += 1
        return guard

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            for number, handler in self._previous.items():
                signal.signal(number, handler)
            self._previous.clear()
            self.pending = None
            if _SignalGuard._active is self:
                _SignalGuard._active = None

    def _handle(self, signum: int, frame) -> None:
        if self.deferring and self.pending is None:
            self.pending = signum  # a second signal does not wait: the user insists
            return
        raise interruption(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        outer, self.deferring = self.deferring, True
        try:
            yield
        finally:
            self.deferring = outer

    def raise_pending(self) -> None:
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise interruption(signum)


def interruption(signum: int) -> BaseException:
    """What a signal raises into a run: Ctrl-C a KeyboardInterrupt, the others an exit with status 128 + signum."""
    return RunInterrupted() if signum == signal.SIGINT else RunTerminated(signum)


def _kill_reason(error: BaseException) -> str:
    return f"interrupted by {signal.Signals(getattr(error, 'signum', signal.SIGINT)).name}"


# --------------------------------------------------------------------------- orphans

def _alive_here(tags: dict[str, str]) -> bool:
    """True when the process that opened a run is still alive on this machine (then it is no orphan)."""
    if tags.get(TAG_HOST) != socket.gethostname():
        return False  # another machine, or no record: a RUNNING twin there cannot be checked
    try:
        pid = int(tags.get(TAG_PID, ""))
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def close_orphans(client: MlflowClient, run_id: str, identity: dict[str, str]) -> list[str]:
    """Close KILLED the RUNNING runs, other than ``run_id``, whose tags match ``identity`` and whose process is gone.

    Such a run was left by a process killed without a chance to close it (SIGKILL, a lost machine).
    Returns their ids.
    """
    if not identity:
        return []
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    clauses = ["attributes.status = 'RUNNING'"]
    clauses += [f"tags.`{key}` = '{value}'" for key, value in identity.items()
                if "'" not in value and "`" not in key and "\\" not in value]
    closed, token = [], None
    while experiments:
        runs = client.search_runs(experiments, " AND ".join(clauses), max_results=1000, page_token=token)
        for run in runs:
            tags = run.data.tags
            if (run.info.run_id == run_id or run.info.status != "RUNNING"
                    or any(tags.get(key) != value for key, value in identity.items()) or _alive_here(tags)):
                continue
            client.set_tag(run.info.run_id, TAG_KILLED,
                           f"orphan: found RUNNING by run {run_id}, which has the same "
                           f"{', '.join(sorted(identity))}; its process was gone")
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
        token = runs.token
        if not token:
            break
    return closed


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

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Send what is buffered and mark the run FINISHED, FAILED or KILLED (``reason``: tag ``cdrl.killed``).

        A run whose last metrics could not be sent ends FAILED, never FINISHED: a suite counts a
        FINISHED evaluation as done, and would never score it again.
        """
        try:
            self.flush()
            if reason is not None:
                self.set_tags({TAG_KILLED: reason})
        except BaseException:
            self.client.set_terminated(self.run_id, "FAILED" if status == "FINISHED" else status)
            raise
        self.client.set_terminated(self.run_id, status)


def _experiment_id(client: MlflowClient, name: str, store: Store) -> str:
    """The experiment ``name``, created with its kind and a description if it is new; its kind set if it lacks one."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage != "active":
            raise TrackingError(f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore`) "
                                "or pass another experiment name")
        if TAG_EXPERIMENT_KIND not in experiment.tags:  # made before cdrl-bench set it
            client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return experiment.experiment_id
    description = (DEFAULT_DESCRIPTION if name == DEFAULT_EXPERIMENT
                   else f"cdrl-bench runs logged with --experiment {name}.")
    try:
        return client.create_experiment(name, artifact_location=store.artifact_location,
                                        tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND, TAG_DESCRIPTION: description})
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # a concurrent first command created it meanwhile
        if experiment is None:
            raise
        return experiment.experiment_id


def describe_experiment(name: str, description: str, tracking_uri: Store | str | None = None) -> None:
    """Create experiment ``name`` if needed and set its description (a suite's: what it measures)."""
    client, store = open_store(tracking_uri)
    client.set_experiment_tag(_experiment_id(client, name, store), TAG_DESCRIPTION, description)


def get_run_tags(run_id: str, tracking_uri: Store | str | None = None) -> dict[str, str]:
    """The tags of an existing run; TrackingError naming the store when it is not there."""
    store = Store.resolve(tracking_uri)
    if not store.exists():  # not created just to be searched
        raise TrackingError(f"MLflow run {run_id} is not in {store} (there is no store there yet): pass the "
                            "--tracking-uri it was logged to")
    client, _ = open_store(store)
    try:
        return dict(client.get_run(run_id).data.tags)
    except MlflowException:
        raise TrackingError(f"MLflow run {run_id} is not in {store}: pass the --tracking-uri it was logged "
                            "to") from None


def start_or_resume_run(*, tracking_uri: Store | str | None = None, experiment_name: str | None = None,
                        run_id: str | None = None, run_name: str | None = None,
                        tags: dict[str, Any] | None = None, flush_seconds: float = 30.0) -> TrackedRun:
    """A new RUNNING run in ``experiment_name`` (default ``cdrl-bench``), or run ``run_id`` set RUNNING again.

    Either way the run is tagged with this process (``cdrl.host``, ``cdrl.pid``), for :func:`close_orphans`.
    """
    client, store = open_store(tracking_uri)
    tags = {**(tags or {}), TAG_HOST: socket.gethostname(), TAG_PID: os.getpid()}
    if run_id is not None:
        get_run_tags(run_id, store)
        client.update_run(run_id, status="RUNNING")
        run = TrackedRun(client, run_id, flush_seconds)
        run.set_tags(tags)
        return run
    experiment_id = _experiment_id(client, experiment_name or DEFAULT_EXPERIMENT, store)
    created = client.create_run(experiment_id, tags={key: str(value) for key, value in tags.items()},
                                run_name=run_name)
    return TrackedRun(client, created.info.run_id, flush_seconds)


@contextlib.contextmanager
def tracked_run(*, tracking_uri: Store | str | None = None, experiment_name: str | None = None,
                run_id: str | None = None, run_name: str | None = None, tags: dict[str, Any] | None = None,
                flush_seconds: float = 30.0, replaces: Sequence[str] = ()) -> Iterator[TrackedRun]:
    """:func:`start_or_resume_run`, closed FINISHED on success, KILLED when interrupted, FAILED on any other error.

    While it is open, SIGTERM and SIGHUP raise :class:`RunTerminated` (Ctrl-C :class:`RunInterrupted`)
    into the body, so the run ends KILLED with its buffered metrics sent; signals that arrive while
    the run is being opened or closed wait until that is done. ``replaces``: tag keys (values from
    ``tags``) that identify what this run does; RUNNING runs of dead processes with the same values are
    closed KILLED (:func:`close_orphans`).
    """
    guard = _SignalGuard.acquire()
    try:
        _, tracking_uri = open_store(tracking_uri)  # creating a store is safe to interrupt: signals raise at once
        with guard.deferred():
            run = start_or_resume_run(tracking_uri=tracking_uri, experiment_name=experiment_name, run_id=run_id,
                                      run_name=run_name, tags=tags, flush_seconds=flush_seconds)
        try:
            with guard.deferred():
                identity = {key: str((tags or {})[key]) for key in replaces if key in (tags or {})}
                close_orphans(run.client, run.run_id, identity)
            guard.raise_pending()
            yield run
        except BaseException as error:
            killed = isinstance(error, (KeyboardInterrupt, RunTerminated))
            # A store that fails while closing must not hide the error that ended the run.
            with guard.deferred(), contextlib.suppress(Exception):
                run.finish("KILLED" if killed else "FAILED", _kill_reason(error) if killed else None)
            guard.pending = None  # the process is already on its way out
            raise
        with guard.deferred():
            run.finish("FINISHED")
        guard.raise_pending()  # a signal that came while closing: the run is closed, the process stops
    finally:
        guard.release()
