"""Where MLflow runs go: the tracking :class:`Store`, resolved and checked once, and created safely.

The store is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else an embedded SQLite store in
the working directory (``sqlite:///mlflow.db``; MLflow's plain ``./mlruns`` file store is
deprecated). Experiments created in a SQLite store keep their artifacts in ``mlartifacts/``
beside the database file; a tracking server chooses its own artifact store.

A SQLite store that does not exist yet is created whole in a temporary file beside it and moved
into place (``os.replace``) under a lock, so a kill during creation leaves no store, never a
half-made one, and concurrent first commands end up sharing one store (:func:`open_store`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from cdrl.errors import CdrlBenchError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ARTIFACT_FOLDER = "mlartifacts"


class TrackingError(CdrlBenchError):
    """The tracking store or a run in it cannot be used; the message names the fix."""


@dataclass(frozen=True)
class Store:
    """An MLflow tracking store: its URI resolved once (the argument, else ``$MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db``) and checked, so a bad store fails before any work, with the fix.

    Built at the edge (a command, a suite's job) and passed whole; every function that takes a
    store accepts this value, or a URI string or None, which it resolves the same way.
    """

    uri: str
    #: Where the URI came from, for messages: "--tracking-uri X", "MLFLOW_TRACKING_URI=X", "the default store …".
    source: str

    @classmethod
    def resolve(cls, store: "Store | str | None" = None) -> "Store":
        """TrackingError (one line, with the fix) for a scheme MLflow has no store for, or a SQLite store whose
        folder does not exist; every scheme MLflow supports passes. A Store is returned as it is."""
        if isinstance(store, Store):
            return store
        if store:
            resolved = cls(str(store), f"--tracking-uri {store}")
        elif os.environ.get("MLFLOW_TRACKING_URI"):
            uri = os.environ["MLFLOW_TRACKING_URI"]
            resolved = cls(uri, f"MLFLOW_TRACKING_URI={uri}")
        else:
            resolved = cls(DEFAULT_TRACKING_URI, f"the default store {DEFAULT_TRACKING_URI}")
        _check_uri(resolved)
        return resolved

    @property
    def database(self) -> Path | None:
        """The database file of a ``sqlite:///`` store (the one reader of SQLite URIs); None for other stores
        and in-memory SQLite."""
        if not self.uri.startswith("sqlite://"):
            return None
        path = self.uri.removeprefix("sqlite://").split("?", 1)[0]
        if path in ("", "/", "/:memory:"):
            return None
        return Path(path.removeprefix("/"))

    def exists(self) -> bool:
        """False for a SQLite store whose file is not there yet (searching it would create it)."""
        return self.database is None or self.database.is_file()

    @property
    def artifact_location(self) -> str | None:
        """``mlartifacts/`` beside a SQLite database, for experiments created here; None lets other stores and servers
        decide."""
        if self.database is None:
            return None
        return (self.database.resolve().parent / ARTIFACT_FOLDER).as_uri()

    def portable(self) -> "Store":
        """The same store with an absolute database path, for a job started in another folder or on another node."""
        database = self.database
        if database is None or database.is_absolute():
            return self
        return replace(self, uri=f"sqlite:///{database.absolute()}")

    def reachable(self) -> "Store":
        """This store, after a tracking server answered within :data:`REACHABLE_SECONDS`.

        Without this a server that is down costs MLflow's retries (minutes) and then a long traceback.
        Any HTTP answer (even an error status) shows the server is there; MLflow judges the rest.
        """
        if self.uri.startswith(("http://", "https://")):
            import urllib.error
            import urllib.request

            try:
                urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=REACHABLE_SECONDS).close()
            except urllib.error.HTTPError:
                pass  # it answered
            except (urllib.error.URLError, OSError, ValueError) as error:
                reason = getattr(error, "reason", None) or error
                raise TrackingError(f"the tracking server {self.uri} does not answer ({reason}, within "
                                    f"{REACHABLE_SECONDS:g} s): start it, check the address, or pass "
                                    "--tracking-uri sqlite:///mlflow.db") from None
        return self

    def __str__(self) -> str:
        return self.uri


#: Seconds a tracking server has to answer before a command starts work.
REACHABLE_SECONDS = 5.0


def checked_store(tracking_uri: "Store | str | None" = None) -> Store:
    """:meth:`Store.resolve`, and a tracking server that answers (:meth:`Store.reachable`)."""
    return Store.resolve(tracking_uri).reachable()


#: How a SQLite database file begins (an empty file is a store about to be created).
_SQLITE_HEADER = b"SQLite format 3\x00"


def _check_uri(store: Store) -> None:
    from mlflow.utils.uri import get_uri_scheme, is_databricks_uri

    uri, source = store.uri, store.source

    scheme = get_uri_scheme(uri)
    if scheme in ("", "file") and not is_databricks_uri(uri):
        # MLflow's folder store: deprecated by MLflow 3, and not the database store the suites and tables search.
        raise TrackingError(f"{source}: a folder store (a plain path or file://) is not supported: pass "
                            "sqlite:///PATH.db (a local store) or http(s)://HOST:PORT (a tracking server)")
    if scheme == "sqlite":
        if not uri.startswith("sqlite://"):
            raise TrackingError(f"{source}: write a SQLite store as sqlite:///RELATIVE/PATH.db or "
                                "sqlite:////ABSOLUTE/PATH.db")
        path = store.database
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


def open_store(tracking_uri: Store | str | None = None) -> tuple[MlflowClient, Store]:
    """A client of the store and the store; a SQLite store that is not there yet is created whole.

    An existing store is used as it is. TrackingError, naming the file and the fix, when a SQLite
    store cannot be read.
    """
    store = Store.resolve(tracking_uri)
    uri, database = store.uri, store.database
    if database is None:
        return MlflowClient(uri), store
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
    return client, store
