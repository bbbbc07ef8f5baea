"""`run --suite`, `eval` and `sample` under torchrun: 2 Gloo processes share the work, rank 0 logs once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from cdrl.scoring import SamplingRequest, draw_samples, score_checkpoint
from tiny_suite import TINY_SUITE

REPO = Path(__file__).resolve().parents[1]


def _cli(*arguments: str, processes: int = 1, cwd: Path) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                 "-m", "cli"] if processes > 1 else [sys.executable, "-m", "cli"])
    result = subprocess.run([*launcher, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _runs(uri: str):
    client = MlflowClient(uri)
    return client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])


@pytest.fixture(scope="module")
def two_process_suite(tmp_path_factory):
    """The tiny suite run by 2 Gloo processes: (folder, tracking URI, stdout)."""
    folder = tmp_path_factory.mktemp("torchrun")
    (folder / "tiny-test.toml").write_text(TINY_SUITE)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    result = _cli("run", "--suite", "tiny-test.toml", "--tracking-uri", uri, "--device", "cpu", processes=2,
                  cwd=folder)
    return folder, uri, result.stdout


def test_suite_under_torchrun_logs_one_run_per_key_from_rank_0(two_process_suite):
    folder, uri, stdout = two_process_suite
    assert stdout.count("suite tiny-test: 2 trained, 3 scored") == 1  # rank 0 reports, once
    assert "already finished; time: " in stdout
    runs = _runs(uri)
    by_key = {}
    for run in runs:
        assert run.info.status == "FINISHED"
        by_key.setdefault(run.data.tags["cdrl.run_key"], []).append(run)
    assert sorted(by_key) == ["cdrl/K1/seed0", "cdrl/K2/seed0", "cdrl/seed0", "drl/K3/seed0", "drl/seed0"]
    assert all(len(found) == 1 for found in by_key.values())
    assert by_key["cdrl/seed0"][0].data.tags["cdrl.world_size"] == "2"
    evaluation = by_key["cdrl/K2/seed0"][0]
    assert evaluation.data.tags["mlflow.parentRunId"] == by_key["cdrl/seed0"][0].info.run_id
    # The run spans sampling and scoring, and holds a figure of the samples.
    assert evaluation.data.metrics["sampling_seconds"] > 0 and evaluation.data.metrics["samples_per_second"] > 0
    artifacts = MlflowClient(uri).list_artifacts(evaluation.info.run_id)
    assert [artifact.path for artifact in artifacts] == ["samples.png"]


def test_eval_and_sample_under_torchrun_equal_one_process(two_process_suite, tmp_path, one_thread):
    folder, _, _ = two_process_suite
    checkpoint = next((folder / "runs").rglob("ckpt-00000003.pt"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shared = _cli("eval", str(checkpoint), "--n-samples", "50", "--steps", "2", "--batch-size", "16", "--device",
                  "cpu", "--tracking-uri", uri, processes=2, cwd=tmp_path)
    assert shared.stdout.count("MLflow run") == 1
    (run,) = _runs(uri)
    alone = score_checkpoint(SamplingRequest(checkpoint, 50, 2, batch_size=16), device="cpu", record=None)
    # Sample i comes from the noise of (seed, i) whichever rank draws it: the scores agree up to float
    # rounding (a network's arithmetic depends a little on the batch a sample is drawn in).
    for name, value in alone.metrics.items():
        assert run.data.metrics[name] == pytest.approx(value, rel=1e-6), name

    _cli("sample", str(checkpoint), "--n-samples", "21", "--steps", "2", "--batch-size", "4", "--device", "cpu",
         "--out", str(tmp_path / "two.npz"), processes=2, cwd=tmp_path)
    expected, _, _ = draw_samples(SamplingRequest(checkpoint, 21, 2, batch_size=4), device="cpu")
    with np.load(tmp_path / "two.npz") as written:
        np.testing.assert_allclose(written["points"], expected.numpy(), rtol=0, atol=1e-5)
        assert json.loads(str(written["metadata"]))["steps_per_level"] == 2


def _wait_for_rank_0(rank: int, port: int, rank_0_busy_seconds: float, timeout_minutes: str, out: Path) -> None:
    import time

    from cdrl.distributed import process_group, shared
    from cdrl.errors import CdrlBenchError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), CDRL_BENCH_COLLECTIVE_TIMEOUT_MINUTES=timeout_minutes)
    try:
        with process_group("cpu") as (ranks, _):
            if rank == 0:
                time.sleep(rank_0_busy_seconds)  # scoring, while rank 1 waits in its next collective
            outcome = f"got {shared('rank 0 done', ranks)}"
    except (RuntimeError, CdrlBenchError) as error:
        outcome = f"failed: {type(error).__name__}: {error}"
    (out / f"rank{rank}.txt").write_text(outcome)


@pytest.mark.parametrize("timeout_minutes, rank_1", [
    ("0.03", r"failed: CdrlBenchError: rank 1 waited 0\.03 minutes for the other ranks and gave up: if rank 0 was "
             r"still scoring, set CDRL_BENCH_COLLECTIVE_TIMEOUT_MINUTES higher; otherwise look in the log of the "
             r"rank that did not arrive$"),
    ("0.5", "got rank 0 done")])
def test_ranks_wait_for_rank_0_as_long_as_the_collective_timeout_says(tmp_path, free_port, timeout_minutes, rank_1):
    import re

    import torch.multiprocessing as mp

    mp.spawn(_wait_for_rank_0, args=(free_port, 5.0, timeout_minutes, tmp_path), nprocs=2)
    assert re.match(rank_1, (tmp_path / "rank1.txt").read_text()), (tmp_path / "rank1.txt").read_text()


def test_the_collective_timeout_outlasts_a_first_reference_on_cpu(monkeypatch):
    import datetime

    from cdrl.distributed import COLLECTIVE_TIMEOUT_ENV_VAR, collective_timeout
    from cdrl.errors import CdrlBenchError

    monkeypatch.delenv(COLLECTIVE_TIMEOUT_ENV_VAR, raising=False)
    # 50k reference images and 50k samples through the Inception at about 5 images/s: 5.6 hours.
    assert collective_timeout() >= datetime.timedelta(hours=6)
    monkeypatch.setenv(COLLECTIVE_TIMEOUT_ENV_VAR, "90")
    assert collective_timeout() == datetime.timedelta(minutes=90)
    for bad in ("0", "-5", "nan", "inf", "6h", "1e400"):
        monkeypatch.setenv(COLLECTIVE_TIMEOUT_ENV_VAR, bad)
        with pytest.raises(CdrlBenchError, match=f"^{COLLECTIVE_TIMEOUT_ENV_VAR}=.* is not a number of minutes: "
                                                 f"set it to a positive number"):
            collective_timeout()
