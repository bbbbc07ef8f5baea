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
* ``cdrl.diverged``: present when a non-finite value was seen (it is never logged raw);
* ``cdrl.host``, ``cdrl.pid``: the process that last opened the run;
* ``cdrl.killed``: why a run ended KILLED (the signal, or the later run that found it orphaned).

:func:`tracked_run` opens (or resumes) a run and closes it FINISHED, FAILED or KILLED;
:class:`TrackedRun` buffers metrics and sends them with ``log_batch``.

Crash safety. A kill at any moment leaves a store that works:

* a SQLite store that does not exist yet is created whole in a temporary file beside it and
  moved into place (``os.replace``) under a lock, so a kill during creation leaves no store,
  never a half-made one, and concurrent first commands end up sharing one store
  (:func:`open_store`);
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
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

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
#: MLflow's tag for nesting a run under another (a suite's evaluation under its training).
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_DIVERGED = "cdrl.diverged"
TAG_HOST = "cdrl.host"
TAG_PID = "cdrl.pid"
TAG_KILLED = "cdrl.killed"
#: training.batch_size (the global batch) and each process's share of it.
TAG_GLOBAL_BATCH = "cdrl.global_batch"
TAG_PER_PROCESS_BATCH = "cdrl.per_process_batch"
#: Metric logged (value 1) at the step where a non-finite value was seen.
DIVERGED_METRIC = "diverged"
#: MLflow's description of an experiment (or a run), shown above its runs.
TAG_DESCRIPTION = "mlflow.note.content"
#: MLflow 3's kind of an experiment: unset, its UI guesses, and opened runs without logged models in its GenAI
#: (traces) view; "custom_model_development" is its classic view of training runs, metrics and artifacts (MLflow
#: 3.17's UI lets its own GenAI / Model training switch, where shown, take precedence: README).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DEFAULT_DESCRIPTION = ("Runs of `cdrl-bench train` (tag cdrl.kind=train) and `cdrl-bench eval` (cdrl.kind=eval); "
                       "an evaluation is nested under the training run of its checkpoint when that run is here.")

# MLflow's per-request limits of log_batch.
_METRICS_PER_BATCH = 1000
_PARAMS_PER_BATCH = 100


class TrackingError(CdrlBenchError):
    """The tracking store or a run in it cannot be used; the message names the fix."""


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``, checked.

    TrackingError (one line, with the fix) for a scheme MLflow has no store for, or a SQLite
    store whose folder does not exist; every scheme MLflow supports passes.
    """
    if tracking_uri:
        uri, source = tracking_uri, f"--tracking-uri {tracking_uri}"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
        source = f"MLFLOW_TRACKING_URI={uri}"
    else:
        uri, source = DEFAULT_TRACKING_URI, f"the default store {DEFAULT_TRACKING_URI}"
    _check_uri(uri, source)
    return uri


#: Seconds a tracking server has to answer before a command starts work.
REACHABLE_SECONDS = 5.0


def checked_store(tracking_uri: str | None = None) -> str:
    """:func:`resolve_tracking_uri`, and a tracking server that answers within :data:`REACHABLE_SECONDS`.

    Without this a server that is down costs MLflow's retries (minutes) and then a long traceback.
    Any HTTP answer (even an error status) shows the server is there; MLflow judges the rest.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REACHABLE_SECONDS).close()
        except urllib.error.HTTPError:
            pass  # it answered
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            raise TrackingError(f"the tracking server {uri} does not answer ({reason}, within "
                                f"{REACHABLE_SECONDS:g} s): start it, check the address, or pass "
                                "--tracking-uri sqlite:///mlflow.db") from None
    return uri


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for other stores and in-memory SQLite."""
    if not uri.startswith("sqlite://"):
        return None
    path = uri.removeprefix("sqlite://").split("?", 1)[0]
    if path in ("", "/", "/:memory:"):
        return None
    return Path(path.removeprefix("/"))


#: How a SQLite database file begins (an empty file is a store about to be created).
_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_uri(uri: str, source: str) -> None:
    from mlflow.utils.uri import get_uri_scheme, is_databricks_uri

    scheme = get_uri_scheme(uri)
    if scheme in ("", "file") and not is_databricks_uri(uri):
        # MLflow's folder store: deprecated by MLflow 3, and not the database store the suites and tables search.
        raise TrackingError(f"{source}: a folder store (a plain path or file://) is not supported: pass "
                            "sqlite:///PATH.db (a local store) or http(s)://HOST:PORT (a tracking server)")
    if scheme == "sqlite":
        if not uri.startswith("sqlite://"):
            raise TrackingError(f"{source}: write a SQLite store as sqlite:///RELATIVE/PATH.db or "
                                "sqlite:////ABSOLUTE/PATH.db")
        path = _sqlite_path(uri)
        if path is None:
            return
        if path.is_dir():
            raise TrackingError(f"{source}: {path} is a folder, not a database file: pass "
                                f"--tracking-uri sqlite:///{path / 'mlflow.db'}")
        folder = path.parent
        if not folder.is_dir():
            raise TrackingError(f"{source}: the folder {folder} of the SQLite store does not exist: create it "
                                f"(mkdir -p {folder}) or pass --tracking-uri sqlite:///PATH in an existing folder")
        if path.exists():
            try:
                with path.open("rb") as database:
                    start = database.read(len(_SQLITE_HEADER))
            except OSError as error:
                raise TrackingError(f"{source}: {path} cannot be read ({error.strerror}): fix its permissions or "
                                    "pass another store") from None
            if start and start != _SQLITE_HEADER:
                raise TrackingError(f"{source}: {path} is not a SQLite database (it is some other file): pass "
                                    "--tracking-uri sqlite:///PATH of a store, or of a file that does not exist yet")
        return
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry
    except ImportError:  # MLflow moved its registry: let MLflow itself judge the URI
        return
    try:
        registry.get_store_builder(uri)
    except MlflowException:
        schemes = ", ".join(sorted(scheme for scheme in registry._registry if scheme))
        raise TrackingError(f"{source}: MLflow has no store for the scheme {get_uri_scheme(uri)!r}: pass "
                            "sqlite:///PATH (a local store) or http(s)://HOST:PORT (a tracking server); "
                            f"MLflow's schemes: {schemes}") from None


def _artifact_location(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite database; None lets other stores and servers decide."""
    database = _sqlite_path(tracking_uri)
    if database is None:
        return None
    return (database.resolve().parent / ARTIFACT_FOLDER).as_uri()


# --------------------------------------------------------------------------- creating a store

_CREATING = ".{name}.creating-"


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """An exclusive lock that the system drops when its holder dies, however it dies."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        from filelock import FileLock

        with FileLock(str(lock_file)):
            yield
        return
    descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _create_sqlite_store(database: Path) -> None:
    """Create the store ``database`` whole, or leave nothing: a kill at any moment cannot half-make it.

    The schema is made in a temporary file beside it, then moved into place. Under a lock, so that
    concurrent first commands create it once; the lock file goes once the store is there (a process
    waiting on it then finds the store and returns).
    """
    folder, prefix = database.parent, _CREATING.format(name=database.name)
    lock_file = folder / f".{database.name}.lock"
    with _exclusive(lock_file):
        if database.is_file() and database.stat().st_size > 0:
            return  # another process made it meanwhile
        for stale in folder.glob(f"{prefix}*"):  # left by a creator that was killed: we hold the lock
            stale.unlink(missing_ok=True)
        temporary = folder / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        uri = f"sqlite:///{temporary.resolve()}"
        try:
            MlflowClient(uri).search_experiments(max_results=1)  # creates the schema and the default experiment
            _dispose_engine(uri)
            with open(temporary, "rb+") as written:
                os.fsync(written.fileno())
            os.replace(temporary, database)
        finally:
            _dispose_engine(uri)
            for leftover in folder.glob(f"{temporary.name}*"):  # the file itself on failure, a -journal
                leftover.unlink(missing_ok=True)
        lock_file.unlink(missing_ok=True)


def _dispose_engine(uri: str) -> None:
    """Close MLflow's pooled connections to the temporary database (best effort: a private cache)."""
    with contextlib.suppress(Exception):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()


def open_store(tracking_uri: str | None = None) -> tuple[MlflowClient, str]:
    """A client of the resolved store and its URI; a SQLite store that is not there yet is created whole.

    An existing store is used as it is. TrackingError, naming the file and the fix, when a SQLite
    store cannot be read.
    """
    uri = resolve_tracking_uri(tracking_uri)
    database = _sqlite_path(uri)
    if database is None:
        return MlflowClient(uri), uri
    if not (database.is_file() and database.stat().st_size > 0):
        _create_sqlite_store(database)
    try:
        client = MlflowClient(uri)  # opens the store (MLflow makes the tables of a store that lacks them)
        client.search_experiments(max_results=1)
    except Exception as error:  # sqlalchemy's OperationalError, MlflowException, ...
        text = str(error).strip()
        reason = text.splitlines()[0][:300] if text else type(error).__name__
        if "_alembic_tmp" in text or "already exists" in text:
            raise TrackingError(f"the MLflow store {database} is half-made ({reason}): a command was killed while "
                                f"an older cdrl-bench created it; if it holds no runs you need, move it away (mv "
                                f"{database} {database}.broken) and run again to create a new one") from None
        raise TrackingError(f"the MLflow store {database} cannot be used: {reason}") from None
    return client, uri


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


def _experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
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
        return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri),
                                        tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND, TAG_DESCRIPTION: description})
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # a concurrent first command created it meanwhile
        if experiment is None:
            raise
        return experiment.experiment_id


def describe_experiment(name: str, description: str, tracking_uri: str | None = None) -> None:
    """Create experiment ``name`` if needed and set its description (a suite's: what it measures)."""
    client, uri = open_store(tracking_uri)
    client.set_experiment_tag(_experiment_id(client, name, uri), TAG_DESCRIPTION, description)


def get_run_tags(run_id: str, tracking_uri: str | None = None) -> dict[str, str]:
    """The tags of an existing run; TrackingError naming the store when it is not there."""
    uri = resolve_tracking_uri(tracking_uri)
    database = _sqlite_path(uri)
    if database is not None and not database.is_file():  # not created just to be searched
        raise TrackingError(f"MLflow run {run_id} is not in {uri} (there is no store there yet): pass the "
                            "--tracking-uri it was logged to")
    client, uri = open_store(uri)
    try:
        return dict(client.get_run(run_id).data.tags)
    except MlflowException:
        raise TrackingError(f"MLflow run {run_id} is not in {uri}: pass the --tracking-uri it was logged to") from None


def start_or_resume_run(*, tracking_uri: str | None = None, experiment_name: str | None = None,
                        run_id: str | None = None, run_name: str | None = None,
                        tags: dict[str, Any] | None = None, flush_seconds: float = 30.0) -> TrackedRun:
    """A new RUNNING run in ``experiment_name`` (default ``cdrl-bench``), or run ``run_id`` set RUNNING again.

    Either way the run is tagged with this process (``cdrl.host``, ``cdrl.pid``), for :func:`close_orphans`.
    """
    client, uri = open_store(tracking_uri)
    tags = {**(tags or {}), TAG_HOST: socket.gethostname(), TAG_PID: os.getpid()}
    if run_id is not None:
        get_run_tags(run_id, uri)
        client.update_run(run_id, status="RUNNING")
        run = TrackedRun(client, run_id, flush_seconds)
        run.set_tags(tags)
        return run
    experiment_id = _experiment_id(client, experiment_name or DEFAULT_EXPERIMENT, uri)
    created = client.create_run(experiment_id, tags={key: str(value) for key, value in tags.items()},
                                run_name=run_name)
    return TrackedRun(client, created.info.run_id, flush_seconds)


@contextlib.contextmanager
def tracked_run(*, tracking_uri: str | None = None, experiment_name: str | None = None, run_id: str | None = None,
                run_name: str | None = None, tags: dict[str, Any] | None = None,
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
        open_store(tracking_uri)  # creating a store is safe to interrupt: signals raise at once
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
