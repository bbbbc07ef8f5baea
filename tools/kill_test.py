"""Kill real cdrl-bench commands at random moments, restart them, and count what a kill broke.

Not a CI test (minutes of CPU): the evidence behind crash-safe tracking (issue #15)::

    OMP_NUM_THREADS=1 python -m tools.kill_test --kills 20

In a temporary folder it keeps several working folders ("worlds"), each with the default
store ``sqlite:///mlflow.db`` and ``runs/``; a new world's first command creates the store. Jobs,
each a real command run as ``cdrl-bench`` runs it:

* ``train``: a tiny toy-checkerboard training (``--out``, or ``--resume`` once it has checkpoints);
* ``suite``: ``cdrl-bench run`` of a one-model suite (a tiny training, then two evaluations);
* ``eval``: ``cdrl-bench eval`` of the stored gate model ``results/gate/toy-cdrl.pt``, few samples.

Each attempt is killed at a random moment (SIGKILL mostly, some SIGTERM and SIGINT), some while a
new world's store is being created, some within the first second; the job is then started again
(and maybe killed again) until it completes. At the end it prints: kills done (and how many hit
store creation), broken stores (a command that failed, or a store that fails its checks), runs
left RUNNING, runs a caught signal left RUNNING, and training iterations lost per kill against the
checkpoint interval. Exit status 1 when anything broke.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_EVERY = 10
ITERATIONS = 40
TINY = ["energy.width=32", "initializer.width=32", "training.batch_size=64", "data.toy_size=2000",
        f"run.checkpoint_every={CHECKPOINT_EVERY}", "run.sample_every=100000", "run.n_samples=100",
        # every iteration logged and sent at once: the last logged step is where the kill landed
        "run.log_every=1", "run.flush_seconds=0"]
SUITE = f"""name = "kill-tiny"
version = 1
title = "kill test: one tiny CDRL training on the checkerboard, scored at K = 3 and 2"
metrics = ["in_support_fraction", "energy_distance"]

[train]
preset = "toy-checkerboard"
global_batch = 64
overrides = {json.dumps([setting for setting in TINY if not setting.startswith("training.batch_size")])}

[eval]
batch_size = 1000
checkpoint = "last"

[profiles.full]
iterations = {ITERATIONS // 2}
n_samples = 200
seeds = [0]

[[models]]
key = "cdrl"
label = "CDRL"
steps = [3, 2]
"""
SUITE_FOLDER = Path("runs/suites/kill-tiny-v1/full/cdrl/seed0")
STORE = "mlflow.db"
SIGNALS = [(signal.SIGKILL, 0.7), (signal.SIGTERM, 0.2), (signal.SIGINT, 0.1)]
#: What a failed command's output says when the store itself is at fault.
STORE_TROUBLE = ("OperationalError", "_alembic_tmp", "DatabaseError", "database disk image", "MLflow store",
                 "no such table", "malformed")


@dataclass
class Job:
    kind: str
    world: Path
    index: int
    expected_seconds: float

    def training_folder(self) -> Path | None:
        if self.kind == "train":
            return self.world / "runs" / f"train-{self.index}"
        if self.kind == "suite":
            return self.world / SUITE_FOLDER
        return None

    def command(self, suite_file: Path) -> list[str]:
        base = [sys.executable, "-c", "import cli; cli.main()"]
        if self.kind == "train":
            folder = self.training_folder()
            started = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").glob("ckpt-*.pt"))
            target = ["--resume", str(folder)] if started else [
                "--preset", "toy-checkerboard", "--out", str(folder),
                *[part for setting in TINY for part in ("--set", setting)]]
            return [*base, "train", *target, "--iterations", str(ITERATIONS)]
        if self.kind == "suite":
            return [*base, "run", "--suite", str(suite_file)]
        from benchmarks.suite import results_path

        return [*base, "eval", str(results_path("results/gate/toy-cdrl.pt")), "--n-samples", "200", "--steps", "3",
                "--experiment", "kill-eval"]


@dataclass
class Tally:
    kills: int = 0
    by_signal: dict[str, int] = field(default_factory=dict)
    during_store_creation: int = 0
    in_first_second: int = 0
    completed: int = 0
    failures: list[str] = field(default_factory=list)
    broken_stores: list[str] = field(default_factory=list)
    #: Runs a SIGTERM or SIGINT left RUNNING (they must close KILLED themselves).
    running_after_caught_signal: int = 0
    #: Iterations done past the newest checkpoint when a training was killed.
    lost: list[int] = field(default_factory=list)


def _store_client(world: Path):
    """A client of the world's store, or None while there is none (never created from here)."""
    from mlflow import MlflowClient

    database = world / STORE
    return MlflowClient(f"sqlite:///{database}") if database.is_file() else None


def _running(world: Path) -> set[str]:
    client = _store_client(world)
    if client is None:
        return set()
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return {run.info.run_id for run in client.search_runs(experiments, "attributes.status = 'RUNNING'",
                                                          max_results=10000)} if experiments else set()


def _newest_checkpoint(folder: Path) -> int:
    paths = sorted((folder / "checkpoints").glob("ckpt-*.pt")) if folder else []
    return int(paths[-1].stem.split("-")[1]) if paths else 0


def _last_logged_step(world: Path, folder: Path, since_ms: int) -> int | None:
    """The last training step the killed attempt logged in ``folder`` (None: it logged none)."""
    from cdrl.tags import TAG_CHECKPOINT_DIR

    client = _store_client(world)
    if client is None:
        return None
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    steps = []
    for run in client.search_runs(experiments, max_results=10000):
        if run.data.tags.get(TAG_CHECKPOINT_DIR) == str((folder / "checkpoints").resolve()):
            steps += [metric.step for metric in client.get_metric_history(run.info.run_id, "ebm_loss")
                      if metric.timestamp >= since_ms]
    return max(steps) if steps else None


def _temporary_stores(world: Path) -> set[Path]:
    return set(world.glob(f".{STORE}.creating-*"))


def _creating(world: Path, stale: set[Path]) -> bool:
    """True while this attempt is creating the store (files a killed attempt left do not count)."""
    return not (world / STORE).exists() and bool(_temporary_stores(world) - stale)


def _training_started(job: Job, since: float) -> bool:
    """The training of this attempt has prepared its folder (config.json is rewritten just before its run opens)."""
    folder = job.training_folder()
    config = folder / "config.json" if folder is not None else None
    return config is not None and config.exists() and config.stat().st_mtime >= since


def _kill_moment(job: Job, rng: random.Random, new_store: bool) -> tuple[str, float | None]:
    """When to kill: a named moment ("store creation", "training") or a time after the start."""
    draw = rng.random()
    if new_store and draw < 0.6:
        return "store creation", None  # a moment while the schema is being made: watch for its temporary file
    if draw < 0.2:
        return "first second", rng.uniform(0.05, 1.0)
    if job.training_folder() is not None and draw < 0.6:
        return "training", None  # a moment after the training has started
    return "random", rng.uniform(1.0, job.expected_seconds)


def _kill_when_due(process, job: Job, moment: str, when: float | None, chosen, rng: random.Random,
                   stale: set, started_wall: float) -> tuple[bool, bool]:
    """Wait for the process, signalling it at ``moment``; (signalled, killed while the store was being made)."""
    creation_delay, training_delay = rng.uniform(0.0, 8.0), rng.uniform(0.0, 12.0)
    started = time.monotonic()
    seen_creating = seen_training = None
    while process.poll() is None:
        if moment == "store creation":
            if seen_creating is None and _creating(job.world, stale):
                seen_creating = time.monotonic()
            due = seen_creating is not None and time.monotonic() - seen_creating >= creation_delay
            due = due or (seen_creating is None and (job.world / STORE).exists())  # made already: kill now
        elif moment == "training":
            if seen_training is None and _training_started(job, started_wall):
                seen_training = time.monotonic()
            due = seen_training is not None and time.monotonic() - seen_training >= training_delay
        else:
            due = time.monotonic() - started >= when
        if due:
            during_creation = _creating(job.world, stale)
            process.send_signal(chosen)
            return True, during_creation
        time.sleep(0.02)
    return False, False


def _attempt(job: Job, suite_file: Path, env: dict, rng: random.Random, tally: Tally, kill: bool,
             log) -> bool:
    """Run the job once, killed at a random moment when ``kill``; True when it completed."""
    new_store = not (job.world / STORE).exists()
    stale = _temporary_stores(job.world)
    before = _running(job.world)
    started_ms = int(time.time() * 1000)
    started_wall = time.time()
    started = time.monotonic()
    stderr_file = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would stall the command
    process = subprocess.Popen(job.command(suite_file), cwd=job.world, env=env, stdout=subprocess.DEVNULL,
                               stderr=stderr_file)
    chosen = rng.choices([number for number, _ in SIGNALS], [weight for _, weight in SIGNALS])[0]
    moment, when = _kill_moment(job, rng, new_store) if kill else ("none", None)
    signalled, killed_during_creation = (_kill_when_due(process, job, moment, when, chosen, rng, stale, started_wall)
                                         if kill else (False, False))
    returncode = process.wait()  # reaped: a zombie would still count as alive
    stderr_file.seek(0)
    stderr = stderr_file.read().decode(errors="replace")
    seconds = time.monotonic() - started
    name = f"{job.kind}@{job.world.name}#{job.index}"
    if returncode == 0:
        tally.completed += 1
        job.expected_seconds = 0.5 * job.expected_seconds + 0.5 * seconds
        log(f"{name}: completed in {seconds:.1f} s")
        return True
    if signalled:
        # Killed: -signal, or 128 + signal (SIGTERM/SIGHUP in a run), 130 or 1 (Ctrl-C through the CLI).
        # Whether the store survived shows in the commands that follow and in the final check.
        tally.kills += 1
        tally.by_signal[chosen.name] = tally.by_signal.get(chosen.name, 0) + 1
        tally.during_store_creation += killed_during_creation
        tally.in_first_second += seconds < 1.0
        note = _kill_note(job, tally, chosen, before, started_ms)
        log(f"{name}: {chosen.name} at {seconds:.1f} s, status {returncode} ({moment}"
            f"{', during store creation' if killed_during_creation else ''}){note}")
        return False
    last = stderr.strip().splitlines()[-1][:300] if stderr.strip() else f"status {returncode}"
    if any(marker in stderr for marker in STORE_TROUBLE):
        tally.broken_stores.append(f"{name}: {last}")
    tally.failures.append(f"{name} (status {returncode}): {last}")
    log(f"{name}: FAILED with status {returncode}: {last}")
    return True  # do not retry a failing command forever


def _kill_note(job: Job, tally: Tally, chosen, before: set, started_ms: int) -> str:
    """What a kill cost: the iterations lost since the newest checkpoint, and runs a caught signal left RUNNING."""
    note = ""
    folder = job.training_folder()
    if folder is not None and folder.exists():
        step = _last_logged_step(job.world, folder, started_ms)
        if step is not None:
            lost = step - _newest_checkpoint(folder)
            tally.lost.append(lost)
            note = f", logged up to {step}, newest checkpoint {_newest_checkpoint(folder)} (lost {lost})"
    if chosen != signal.SIGKILL:
        left = _running(job.world) - before
        tally.running_after_caught_signal += len(left)
        note += f", {len(left)} run(s) left RUNNING" if left else ", nothing left RUNNING"
    return note


def _check_store(world: Path) -> str | None:
    """None when the world's store passes SQLite's integrity check and MLflow can search and write it."""
    database = world / STORE
    if not database.exists():
        return None
    try:
        with sqlite3.connect(database) as connection:
            result = connection.execute("PRAGMA integrity_check").fetchone()[0]
            leftovers = [row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'")]
        if result != "ok" or leftovers:
            return f"{database}: integrity {result}, leftover tables {leftovers}"
        client = _store_client(world)
        experiment = client.get_experiment_by_name("kill-check") or client.get_experiment(
            client.create_experiment("kill-check"))
        run = client.create_run(experiment.experiment_id)
        client.set_terminated(run.info.run_id, "FINISHED")
    except Exception as error:  # noqa: BLE001 - any failure is a broken store
        return f"{database}: {type(error).__name__}: {error}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="Kills to land (default 20).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed of the moments and signals.")
    parser.add_argument("--new-world", type=float, default=0.35,
                        help="Chance that a job starts in a new folder, whose first command creates the store.")
    parser.add_argument("--keep", type=Path, default=None, help="Work in this folder and keep it (default: a "
                                                                "temporary one, deleted).")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="cdrl-kill-"))
    root.mkdir(parents=True, exist_ok=True)
    suite_file = root / "kill-tiny.toml"
    suite_file.write_text(SUITE)
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {line}", flush=True)

    tally, worlds, jobs = Tally(), [], []
    expected = {"train": 30.0, "suite": 35.0, "eval": 20.0}
    while tally.kills < args.kills:
        if not worlds or rng.random() < args.new_world:
            worlds.append(root / f"world{len(worlds)}")
            worlds[-1].mkdir()
            world = worlds[-1]
        else:
            world = worlds[-1] if rng.random() < 0.7 else rng.choice(worlds)
        kind = rng.choices(["train", "suite", "eval"], [0.5, 0.25, 0.25])[0]
        if kind == "suite" and any(job.kind == "suite" and job.world == world for job in jobs):
            kind = "train"  # one suite folder per world
        job = Job(kind, world, len(jobs), expected[kind])
        jobs.append(job)
        done, first = False, True
        while not done:
            kill = tally.kills < args.kills and (first or rng.random() < 0.5)
            done = _attempt(job, suite_file, env, rng, tally, kill, log)
            first = False
    log("kills done; checking every world's store and RUNNING runs")
    for world in worlds:
        problem = _check_store(world)
        if problem:
            tally.broken_stores.append(problem)
    orphans = {world.name: len(_running(world)) for world in worlds}
    summary = {
        "command": f"python -m tools.kill_test --kills {args.kills} --seed {args.seed}"
                   + (f" --new-world {args.new_world:g}" if args.new_world != 0.35 else ""),
        "kills": tally.kills, "by_signal": tally.by_signal,
        "kills_during_store_creation": tally.during_store_creation, "kills_in_first_second": tally.in_first_second,
        "worlds": len(worlds), "stores_created": sum((world / STORE).exists() for world in worlds),
        "jobs": len(jobs), "completed_commands": tally.completed,
        "failed_commands": len(tally.failures), "broken_stores": len(tally.broken_stores),
        "running_orphans_at_end": sum(orphans.values()),
        "runs_left_running_by_a_caught_signal": tally.running_after_caught_signal,
        "training_kills_measured": len(tally.lost),
        "iterations_lost_max": max(tally.lost, default=0),
        "iterations_lost_mean": round(sum(tally.lost) / len(tally.lost), 1) if tally.lost else 0,
        "checkpoint_interval": CHECKPOINT_EVERY,
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    for line in tally.failures + tally.broken_stores:
        print(f"  problem: {line}")
    print(json.dumps(summary, indent=2))
    if args.keep is None:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    bad = (tally.failures or tally.broken_stores or summary["running_orphans_at_end"]
           or tally.running_after_caught_signal or summary["iterations_lost_max"] > CHECKPOINT_EVERY)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
