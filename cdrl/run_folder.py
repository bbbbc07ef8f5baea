"""A training run's folder: its layout, checkpoint names and rotation, finding a checkpoint, resume checks.

One folder per run::

    RUN/config.json                      the resolved ExperimentConfig
    RUN/checkpoints/ckpt-00005000.pt     newest ``run.keep_checkpoints``, written atomically (regular files only:
                                         anything else here is reported and left alone)
    RUN/checkpoints/best.pt              with ``run.select_every``: the best-scoring one (FID; toys: energy distance)
    RUN/checkpoints/corrupt/             checkpoints set aside by a resume: truncated or failing their sha256
    RUN/checkpoints/diverged/            checkpoints set aside by a rollback: non-finite or exploded weights
    RUN/samples/samples-00005000.png     image grid, or scatter plot for 2-D toy presets

Only rank 0 writes here. The MLflow run records the checkpoints folder (tag
``cdrl.checkpoint_dir``), so an MLflow run id names its folder too.

Corrupt checkpoints: every checkpoint is verified as it is loaded (``cdrl.checkpoint``). A run
folder or run id names its newest *intact* checkpoint: when the newest ckpt-*.pt is truncated or
fails its hash, :func:`locate_checkpoint` takes the next older one and says so in its
``selection`` (and in a warning on the ``cdrl.run_folder`` logger). Resuming from it is allowed;
the resumed run moves the corrupt newer files into ``checkpoints/corrupt/`` (kept for inspection,
out of rotation, rollback and later resumes), where a newer run would otherwise overwrite them or
rotate the intact one away. A file named directly is used as it is: corrupt, it is an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Iterator, Literal

import filelock

from cdrl.checkpoint import CheckpointError, load_checkpoint, save_atomic
from cdrl.config import ConfigError, ExperimentConfig, apply_overrides
from cdrl.files import PARTIAL_SUFFIX
from cdrl.tags import TAG_CHECKPOINT_DIR
from cdrl.tracking import get_run_tags

CHECKPOINT_FOLDER = "checkpoints"
SAMPLE_FOLDER = "samples"
DEFAULT_RUNS_FOLDER = Path("runs")
#: The best-scoring checkpoint (run.select_every); not a ckpt-*.pt, so rotation and rollback never touch it.
BEST_CHECKPOINT = "best.pt"
_CHECKPOINT_NAME = re.compile(r"ckpt-(\d+)\.pt")
_RUN_ID = re.compile(r"[0-9a-f]{32}")
#: Subfolders of checkpoints/ for rolling checkpoints taken out of use, by why.
SET_ASIDE_FOLDERS = {"corrupt": "corrupt", "diverged": "diverged"}
_log = logging.getLogger(__name__)


class FolderBusy(ConfigError):
    """Another process holds the lease of a run folder: it is training there."""


@contextlib.contextmanager
def claimed(lock_file: Path) -> Iterator[bool]:
    """Hold ``lock_file`` for the block if no other process does; yields whether this one got it.

    An OS file lock (filelock): released when the block ends, or when its holder dies, however it
    dies, so a killed worker never leaves work claimed.
    """
    lock = filelock.FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _checkpoint_number(path: Path) -> int | None:
    """The iteration in a rolling checkpoint's name (ckpt-ITERATION.pt), or None for any other name."""
    match = _CHECKPOINT_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _rolling_checkpoints(folder: Path) -> list[Path]:
    """The regular files named ckpt-ITERATION.pt in ``folder``, oldest first: a folder or device so named is none."""
    found = [(number, path) for path in (folder.iterdir() if folder.is_dir() else [])
             if (number := _checkpoint_number(path)) is not None and path.is_file()]
    return [path for _, path in sorted(found)]


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @classmethod
    def of(cls, path: str | os.PathLike) -> RunFolder:
        """The run that ``path`` (its folder, its checkpoints/ folder or a checkpoint in it) belongs to."""
        path = Path(path)
        if path.is_file() or path.suffix == ".pt":
            path = path.parent
        return cls(path.parent if path.name == CHECKPOINT_FOLDER else path)

    @staticmethod
    def default_name(preset_name: str) -> Path:
        """runs/PRESET-YYYYmmdd-HHMMSS, for a run started without --out."""
        return DEFAULT_RUNS_FOLDER / f"{preset_name}-{datetime.now():%Y%m%d-%H%M%S}"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_FOLDER

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    def checkpoint_paths(self) -> list[Path]:
        """The rolling checkpoints, oldest first (by iteration)."""
        return _rolling_checkpoints(self.checkpoints)

    def best(self) -> Path | None:
        """The best-scoring checkpoint (kept when run.select_every > 0), or None when there is none."""
        path = self.checkpoints / BEST_CHECKPOINT
        return path if path.is_file() else None

    def sample_grid(self, iteration: int) -> Path:
        return self.root / SAMPLE_FOLDER / f"samples-{iteration:08d}.png"

    @property
    def lease_file(self) -> Path:
        return self.root / ".lease"

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Train here alone: a lock on RUN/.lease (:func:`claimed`); FolderBusy while another process trains here."""
        self.root.mkdir(parents=True, exist_ok=True)
        with claimed(self.lease_file) as mine:
            if not mine:
                raise FolderBusy(f"{self.root} is being trained by another process (it holds {self.lease_file}): "
                                 "wait for it to finish, or train into another folder")
            yield

    def check_fresh(self) -> None:
        """A new run may not start in the folder of another (nor beside a best.pt, which --pick best would take)."""
        if self.checkpoint_paths():
            raise ConfigError(f"{self.root} already holds checkpoints: continue it with --resume {self.root} "
                              "or choose another --out")
        if self.best() is not None:
            raise ConfigError(f"{self.root} holds the best.pt of an earlier run (stopped before its first checkpoint, "
                              f"so it cannot be resumed): remove {self.best()} or choose another --out")

    def prepare(self, config: ExperimentConfig, corrupt: tuple[Path, ...] = (), start: int = 0) -> None:
        """Create the layout, drop what a crash left half-written, set aside ``corrupt`` checkpoints, record the config.

        Checked first, so that a run that could not keep its work stops before it trains: the
        checkpoints folder takes a file, and no folder or other non-file holds the name of a
        checkpoint this run may write (iterations ``start`` + 1 to ``config.training.iterations``;
        a preemption writes at any of them). Anything else in checkpoints/ is reported and left alone.
        """
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.checkpoints).close()
        except OSError as error:
            raise ConfigError(f"{self.checkpoints} cannot hold a checkpoint ({error.strerror or error}): "
                              "make it writable, or train into another folder") from None
        for entry in sorted(self.checkpoints.iterdir()):
            number = _checkpoint_number(entry)
            if entry.is_file() and (number is not None or entry.name == BEST_CHECKPOINT):
                continue
            if entry.name.endswith(PARTIAL_SUFFIX) or (entry.name in SET_ASIDE_FOLDERS.values() and entry.is_dir()):
                continue
            if entry.name == BEST_CHECKPOINT or (number is not None and start < number <= config.training.iterations):
                raise ConfigError(f"{entry} is not a file, and this run writes a checkpoint by that name: "
                                  "move it out of the checkpoints folder, or train into another folder")
            _log.warning("%s is not a checkpoint of this run: left alone (rotation, resume and rollback ignore it)",
                         entry)
        for partial in self.checkpoints.glob(f".*{PARTIAL_SUFFIX}"):
            partial.unlink()  # a save_atomic that a crash interrupted: never a valid checkpoint
        self.set_aside(corrupt, "corrupt")
        self.config_file.write_text(json.dumps(config.to_dict(), indent=2))

    def set_aside(self, paths: tuple[Path, ...] | list[Path], why: str) -> list[Path]:
        """Move rolling checkpoints into checkpoints/corrupt/ or checkpoints/diverged/ (``why``), out of use."""
        moved = []
        for path in paths:
            path = self.checkpoints / Path(path).name
            if path.is_file():
                target = self.checkpoints / SET_ASIDE_FOLDERS[why] / path.name
                target.parent.mkdir(exist_ok=True)
                os.replace(path, target)
                moved.append(target)
        return moved

    def save_checkpoint(self, payload: dict, iteration: int, keep: int) -> Path:
        """Write ckpt-ITERATION.pt atomically, then keep it and the newest ``keep`` - 1 older ones.

        Only checkpoints older than the one just written are removed: a file with a later number is
        no checkpoint of this run (a resume or rollback has set aside the run's own), so it can
        never push the new one, the newest intact checkpoint, out of rotation.
        """
        path = save_atomic(payload, self.checkpoints / f"ckpt-{iteration:08d}.pt")
        older = [old for old in self.checkpoint_paths() if _checkpoint_number(old) < iteration]
        removed = older[:max(len(older) - (keep - 1), 0)]
        assert path not in removed and path.is_file(), f"rotation would remove {path}, just written"
        for old in removed:
            old.unlink()
        return path

    def save_best(self, payload: dict) -> Path:
        return save_atomic(payload, self.checkpoints / BEST_CHECKPOINT)


@dataclass(frozen=True)
class LocatedCheckpoint:
    path: Path
    #: How it was picked, for protocols: "given file", "newest of run folder ...", "best of MLflow run ...",
    #: "newest intact of run folder ... (ckpt-00000008.pt is corrupt: ...)".
    selection: str
    #: Newer rolling checkpoints passed over because they are corrupt (a run folder or run id's newest only).
    corrupt: tuple[Path, ...] = ()


def _newest_intact(folder: RunFolder, source: str) -> tuple[LocatedCheckpoint, tuple[ExperimentConfig, dict]]:
    """The newest rolling checkpoint that loads and passes its integrity check, loaded; corrupt newer ones are named."""
    corrupt: list[tuple[Path, str]] = []
    for path in reversed(folder.checkpoint_paths()):
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as error:  # truncated, garbled, failing its sha256, foreign
            corrupt.append((path, getattr(error, "reason", str(error))))
            continue
        if not corrupt:
            return LocatedCheckpoint(path, f"newest of {source}"), loaded
        skipped = "; ".join(f"{bad.name} is corrupt: {reason}" for bad, reason in corrupt)
        located = LocatedCheckpoint(path, f"newest intact of {source} ({skipped})", tuple(bad for bad, _ in corrupt))
        _log.warning("%s: taking %s, the newest intact checkpoint (%s)", source, path.name, skipped)
        return located, loaded
    if corrupt:
        raise CheckpointError(f"{folder.checkpoints} holds no intact checkpoint: "
                              + "; ".join(f"{bad.name} is corrupt: {reason}" for bad, reason in corrupt[:3])
                              + ("; ..." if len(corrupt) > 3 else "") + "; start the run afresh")
    raise CheckpointError(f"{folder.checkpoints} holds no checkpoint (ckpt-*.pt) yet: start the run afresh instead")


def locate_checkpoint(name: str | os.PathLike, tracking_uri: str | None = None,
                      pick: Literal["newest", "best"] = "newest") -> LocatedCheckpoint:
    """The checkpoint that a checkpoint file, a run folder or an MLflow run id names, and how it was picked.

    A run folder or run id gives its newest intact checkpoint (verified here: newer corrupt ones are
    passed over, and named in ``selection``), or with ``pick="best"`` its best.pt. A file is taken
    as given (``pick="best"`` is refused there); loading it verifies it.
    """
    return _locate(name, tracking_uri, pick)[0]


def _locate(name: str | os.PathLike, tracking_uri: str | None,
            pick: Literal["newest", "best"]) -> tuple[LocatedCheckpoint, tuple[ExperimentConfig, dict] | None]:
    """:func:`locate_checkpoint`, with the loaded (config, payload) where finding it loaded it."""
    path = Path(name)
    if path.is_file():
        if pick == "best":
            raise CheckpointError(f"--pick best chooses within a run folder or MLflow run, and {path} is a checkpoint "
                                  "file: pass its run folder, or drop --pick")
        return LocatedCheckpoint(path, "given file"), None
    if path.is_dir():
        folder, source = RunFolder.of(path), f"run folder {path}"
    elif _RUN_ID.fullmatch(str(name)):
        tags = get_run_tags(str(name), tracking_uri)
        if TAG_CHECKPOINT_DIR not in tags:
            raise CheckpointError(f"MLflow run {name} has no {TAG_CHECKPOINT_DIR} tag: it is not a training run")
        folder, source = RunFolder.of(tags[TAG_CHECKPOINT_DIR]), f"MLflow run {name}"
    else:
        raise CheckpointError(f"{name}: no such checkpoint file, run folder or MLflow run id")
    if pick == "best":
        best = folder.best()
        if best is None:
            raise CheckpointError(f"{source} has no {BEST_CHECKPOINT}: it was trained without run.select_every; "
                                  "take its newest checkpoint instead")
        return LocatedCheckpoint(best, f"best of {source}"), None
    return _newest_intact(folder, source)


@dataclass(frozen=True)
class ResumePoint:
    folder: RunFolder
    checkpoint: Path
    payload: dict
    #: The saved config with the changes a resume may make.
    config: ExperimentConfig
    #: How the checkpoint was picked (LocatedCheckpoint.selection).
    selection: str = "given file"
    #: Corrupt rolling checkpoints newer than ``checkpoint``: the resumed run moves them to checkpoints/corrupt/.
    corrupt: tuple[Path, ...] = ()


def resume_point(name: str | os.PathLike, *, tracking_uri: str | None, world_size: int | None,
                 config: ExperimentConfig | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ResumePoint:
    """Everything that continuing the run ``name`` (checkpoint, run folder or MLflow run id) needs, checked.

    ``world_size``: the processes that will continue it (they must be as many as wrote it), or None
    to read where the run stands without continuing it.

    The run keeps its config except ``run.*``, ``training.iterations``, ``data.data_dir`` and
    ``performance.threads`` (``config``, when given, replaces the saved one before ``overrides``; it
    must agree elsewhere).
    It resumes the newest intact checkpoint; corrupt newer ones are listed in ``corrupt``.
    """
    located, loaded = _locate(name, tracking_uri, "newest")
    path = located.path
    saved, payload = loaded if loaded is not None else load_checkpoint(path)
    if "ebm_optimizer" not in payload["trainer"] or "rng" not in payload:
        raise CheckpointError(f"{path} holds weights only (imported or exported), no optimiser or RNG state: "
                              "it cannot be resumed; start a new run")
    if world_size is not None and payload["world_size"] != world_size:
        raise CheckpointError(f"{path} was written by {payload['world_size']} processes: resume with "
                              f"torchrun --nproc_per_node {payload['world_size']} (this is {world_size})")
    siblings = [sibling.resolve() for sibling in _rolling_checkpoints(path.parent)]
    newer = siblings[siblings.index(path.resolve()) + 1:] if path.resolve() in siblings else siblings
    corrupt = list(located.corrupt)
    known_corrupt = {bad.resolve() for bad in corrupt}  # already loaded and found corrupt by _locate
    for sibling in reversed(newer):  # newer intact checkpoints forbid this resume; newer corrupt ones are set aside
        if sibling in known_corrupt:
            continue
        try:
            load_checkpoint(sibling)
        except CheckpointError as error:
            _log.warning("%s is corrupt (%s): resuming %s, the newest intact checkpoint", sibling.name,
                         getattr(error, "reason", error), path.name)
            corrupt.append(sibling)
            continue
        raise CheckpointError(f"{path} is not the newest checkpoint of its run ({sibling.name} is): "
                              "resume the run folder, or copy the checkpoint to a folder of its own")
    return ResumePoint(RunFolder.of(path), path, payload,
                       _resumed_config(saved, apply_overrides(config or saved, list(overrides))),
                       located.selection, tuple(corrupt))


def _resumed_config(saved: ExperimentConfig, requested: ExperimentConfig) -> ExperimentConfig:
    """``requested`` when it differs from the checkpoint's config only where a resume may change it."""
    # Cadences, the iteration budget, where the data lie and CPU threads; everything else would change the model.
    comparable = replace(requested, run=saved.run,
                         training=replace(requested.training, iterations=saved.training.iterations),
                         data=replace(requested.data, data_dir=saved.data.data_dir, download=saved.data.download),
                         performance=replace(requested.performance, threads=saved.performance.threads))
    if comparable != saved:
        before = saved.flat()
        changed = [key for key, value in comparable.flat().items() if before.get(key) != value]
        raise ConfigError(f"a resumed run keeps its config; {', '.join(changed)} differ from the checkpoint's: "
                          "change only run.*, training.iterations, data.data_dir or performance.threads, or start "
                          "a new run")
    return requested
