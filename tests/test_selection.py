"""Best-checkpoint selection (run.select_every): scores, best.pt, tags, rotation, resume, rollback, bad input.

Tests of the bookkeeping script the scores (``cdrl.selection.selection_score`` patched) so that the best is
neither the first nor the last one; the others score real EMA samples of a 2-D toy (exact energy
distance) or of the tiny image preset (FID with the offline Inception), a few dozen samples each.
"""

from __future__ import annotations

import json
import math
import os
import re
import typing
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mlflow import MlflowClient

import cdrl.selection as selection
from cdrl.checkpoint import CheckpointError, load_checkpoint
from cdrl.config import SELECTION_METRICS, ConfigError, RunConfig, preset, selection_metric
from cdrl.distributed import Ranks
from cdrl.metrics import METRICS
from cdrl.run_folder import BEST_CHECKPOINT, RunFolder, locate_checkpoint
from cdrl.train_loop import train
from cdrl.training import CooperativeTrainer

#: A toy run of a few iterations: every iteration logged and checked, a sample plot only at the last.
TOY = ["run.log_every=1", "run.n_samples=4", "run.sample_every=100", "training.batch_size=32"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread (tests/conftest.py)."""


def history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(tracking_uri).get_metric_history(run_id, key))


def scripted(monkeypatch, scores: dict[int, float]) -> list[int]:
    """Selection scores by iteration instead of sampled ones; returns the iterations scored, in order."""
    scored = []

    def score(trainer, metric, ranks):
        scored.append(trainer.iteration)
        return scores[trainer.iteration]

    monkeypatch.setattr(selection, "selection_score", score)
    return scored


def toy_train(tmp_path, tracking_uri, *settings: str, **options):
    return train(preset("toy-checkerboard"), overrides=[*TOY, *settings], out=tmp_path / "run",
                 tracking_uri=tracking_uri, show_progress=False, **options)


def test_best_checkpoint_holds_the_lowest_score_and_outlives_rotation(tmp_path, tracking_uri, monkeypatch):
    scripted(monkeypatch, {2: 0.5, 4: 0.2, 6: 0.4, 8: 0.3})
    result = toy_train(tmp_path, tracking_uri, "training.iterations=8", "run.select_every=2",
                       "run.checkpoint_every=2", "run.keep_checkpoints=1")
    logged = history(tracking_uri, result.run_id, "selection_energy_distance")
    assert logged == [(2, 0.5), (4, 0.2), (6, 0.4), (8, 0.3)]
    best_iteration = min(logged, key=lambda entry: entry[1])[0]
    folder = tmp_path / "run" / "checkpoints"
    assert result.best_checkpoint == RunFolder(tmp_path / "run").best() == (folder / BEST_CHECKPOINT).resolve()
    _, payload = load_checkpoint(result.best_checkpoint)
    assert payload["trainer"]["iteration"] == best_iteration == 4
    record = {"metric": "energy_distance", "value": 0.2, "iteration": 4, "samples": 5000}
    assert payload["selection"] == record and "ebm_optimizer" in payload["trainer"] and len(payload["rng"]) == 1
    # Rotation kept one rolling checkpoint, which carries the record too; best.pt is no rolling checkpoint.
    assert [path.name for path in RunFolder.of(folder).checkpoint_paths()] == ["ckpt-00000008.pt"]
    assert sorted(path.name for path in folder.iterdir()) == ["best.pt", "ckpt-00000008.pt"]
    assert load_checkpoint(result.checkpoint)[1]["selection"] == record
    tags = MlflowClient(tracking_uri).get_run(result.run_id).data.tags
    assert (tags["cdrl.best_checkpoint"], tags["cdrl.best_iteration"], tags["cdrl.best_energy_distance"]) == (
        str(result.best_checkpoint), "4", "0.2")
    assert tags["cdrl.selection"] == "lowest energy_distance of 5000 EMA samples, every 2 iterations and at the last"
    assert result.selection == "best: energy_distance 0.2 at iteration 4 of 8 (5000 samples every 2 iterations)"


def test_selection_scores_fixed_noise_through_generate_and_leaves_training_alone(tmp_path, tracking_uri,
                                                                                   monkeypatch):
    draws, generate = [], selection.generate

    def recorded(model, spec, **options):
        draws.append((model.iteration, spec, options["chain"]))
        return generate(model, spec, **options)

    monkeypatch.setattr(selection, "generate", recorded)  # selection's draws only, not the sample grids
    settings = ["training.iterations=5", "run.checkpoint_every=5", "run.select_samples=40"]
    result = toy_train(tmp_path, tracking_uri, *settings, "run.select_every=2")
    # At every multiple of select_every and at the last iteration.
    logged = history(tracking_uri, result.run_id, "selection_energy_distance")
    assert [step for step, _ in logged] == [2, 4, 5] and all(math.isfinite(value) for _, value in logged)
    seconds = history(tracking_uri, result.run_id, "selection_seconds")
    assert [step for step, _ in seconds] == [2, 4, 5] and all(value > 0 for _, value in seconds)
    assert [iteration for iteration, _, _ in draws] == [2, 4, 5]
    specs = {spec for _, spec, _ in draws}
    assert len(specs) == 1  # the same noise: scores differ by the weights only
    (spec,) = specs
    assert (spec.n_samples, spec.weights, spec.steps_per_level) == (40, "ema", result.trainer.config.langevin.n_steps)
    assert spec.seed not in (0, result.trainer.config.training.seed)  # a stream of its own
    assert all(chain is result.trainer.chain_ebm for _, _, chain in draws)  # the run's speed options

    # best.pt holds the weights that got its score: scoring them again gives the logged value exactly.
    config, payload = load_checkpoint(result.best_checkpoint)
    assert payload["trainer"]["iteration"] == min(logged, key=lambda entry: entry[1])[0]
    trainer = CooperativeTrainer(config, torch.device("cpu"))
    trainer.load_state_dict(payload["trainer"])
    rescored = selection.selection_score(trainer, "energy_distance", Ranks(0, 1))
    assert rescored == dict(logged)[payload["trainer"]["iteration"]]

    # Selection draws from its own noise streams: training goes exactly as without it.
    plain = train(preset("toy-checkerboard"), overrides=[*TOY, *settings], out=tmp_path / "plain",
                  tracking_uri=tracking_uri, show_progress=False)
    assert plain.best_checkpoint is None and plain.selection == "last (no selection)"
    assert not (tmp_path / "plain" / "checkpoints" / BEST_CHECKPOINT).exists()
    torch.testing.assert_close(result.trainer.ebm.state_dict(), plain.trainer.ebm.state_dict(), rtol=0, atol=0)


def test_resume_keeps_the_best_score_and_restarts_it_for_another_protocol(tmp_path, tracking_uri, monkeypatch):
    scored = scripted(monkeypatch, {2: 0.3, 4: 0.5, 6: 0.4, 8: 0.35, 10: 0.9})
    first = toy_train(tmp_path, tracking_uri, "training.iterations=4", "run.select_every=2", "run.checkpoint_every=2")
    assert load_checkpoint(first.best_checkpoint)[1]["trainer"]["iteration"] == 2

    # Later scores, worse than the saved best but the first ones after the resume, do not replace it.
    resumed = train(resume=tmp_path / "run", overrides=["training.iterations=8"], tracking_uri=tracking_uri,
                    show_progress=False)
    assert scored == [2, 4, 6, 8] and resumed.run_id == first.run_id
    assert load_checkpoint(resumed.best_checkpoint)[1]["trainer"]["iteration"] == 2
    assert resumed.selection.startswith("best: energy_distance 0.3 at iteration 2 of 8")
    assert MlflowClient(tracking_uri).get_run(resumed.run_id).data.tags["cdrl.best_iteration"] == "2"

    # Scores of another sample count are not comparable with the record: selection starts over.
    again = train(resume=tmp_path / "run", overrides=["training.iterations=10", "run.select_samples=100"],
                  tracking_uri=tracking_uri, show_progress=False)
    _, payload = load_checkpoint(again.best_checkpoint)
    assert payload["trainer"]["iteration"] == 10 and payload["selection"]["samples"] == 100


def test_divergence_rolls_back_to_the_newest_rolling_checkpoint_not_to_best(tmp_path, tracking_uri, monkeypatch, poison):
    scored = scripted(monkeypatch, {2: 0.1, 4: 0.5, 6: 0.6})
    poison(5)
    result = toy_train(tmp_path, tracking_uri, "training.iterations=6", "run.select_every=2",
                       "run.checkpoint_every=4", "run.keep_checkpoints=1")
    run = MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.data.tags["cdrl.rollbacks"].startswith("1: to ckpt-00000004.pt")
    # Back to iteration 4, not to best.pt's 2: no iteration ran, logged or was scored twice.
    assert [step for step, _ in history(tracking_uri, result.run_id, "ebm_loss")] == [1, 2, 3, 4, 5, 6]
    assert scored == [2, 4, 6]
    assert load_checkpoint(result.best_checkpoint)[1]["trainer"]["iteration"] == 2


def _ddp_rank(rank: int, port: int, out: Path, tracking_uri: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    result = train(preset("toy-checkerboard"), overrides=[*TOY, "training.iterations=3", "run.checkpoint_every=3",
                                                          "run.select_every=2", "run.select_samples=20"],
                   out=out, tracking_uri=tracking_uri, device="cpu", show_progress=False)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "best_checkpoint": result.best_checkpoint and str(result.best_checkpoint), "selection": result.selection,
        "run_id": result.run_id}))


def test_under_ddp_rank_0_selects_and_every_rank_holds_its_record(tmp_path, tracking_uri, free_port):
    mp.spawn(_ddp_rank, args=(free_port, tmp_path, tracking_uri), nprocs=2)
    first, second = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert first["best_checkpoint"] == str((tmp_path / "checkpoints" / BEST_CHECKPOINT).resolve())
    assert second["best_checkpoint"] is None and second["selection"] == first["selection"]
    assert first["selection"].startswith("best: energy_distance")
    assert [step for step, _ in history(tracking_uri, first["run_id"], "selection_energy_distance")] == [2, 3]


def test_image_presets_select_by_fid_against_the_first_training_images(tmp_path, tracking_uri, monkeypatch):
    monkeypatch.setenv("CDRL_BENCH_CACHE", str(tmp_path / "cache"))
    result = train(preset("tiny"), overrides=["run.log_every=1", "run.sample_every=100", "run.checkpoint_every=2",
                                              "training.iterations=2", "run.select_every=2",
                                              "run.select_samples=12"],
                   out=tmp_path / "run", tracking_uri=tracking_uri, show_progress=False)
    ((step, fid),) = history(tracking_uri, result.run_id, "selection_fid")
    assert step == 2 and math.isfinite(fid) and fid > 0
    tags = MlflowClient(tracking_uri).get_run(result.run_id).data.tags
    assert tags["cdrl.best_fid"] == str(fid) and tags["cdrl.best_iteration"] == "2"
    assert load_checkpoint(result.best_checkpoint)[1]["selection"]["metric"] == "fid"
    # The reference statistics are of the first 12 training images.
    (statistics,) = (tmp_path / "cache").rglob("*.npz")
    assert statistics.name.startswith("digits-8px_train_") and statistics.name.endswith("_n12.npz")


@pytest.mark.parametrize(("preset_name", "setting", "message"), [
    ("toy-checkerboard", "run.select_every=-1", "run.select_every must be at least 0, got -1: e.g. --set "
                                                 "run.select_every=0"),
    ("toy-checkerboard", "run.select_samples=1", "run.select_samples must be at least 2"),
    ("toy-checkerboard", "run.select_metric=fid", "run.select_metric=fid cannot score toy-checkerboard samples: "
                                                  "set run.select_metric to auto or energy_distance"),
    ("tiny", "run.select_metric=energy_distance", "cannot score digits samples: set run.select_metric to auto or "
                                                  "fid or kid_mean"),
    ("tiny", "run.select_metric=in_support_fraction", "run.select_metric must be one of"),
])
def test_bad_selection_settings_are_one_line_config_errors(tmp_path, tracking_uri, preset_name, setting, message):
    # A one-iteration run around the bad setting: a missing check fails the test in seconds.
    cheap = ["training.iterations=1", "run.select_every=1", "run.select_samples=16"]
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        train(preset(preset_name), overrides=[*cheap, setting], out=tmp_path / "run", tracking_uri=tracking_uri,
              show_progress=False)
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_auto_selects_by_fid_or_energy_distance_and_every_choice_is_lower_is_better():
    assert selection_metric(preset("tiny")) == "fid"
    assert selection_metric(preset("toy-checkerboard")) == "energy_distance"
    choices = set(typing.get_args(typing.get_type_hints(RunConfig)["select_metric"])) - {"auto"}
    assert choices == {name for names in SELECTION_METRICS.values() for name in names}
    assert not any(METRICS[name].higher_is_better for name in choices)


def test_a_run_names_its_newest_or_best_checkpoint_and_says_which(tmp_path, tracking_uri, monkeypatch):
    scripted(monkeypatch, {2: 0.2, 4: 0.5})
    result = toy_train(tmp_path, tracking_uri, "training.iterations=4", "run.select_every=2",
                       "run.checkpoint_every=2")
    newest, best = locate_checkpoint(result.run_dir), locate_checkpoint(result.run_dir, pick="best")
    assert (newest.path.name, newest.selection) == ("ckpt-00000004.pt", f"newest of run folder {result.run_dir}")
    assert (best.path.name, best.selection) == (BEST_CHECKPOINT, f"best of run folder {result.run_dir}")
    by_id = locate_checkpoint(result.run_id, tracking_uri, pick="best")
    assert by_id.path == best.path and by_id.selection == f"best of MLflow run {result.run_id}"
    assert locate_checkpoint(best.path).selection == "given file"
    with pytest.raises(CheckpointError, match=r"--pick best chooses within a run folder or MLflow run, and .*best.pt is "
                                              r"a checkpoint file: pass its run folder, or drop --pick"):
        locate_checkpoint(best.path, pick="best")
    plain = toy_train(tmp_path / "plain", tracking_uri, "training.iterations=2")
    with pytest.raises(CheckpointError, match="has no best.pt"):
        locate_checkpoint(plain.run_dir, pick="best")
