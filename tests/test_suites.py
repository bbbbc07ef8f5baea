"""Suites, the DRL baseline and ablations, paper tables, resumable suite runs and the regression check."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from baselines import ABLATIONS, apply_ablations, drl
from benchmarks import runner
from benchmarks.records import finished_eval_runs
from benchmarks.regression import results_from_runs
from benchmarks.suite import (PlotSpec, SuiteError, available_suites, expand, load_suite, model_config, parse_shard,
                              plan_rows, select)
from benchmarks.figures import save_suite_figure
from benchmarks.tables import build_table, render
from cdrl.config import ConfigError, apply_overrides, per_process_batch, preset
from cdrl.metrics import METRICS
from cdrl.search_filter import FilterValueError, filter_value, tag_clause
from cdrl.langevin import multiplier_for_steps
from cli import app

from tiny_suite import TINY_SUITE

REPO = Path(__file__).resolve().parent.parent


def test_every_suite_parses_and_expands():
    names = available_suites()
    for required in ("cifar10-steps", "cifar10-main", "cifar10-ablations", "imagenet32-cfg", "toy-steps",
                     "digits-steps", "digits-cfg", "ci-smoke", "gate"):
        assert required in names
    for name in names:
        suite = load_suite(name)
        for quick in (False, True):
            plan = expand(suite, quick=quick)
            keys = [job.key for job in (*plan.trainings, *plan.evaluations)]
            assert len(keys) == len(set(keys)), name
            assert all(job.training is None or job.training in plan.trainings for job in plan.evaluations)


def test_cifar10_steps_is_the_papers_step_table():
    plan = expand(load_suite("cifar10-steps"), seeds=2)
    points = {(job.model.key, job.steps_per_level) for job in plan.evaluations}
    assert points == {("drl", 30), ("drl-cdrl-network", 30), ("cdrl-no-initializer", 30), ("cdrl", 15), ("cdrl", 8),
                      ("cdrl", 5), ("cdrl", 3)}
    assert len(plan.trainings) == 8 and len(plan.evaluations) == 14  # one CDRL model per seed serves every K
    for job in plan.evaluations:
        langevin, training = job.training.config.langevin, job.training.config.training
        expected = 1.0 if training.method == "drl" else math.sqrt(15 / job.steps_per_level)
        assert multiplier_for_steps(job.steps_per_level, langevin) == pytest.approx(expected)
        assert training.seed == job.seed and training.batch_size == 256  # the paper's global batch
        # CDRL's published best-checkpoint selection; DRL's code keeps none (its last checkpoint is scored).
        assert job.training.config.run.select_every == (0 if training.method == "drl" and
                                                        job.model.key != "cdrl-no-initializer" else 20_000)
    drl_config = next(job for job in plan.trainings if job.model.key == "drl").config
    assert drl_config.schedule.kind == "ddpm-linear" and drl_config.training.iterations == 1_000_000


def test_drl_is_a_config_transform_and_ablations_are_deltas():
    base = preset("cifar10")
    baseline = drl(base)
    assert baseline.training.method == "drl" and baseline.langevin.n_steps == 30
    assert baseline.energy == base.energy and baseline.data == base.data
    changed = {
        "ddpm-linear-schedule": lambda c: c.schedule.kind == "ddpm-linear",
        "no-initializer": lambda c: c.training.method == "drl" and c.langevin.n_steps == 30,
        "no-initializer-noise": lambda c: not c.training.initializer_noise and not c.sampler.initializer_noise,
        "no-variance-reduction": lambda c: not c.training.variance_reduction,
        "no-loss-weighting": lambda c: not c.training.loss_weighting,
        "no-ema-warmup": lambda c: not c.training.ema_warmup,
        "constant-step-size": lambda c: not c.langevin.step_scales_with_noise,
        "energy-not-divided-by-step-size": lambda c: not c.langevin.energy_divided_by_step_size,
        "final-level-scaled": lambda c: not c.schedule.final_level_unscaled,
        "no-tweedie-step": lambda c: not c.sampler.tweedie_step,
        "langevin-clip": lambda c: c.langevin.clip,
    }
    assert set(changed) == set(ABLATIONS)
    for name, holds in changed.items():
        ablated = apply_ablations(base, [name])
        assert holds(ablated) and not holds(base), name
    ablation_suite = load_suite("cifar10-ablations")
    assert {a for model in ablation_suite.models for a in model.ablations} == set(ABLATIONS)


def _suite_error(folder: Path, text: str) -> str:
    """The message of loading a suite file that holds ``text``, which must fail."""
    path = folder / "bad.toml"
    path.write_text(text)
    with pytest.raises(SuiteError) as caught:
        load_suite(path)
    return str(caught.value)


def test_bad_suite_files_name_the_problem(tmp_path):
    attempt = functools.partial(_suite_error, tmp_path)
    assert "seeds" in attempt(TINY_SUITE.replace("seeds = [0]", "seeds = 0"))
    assert "no-such" in attempt(TINY_SUITE.replace('key = "drl"', 'key = "drl"\nablations = ["no-such"]'))
    assert "trainig" in attempt(TINY_SUITE.replace('[train]', '[trainig]'))
    assert "energy.widht" in attempt(TINY_SUITE.replace("energy.width=16", "energy.widht=16"))
    assert "needs a model with several guidance weights" in attempt(TINY_SUITE.replace(
        "[train]", '[plot]\nmetric = "energy_distance"\nx = "guidance"\n\n[train]'))
    # Every key is read against its field's type and bounds (cdrl.typed), the same reader as saved configs.
    assert "profiles.full.n_samples must be at least 1, got 0" in attempt(
        TINY_SUITE.replace("n_samples = 64", "n_samples = 0"))
    assert "eval.checkpoint must be one of 'best', 'last', got 'newest'" in attempt(
        TINY_SUITE.replace('checkpoint = "last"', 'checkpoint = "newest"'))
    assert "check.k must be greater than 0, got -1.0" in attempt(TINY_SUITE.replace("k = 4", "k = -1"))
    assert "profiles.full.seeds must be an integer, got True" in attempt(
        TINY_SUITE.replace("seeds = [0]", "seeds = [true]"))
    assert "models[0].steps must be at least 1, got 0" in attempt(TINY_SUITE.replace("steps = [2, 1]", "steps = [0]"))
    assert "eval.batch_size must be an integer" in attempt(TINY_SUITE.replace("batch_size = 64", 'batch_size = "64"'))
    with pytest.raises(SuiteError, match="unknown suite"):
        load_suite("no-such-suite")


def test_table_prints_the_paper_column_with_no_runs(tmp_path):
    result = CliRunner().invoke(app, ["table", "--suite", "cifar10-steps", "--format", "markdown",
                                      "--tracking-uri", f"sqlite:///{tmp_path / 'absent.db'}",
                                      "--plot", str(tmp_path / "steps.png")])
    assert result.exit_code == 0, result.output
    rows = {(cells[0], cells[1]): cells[2].strip("*") for line in result.output.splitlines() if line.startswith("| ")
            for cells in [[cell.strip() for cell in line.strip("|").split("|")]]}  # bold: the column's best
    assert rows[("DRL", "6×30")] == "9.58"
    assert [rows[("CDRL", f"6×{k}")] for k in (15, 8, 5, 3)] == ["4.31", "4.58", "5.37", "9.67"]
    assert not (tmp_path / "absent.db").exists()  # a table never creates a tracking store
    assert (tmp_path / "steps.png").stat().st_size > 0 and (tmp_path / "steps.pdf").stat().st_size > 0


def test_paper_tables_keep_their_provenance(tmp_path):
    absent = f"sqlite:///{tmp_path}/absent.db"  # no store yet: the paper's columns alone
    main = build_table(load_suite("cifar10-main"), tracking_uri=absent)
    paper = dict(zip(main.frame["method"], main.frame["paper_fid"]))
    assert paper["CDRL"] == 4.31 and list(main.display["paper FID ↓"])[:1] == ["4.31"]  # as printed
    assert paper["CDRL-large"] == 3.68 and paper["StyleGAN2-ADA"] == 2.92  # context rows follow
    assert set(main.frame["paper_confidence"]) >= {"primary", "ocr-uncertain"}
    assert set(main.display["confidence"]) >= {"primary", "ocr-uncertain"}  # differs by row: a column
    guidance = build_table(load_suite("imagenet32-cfg"), tracking_uri=absent)
    assert list(guidance.display["w"])[-1] == "3" and list(guidance.frame["paper_inception_score"])[0] == 7.92
    assert " \\pm " not in render(guidance, "latex") and "tabular" in render(guidance, "latex")  # no cell has an error


def _write_tiny_suite(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-test.toml"
    path.write_text(TINY_SUITE)
    return path


def test_interrupted_run_finishes_only_the_remaining_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = load_suite(_write_tiny_suite(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    real_score = runner.scoring.score_checkpoint
    scored: list[str] = []

    def interrupted_at_second_score(*args, **kwargs):
        if len(scored) == 1:
            raise KeyboardInterrupt
        scored.append(kwargs["record"].tags["cdrl.run_key"])
        return real_score(*args, **kwargs)

    monkeypatch.setattr(runner.scoring, "score_checkpoint", interrupted_at_second_score)
    with pytest.raises(KeyboardInterrupt):
        runner.run_plan(expand(suite), tracking_uri=uri)
    assert scored == ["cdrl/K2/seed0"]

    monkeypatch.setattr(runner.scoring, "score_checkpoint", real_score)
    again = runner.run_plan(expand(suite), tracking_uri=uri)
    assert again.already_finished == 1
    assert again.evaluated == ["cdrl/K1/seed0", "drl/K3/seed0"]
    # Where the time went: every phase measured, the largest named first; exact toy metrics extract no features.
    assert again.seconds["features"] == 0 and min(again.seconds[phase] for phase in
                                                  ("training", "sampling", "metrics")) > 0
    largest = max(again.seconds, key=again.seconds.get)
    assert again.phases_line().startswith(f"{largest} ") and again.phases_line().count("%") == 4
    checkpoints = sorted((tmp_path / "runs").rglob("ckpt-*.pt"))
    assert [path.name for path in checkpoints] == ["ckpt-00000003.pt"] * 2  # cdrl was reopened, not retrained

    third = runner.run_plan(expand(suite), tracking_uri=uri)
    assert (third.trained, third.evaluated, third.already_finished) == ([], [], 3)

    # MLflow a person can compare in: runs named by their keys, each evaluation nested under its training.
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(suite.experiment).experiment_id])
    by_key = {run.data.tags["cdrl.run_key"]: run for run in runs if run.info.status == "FINISHED"}
    assert all(run.info.run_name == key for key, run in by_key.items())
    assert by_key["drl/K3/seed0"].data.tags["mlflow.parentRunId"] == by_key["drl/seed0"].info.run_id
    assert by_key["drl/K3/seed0"].data.params["langevin.n_steps"] == "3"  # the model's settings travel along
    # The experiment says what it holds, and is one MLflow 3 shows as training runs (not its GenAI traces view).
    experiment = client.get_experiment_by_name(suite.experiment)
    assert experiment.tags["mlflow.note.content"].startswith(f"Suite {suite.name} v{suite.version}: {suite.title}.")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    table = build_table(suite, tracking_uri=uri)
    trade_off = replace(suite, plot=PlotSpec("energy_distance", secondary="in_support_fraction"))
    assert [path.stat().st_size > 0 for path in save_suite_figure(build_table(trade_off, tracking_uri=uri),
                                                                   tmp_path / "trade-off")] == [True, True]
    measured = table.frame.set_index(["model", "steps_per_level"])
    assert list(measured["n_seeds"]) == [1, 1, 1]
    assert all(0.0 <= value <= 1.0 for value in measured["in_support_fraction"])
    assert "64 samples vs 64 toy-checkerboard" in measured.loc[("drl", 3), "protocol"]

    # A given checkpoint is evaluated at each of the points of the models it fits (here CDRL's).
    cdrl_checkpoint = tmp_path / "runs" / "suites" / "tiny-test-v1" / "full" / "cdrl" / "seed0" / "checkpoints"
    given = expand(suite, checkpoint=cdrl_checkpoint / "ckpt-00000003.pt")
    assert [job.key.split("/", 1)[1] for job in given.evaluations] == ["cdrl/K2/seed0", "cdrl/K1/seed0"]
    assert given.source.startswith("checkpoint-") and "DRL" in given.skipped[0]
    assert runner.run_plan(given, tracking_uri=uri).evaluated == [job.key for job in given.evaluations]
    sources = build_table(suite, tracking_uri=uri).display
    assert list(sources["source"]) == ["trained", given.source, "trained", given.source, "trained"]

    document = results_from_runs(suite, "full", uri)
    assert document["format"] == 2 and document["profile"] == "full"
    assert set(document["points"]) == {"cdrl/K2", "cdrl/K1", "drl/K3", f"cdrl/K2@{given.source}",
                                       f"cdrl/K1@{given.source}"}
    assert document["points"]["drl/K3"]["seeds"] == [0]
    assert set(document["points"]["drl/K3"]["metrics"]) == {"in_support_fraction", "mode_coverage", "energy_distance"}


def test_only_and_shards_split_a_plan_into_disjoint_parts():
    plan = expand(load_suite("ci-smoke"), seeds=2)
    cdrl = select(plan, only="cdrl")
    assert {job.model.key for job in (*cdrl.trainings, *cdrl.evaluations)} == {"cdrl"}
    assert len(cdrl.trainings) == 2 and all(job.training in cdrl.trainings for job in cdrl.evaluations)
    one_seed = select(plan, only="cdrl/seed1")
    assert [job.key for job in one_seed.trainings] == ["cdrl/seed1"]
    assert {job.seed for job in one_seed.evaluations} == {1}
    # A sampling-only model scores another model's training: --only takes that training along.
    tweedie = select(expand(load_suite("cifar10-ablations")), only="no-tweedie-step")
    assert [job.key for job in tweedie.trainings] == ["cdrl/seed0"]
    assert tweedie.evaluations and {job.model.key for job in tweedie.evaluations} == {"no-tweedie-step"}
    gate = expand(load_suite("gate"))  # stored models and data floors: evaluations without a training
    assert any(job.training is None for job in gate.evaluations)
    for whole, count in [(whole, count) for whole in (plan, gate) for count in (1, 2, 3, 5)]:
        shards = [select(whole, shard=parse_shard(f"{index}/{count}")) for index in range(count)]
        for part in ("trainings", "evaluations"):
            keys = [job.key for shard in shards for job in getattr(shard, part)]
            assert sorted(keys) == sorted(job.key for job in getattr(whole, part)) and len(set(keys)) == len(keys)
        assert all(job.training is None or job.training in shard.trainings
                   for shard in shards for job in shard.evaluations)
    for bad, message in [("nope", "has no model 'nope'"), ("cdrl/1", "MODEL/seedN")]:
        with pytest.raises(SuiteError, match=message):
            select(plan, only=bad)
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(SuiteError, match="is not i/N"):
            parse_shard(bad)


def test_metric_directions():
    assert not METRICS["fid"].higher_is_better and not METRICS["energy_distance"].higher_is_better
    assert METRICS["in_support_fraction"].higher_is_better and METRICS["mode_coverage"].higher_is_better


#: The tiny suite's CDRL model, and a model that scores its training with half the Langevin noise.
QUIET_SUITE = (TINY_SUITE[:TINY_SUITE.index('[[models]]\nkey = "drl"')]
               + '[[models]]\nkey = "quiet"\nscores = "cdrl"\noverrides = ["sampler.langevin_noise_scale=0.5"]\n'
                 'steps = [1]\n')


def test_a_model_that_scores_another_samples_its_training_its_own_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "tiny-test.toml"
    path.write_text(QUIET_SUITE)
    plan = expand(load_suite(path))
    assert [job.key for job in plan.trainings] == ["cdrl/seed0"]  # one training serves both rows
    jobs = {job.key: job for job in plan.evaluations}
    assert jobs["quiet/K1/seed0"].sampler_overrides == ("sampler.langevin_noise_scale=0.5",)
    assert jobs["cdrl/K1/seed0"].sampler_overrides == ()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner.run_plan(plan, tracking_uri=uri)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cdrl-suite-tiny-test").experiment_id])
    by_key = {run.data.tags["cdrl.run_key"]: run for run in runs}
    loud, quiet = by_key["cdrl/K1/seed0"], by_key["quiet/K1/seed0"]
    assert (loud.data.params["eval.sampler.langevin_noise_scale"],
            quiet.data.params["eval.sampler.langevin_noise_scale"]) == ("1.0", "0.5")
    # The same checkpoint and seed: the samples differ by the Langevin noise alone.
    assert quiet.data.tags["mlflow.parentRunId"] == loud.data.tags["mlflow.parentRunId"]
    assert quiet.data.metrics["energy_distance"] != loud.data.metrics["energy_distance"]

    # Anything a training would do differently is refused: it needs a training of its own.
    message = _suite_error(tmp_path, QUIET_SUITE.replace('"sampler.langevin_noise_scale=0.5"]',
                                                         '"sampler.langevin_noise_scale=0.5", "langevin.n_steps=3"]'))
    assert message == ("bad.toml: model 'quiet' scores 'cdrl' but would train differently "
                       "(langevin.n_steps=3): a model that scores another may change only sampler.* "
                       "settings; drop scores to train it, or the training settings to score that model")


def test_suites_declare_the_global_batch_and_the_checkpoint_they_score(tmp_path):
    attempt = functools.partial(_suite_error, tmp_path)
    assert "declares no global batch" in attempt(TINY_SUITE.replace("global_batch = 32\n", ""))
    assert "not an override of training.batch_size" in attempt(
        TINY_SUITE.replace('overrides = ["energy.width=16",', 'overrides = ["training.batch_size=8", "energy.width=16",'))
    assert "selects no checkpoint" in attempt(TINY_SUITE.replace('checkpoint = "last"', 'checkpoint = "best"'))
    assert "must name a model" in attempt(TINY_SUITE + '\n[[models]]\nkey = "other"\nscores = "nothing"\n')
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes"):
        per_process_batch(256, 3)
    assert per_process_batch(256, 8) == 32


SAFE_RULE = "letters, digits, '.', '_' and '-' only, starting with a letter or digit, no '..'"


def test_suite_names_keys_and_references_stay_inside_their_folders(tmp_path):
    attempt = functools.partial(_suite_error, tmp_path)
    name = TINY_SUITE.replace('name = "tiny-test"', 'name = {}')
    for bad in ('"../../../escaped"', '"it\'s"', '"a/b"', '".hidden"', '"x..y"', '"with space"', '""'):
        value = eval(bad)  # the TOML basic string is also a Python literal
        assert attempt(name.format(bad)) == (
            f"bad.toml: name {value!r} must be a plain name ({SAFE_RULE}): it names run folders and the MLflow "
            'experiment, e.g. name = "cifar10-steps" (see benchmarks/suites/README.md)')
    for bad in ("/etc/passwd", "../README.md", "README.md", "sub/x.csv", "..csv", "x.csv/"):
        assert attempt(TINY_SUITE.replace('version = 1', f'version = 1\nreference = "{bad}"')) == (
            f"bad.toml: reference {bad!r} must be the file name of a CSV in results/paper/ (no folders), "
            'e.g. reference = "cifar10_fid.csv" (see benchmarks/suites/README.md)')
    for bad in ("../x", "it's", "a\\\\b", ".", "-x"):
        value = bad.replace("\\\\", "\\")
        assert attempt(TINY_SUITE.replace('key = "drl"', f'key = "{bad}"')) == (
            f"bad.toml: models[1].key {value!r} must be a plain name ({SAFE_RULE}): it names run folders, "
            'e.g. key = "cdrl-no-ema" (see benchmarks/suites/README.md)')
    assert "\n" not in attempt(name.format('"a\\nb"'))
    good = tmp_path / "good.toml"
    good.write_text(TINY_SUITE.replace('version = 1', 'version = 1\nreference = "cifar10_fid.csv"'))
    assert load_suite(good).reference_path.name == "cifar10_fid.csv"


def test_run_folders_stay_inside_the_runs_dir(tmp_path):
    suite = load_suite(_write_tiny_suite(tmp_path))
    plan = expand(suite)
    job = plan.trainings[0]
    assert runner.run_folder(plan, job, tmp_path / "runs") == tmp_path / "runs/suites/tiny-test-v1/full/cdrl/seed0"
    # A Suite or ModelSpec built in code skips load_suite's name check: the folder is checked again.
    for escaping in (replace(plan, suite=replace(suite, name="../../..")),
                     replace(plan, suite=replace(suite, name="x/../../../..")),
                     replace(plan, profile="../..")):
        with pytest.raises(SuiteError, match="would not be a folder of its own under"):
            runner.run_folder(escaping, job, tmp_path / "runs")
    for key in ("..", "../../x", "/abs", "a/b"):
        with pytest.raises(SuiteError, match="would not be a folder of its own under"):
            runner.run_folder(plan, replace(job, model=replace(job.model, key=key)), tmp_path / "runs")


# Tag values a search must match exactly, and only them: quotes, filter syntax, backslashes.
AWKWARD_VALUES = ["it's", 'say "hi"', "back\\slash", "a''b", "x' AND tags.`cdrl.kind` = 'train", "' OR '1'='1",
                  'a" OR "1"="1', "it's \\ ok", "a\\'b", "%_*", "ünï", "new\nline", "", "plain"]


def test_filter_values_round_trip_through_a_real_mlflow_store(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("quoting")
    ids = {value: client.create_run(experiment, tags={"cdrl.model": value, "cdrl.kind": "eval"}).info.run_id
           for value in AWKWARD_VALUES}
    for value in AWKWARD_VALUES:
        found = client.search_runs([experiment], f"{tag_clause('cdrl.kind', 'eval')} AND "
                                                 f"{tag_clause('cdrl.model', value)} AND attributes.status = 'RUNNING'")
        assert [run.info.run_id for run in found] == [ids[value]], value
    for value, problem in (("it's \"both\"", "holds both ' and \""), ("ends\\", "ends in a backslash"),
                           ("even\\\\", "ends in a backslash")):  # sqlparse would read \' as a quote inside
        with pytest.raises(FilterValueError) as caught:
            filter_value(value, "tag cdrl.model")
        assert str(caught.value) == (f"cannot search MLflow for tag cdrl.model {value!r}: it {problem}, which "
                                     "MLflow's filter syntax cannot quote; rename it")
    with pytest.raises(FilterValueError, match="may not hold '`'"):
        tag_clause("a`b", "x")


def test_finished_runs_of_a_suite_whose_tags_hold_quotes(tracking_uri):
    """The suite search quotes every value (a suite loaded from a file has a plain name; one built in code may not)."""
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("cdrl-suite-quotes")
    for suite_name, profile in (("it's", "full"), ("it's", "quick"), ("its", "full")):
        run = client.create_run(experiment, tags={"cdrl.kind": "eval", "cdrl.suite": suite_name,
                                                  "cdrl.suite_version": "1", "cdrl.profile": profile,
                                                  "cdrl.run_key": f"{suite_name}/{profile}"})
        client.set_terminated(run.info.run_id, "FINISHED")
    runs = finished_eval_runs("cdrl-suite-quotes", "it's", 1, "full", tracking_uri)
    assert list(runs["tags.cdrl.run_key"]) == ["it's/full"]
    with pytest.raises(FilterValueError, match="holds both"):
        finished_eval_runs("cdrl-suite-quotes", "it's \"x\"", 1, "full", tracking_uri)


def test_plan_shows_global_and_per_process_batch_and_selection():
    rows = {row["run"]: row for row in plan_rows(expand(load_suite("cifar10-steps")), world_size=8)}
    assert {row["batch"] for row in rows.values()} == {256}
    assert {row["per process"] for row in rows.values()} == {32}
    assert rows["cdrl/seed0"]["checkpoint"] == "best FID (5k every 20k it)"
    assert rows["drl/seed0"]["iterations"] == 1_000_000
    assert {row["per process"] for row in plan_rows(expand(load_suite("cifar10-steps")), 3)} == {"does not split"}
    gate = {row["run"]: row for row in plan_rows(expand(load_suite("gate")))}
    assert gate["toy-train/seed0"]["checkpoint"] == "last"
    result = CliRunner().invoke(app, ["plan", "--suite", "imagenet32-cfg", "--world-size", "8"])
    assert result.exit_code == 0 and "1,000,000" in result.output, result.output


def test_one_model_scored_under_two_protocols():
    plan = expand(load_suite("imagenet32-cfg"))
    assert len(plan.trainings) == 1
    published = [job for job in plan.evaluations if job.model.key == "cond-published"]
    assert len(published) == 13 and all(job.training is plan.trainings[0] for job in published)
    assert (published[0].model.reference_split, published[0].model.n_reference, published[0].n_samples) == (
        "test", 5000, 5000)
    assert published[0].model.reference_overrides == ("data.imagenet_source=npz64-resized",)


def test_table_notes_print_every_rows_config_delta(tmp_path):
    absent = f"sqlite:///{tmp_path}/absent.db"
    table = build_table(load_suite("cifar10-ablations"), tracking_uri=absent)
    notes = "\n".join(table.notes)
    assert "- variance reduction: training.variance_reduction=False." in notes
    assert "schedule.kind=ddpm-linear" in notes and "training.method=drl" in notes
    assert not any(note.startswith("CDRL (published details):") for note in table.notes)  # the base: no delta
    # One batch and one checkpoint rule in every row: printed once under the table.
    assert "batch (the global training batch, all processes together): 256." in table.notes
    assert any(note.startswith("checkpoint (") and note.endswith(": best FID (5k every 20k it).") for note in table.notes)
    steps = build_table(load_suite("cifar10-steps"), tracking_uri=absent)
    drl_note = next(note for note in steps.notes if note.startswith("DRL:"))
    for setting in ("schedule.kind=ddpm-linear", "langevin.step_constant=0.0001", "sampler.tweedie_step=False",
                    "sampler.langevin_noise_scale=0.99", "training.variance_reduction=False", "training.grad_clip=None",
                    "training.iterations=1000000"):
        assert setting in drl_note, setting


def test_table_notes_say_what_a_row_scores_and_its_own_protocol_so_labels_stay_short(tmp_path):
    absent = f"sqlite:///{tmp_path}/absent.db"
    ablations = build_table(load_suite("cifar10-ablations"), tracking_uri=absent)
    assert "- Tweedie step: scores the trainings of CDRL (published details), sampled with " \
           "sampler.tweedie_step=false." in ablations.notes
    guidance = build_table(load_suite("imagenet32-cfg"), tracking_uri=absent)
    assert "CDRL (conditional), published protocol: scores the trainings of CDRL (conditional); scored with 5,000 " \
           "samples against the first 5,000 images of the test split (reference " \
           "data.imagenet_source=npz64-resized)." in guidance.notes
    assert not any(note.startswith("CDRL (conditional):") for note in guidance.notes)  # the suite's own protocol
    assert max(len(label) for label in guidance.display["method"]) <= 40
    suite = load_suite("imagenet32-cfg")
    smaller = dataclasses.replace(suite.profiles["quick"], n_samples=1000)  # the profile caps the model's 5,000
    quick = build_table(dataclasses.replace(suite, profiles={**suite.profiles, "quick": smaller}), quick=True,
                        tracking_uri=absent)
    assert any("scored with 1,000 samples against the first 5,000 images" in note for note in quick.notes)


def test_suite_scores_the_best_checkpoint_it_selected(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "best.toml"
    path.write_text(TINY_SUITE.replace('checkpoint = "last"', 'checkpoint = "best"').replace(
        "seeds = [0]\n", "seeds = [0]\nselect_every = 1\nselect_samples = 16\n"))
    suite = replace(load_suite(path), models=load_suite(path).models[:1])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runner.run_plan(expand(suite), tracking_uri=uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(suite.experiment)
    evals = client.search_runs([experiment.experiment_id], "tags.`cdrl.kind` = 'eval'")
    train_run = client.search_runs([experiment.experiment_id], "tags.`cdrl.kind` = 'train'")[0]
    history = client.get_metric_history(train_run.info.run_id, "selection_energy_distance")
    best_iteration = min(history, key=lambda metric: metric.value).step
    assert len(history) == 3 and len(evals) == 2
    for run in evals:
        assert run.data.params["eval.checkpoint"].endswith("best.pt")
        assert run.data.params["eval.checkpoint_selection"] == "best energy distance (16 every 1 it)"
        assert run.data.params["eval.checkpoint_iteration"] == str(best_iteration)
    table = build_table(suite, tracking_uri=uri)
    assert any(note.endswith(": best energy distance (16 every 1 it).") for note in table.notes)


def test_cli_version_suites_and_an_example_in_every_help():
    import cdrl

    runner_ = CliRunner()
    assert runner_.invoke(app, ["--version"]).output.strip() == f"cdrl-bench {cdrl.__version__}"
    listing = runner_.invoke(app, ["suites"], terminal_width=200)
    assert listing.exit_code == 0 and all(name in listing.output for name in available_suites())
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        help_text = runner_.invoke(app, [name, "--help"], terminal_width=200).output
        assert "Example: cdrl-bench " in help_text, name


# --------------------------------------------------------------------------- a given checkpoint, plan cost

def _config_only_checkpoint(path: Path, config) -> Path:
    """A checkpoint holding ``config`` and no weights: all that expanding a plan from it reads."""
    from cdrl.checkpoint import make_checkpoint, save_atomic

    save_atomic(make_checkpoint(config, {}), path)
    return path


def _reasons(plan) -> dict[str, str]:
    """Skipped model label -> why (the text inside its parentheses)."""
    return dict(line[:-1].split(" (needs ", 1) for line in plan.skipped)


def test_a_given_checkpoint_is_evaluated_for_every_model_its_config_trains(tmp_path):
    suite = load_suite("cifar10-ablations")
    models = {model.key: model for model in suite.models}
    # What training the ablation writes, with another budget, cadence, seed, batch, data folder and
    # speed options: none of these defines the model.
    ablated = apply_overrides(model_config(suite, models["no-variance-reduction"], "full", seed=0), [
        "training.iterations=1234", "training.seed=7", "training.batch_size=64", "run.select_every=0",
        "run.log_every=3", "data.data_dir=/elsewhere", "data.download=false", "performance.channels_last=true"])
    plan = expand(suite, checkpoint=_config_only_checkpoint(tmp_path / "ablated.pt", ablated))
    assert [job.key for job in plan.evaluations] == [f"{plan.source}/no-variance-reduction/K15/seed0"]
    assert plan.evaluations[0].checkpoint_config == ablated and plan.trainings == ()
    reasons = _reasons(plan)
    assert len(reasons) == 11
    assert reasons["CDRL (published details)"] == "training.variance_reduction=true; the checkpoint has false"
    assert reasons["- initializer (chains from x_t, 6x30)"] == (
        "training.method=drl, langevin.n_steps=30, training.variance_reduction=true; the checkpoint has cdrl, 15, "
        "false")

    # The unablated model's checkpoint: CDRL, and the sampling-only ablation, sampled its own way.
    base = model_config(suite, models["cdrl"], "full", seed=0)
    plan = expand(suite, checkpoint=_config_only_checkpoint(tmp_path / "cdrl.pt", base))
    assert {job.model.key: job.sampler_overrides for job in plan.evaluations} == {
        "cdrl": (), "no-tweedie-step": ("sampler.tweedie_step=false",)}
    reasons = _reasons(plan)
    assert "- Tweedie step" not in reasons
    # A training difference is what keeps a model out; its sampler settings would follow.
    assert reasons["- initializer noise"] == "training.initializer_noise=false; the checkpoint has true"
    steps = expand(load_suite("cifar10-steps"), checkpoint=tmp_path / "cdrl.pt")
    assert _reasons(steps)["DRL"] == ("preset cifar10-drl-network, training.method=drl, energy.architecture=drl and 8 "
                                      "more settings; the checkpoint has cifar10, cdrl, conv")
    assert _reasons(steps)["DRL algorithm, CDRL network"] == (
        "training.method=drl, schedule.kind=ddpm-linear, langevin.n_steps=30 and 6 more settings; the checkpoint has "
        "cdrl, cosine-logsnr, 15")
    assert {job.model.key for job in steps.evaluations} == {"cdrl"}

    # Another preset: named first.
    large = _config_only_checkpoint(tmp_path / "large.pt", preset("cifar10-large"))
    main = expand(load_suite("cifar10-main"), checkpoint=large)
    assert [job.model.key for job in main.evaluations] == ["cdrl-large"]
    assert _reasons(main)["CDRL"] == "preset cifar10, energy.width=128; the checkpoint has cifar10-large, 192"
    with pytest.raises(SuiteError, match="matches no model of suite cifar10-ablations"):
        expand(suite, checkpoint=large)


def test_a_given_checkpoint_serves_every_model_that_trains_its_config(tmp_path):
    suite = load_suite("imagenet32-cfg")  # "cond-published" scores "cond"'s trainings: both match
    config = model_config(suite, suite.models[0], "full", seed=0)
    plan = expand(suite, checkpoint=_config_only_checkpoint(tmp_path / "cond.pt", config))
    assert {job.model.key for job in plan.evaluations} == {"cond", "cond-published"}
    assert len(plan.evaluations) == 26 and plan.skipped == ()
    # The quick profile's models are the same models: its checkpoint serves the full plan too.
    quick = model_config(suite, suite.models[0], "quick", seed=0)
    assert len(expand(suite, checkpoint=_config_only_checkpoint(tmp_path / "quick.pt", quick)).evaluations) == 26


def _plan_json(*arguments: str) -> dict:
    result = CliRunner().invoke(app, ["plan", *arguments, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_plan_prices_every_training_from_the_suites_stated_cost(tmp_path):
    document = _plan_json("--suite", "cifar10-ablations")
    costs = {cost["key"]: cost for cost in document["costs"]}
    # 11 trainings: the sampling-only "- Tweedie step" scores CDRL's.
    assert len(costs) == 11 and {cost["kind"] for cost in costs.values()} == {"stated"}
    assert "no-tweedie-step/seed0" not in costs
    cdrl = costs["cdrl/seed0"]
    assert (cdrl["iterations"], cdrl["seconds_per_iteration"], cdrl["gpus"]) == (500_000, 0.39, 8)
    assert cdrl["gpu_hours"] == pytest.approx(0.39 * 500_000 * 8 / 3600)
    assert cdrl["source"] == "stated: H100 SXM, FLOP-count estimate"
    assert costs["no-initializer/seed0"]["seconds_per_iteration"] == 0.71  # the model's own
    assert document["total_gpu_hours"] == pytest.approx((10 * 0.39 + 0.71) * 500_000 * 8 / 3600)
    assert document["total"].startswith("total: 5,122 GPU-hours for 11 of 11 trainings (11 stated)")
    assert [row["run"] for row in document["rows"]] == list(costs)  # the plan's own columns stay
    assert (document["rows"][0]["iterations"], document["rows"][0]["batch"], document["rows"][0]["evals"]) == (
        500_000, 256, 2)  # counts as numbers, not the table's text

    # Four GPUs: each trains twice the images per iteration, twice the seconds, the same GPU-hours.
    for arguments in (["--gpus", "4"], ["--world-size", "4"]):
        four = {cost["key"]: cost for cost in _plan_json("--suite", "cifar10-ablations", *arguments)["costs"]}
        assert four["cdrl/seed0"]["seconds_per_iteration"] == pytest.approx(0.78) and four["cdrl/seed0"]["gpus"] == 4
        assert four["cdrl/seed0"]["gpu_hours"] == pytest.approx(cdrl["gpu_hours"])
        assert four["cdrl/seed0"]["source"].endswith(", scaled from 8 to 4 GPUs")

    given = _plan_json("--suite", "cifar10-ablations", "--seconds-per-iteration", "2", "--gpus", "3")["costs"][0]
    assert (given["seconds_per_iteration"], given["gpus"], given["kind"]) == (2.0, 3, "given")
    assert given["gpu_hours"] == pytest.approx(2 * 500_000 * 3 / 3600)

    unknown = _plan_json("--suite", str(_write_tiny_suite(tmp_path)))  # no [cost]
    assert {cost["source"] for cost in unknown["costs"]} == {"unknown: pass --seconds-per-iteration S"}
    assert unknown["total"].endswith("2 unknown: pass --seconds-per-iteration S")
    table = CliRunner().invoke(app, ["plan", "--suite", "imagenet32-cfg"], terminal_width=200)
    assert table.exit_code == 0 and "total: 867 GPU-hours for 1 of 1 trainings (1 stated)" in table.output


#: The suites that train on a CPU: priced from seconds per iteration measured on one, in CPU-hours.
CPU_SUITES = ["ci-smoke", "digits-cfg", "digits-compose", "digits-ood", "digits-steps", "gate", "toy-steps"]


@pytest.mark.parametrize("suite", CPU_SUITES)
def test_plan_prices_a_cpu_suite_from_measured_cpu_seconds_in_cpu_hours(suite):
    document = _plan_json("--suite", suite)
    assert document["costs"] and {cost["kind"] for cost in document["costs"]} == {"stated"}
    assert all(cost["source"].startswith("stated: CPU: ") and "measured" in cost["source"]
               for cost in document["costs"])
    assert " CPU-hours for " in document["total"] and "GPU" not in document["total"]
    table = CliRunner().invoke(app, ["plan", "--suite", suite], terminal_width=300)
    assert "x processes / 3600 = CPU-hours" in table.output and "GPU" not in table.output


def test_plan_prices_trainings_by_the_speed_finished_runs_measured(tmp_path, tracking_uri):
    suite_file = _write_tiny_suite(tmp_path)
    trainings = {job.model.key: job.config for job in expand(load_suite(suite_file)).trainings}
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("somewhere")  # any experiment of the store

    def training_run(config, device, world_size, per_process, rates, status="FINISHED", preset_name=None):
        tags = {"cdrl.kind": "train", "cdrl.preset": preset_name or config.name, "cdrl.device": device,
                "cdrl.world_size": str(world_size), "cdrl.per_process_batch": str(per_process)}
        run_id = client.create_run(experiment, tags=tags).info.run_id
        params = [Param(key, str(value)) for key, value in config.flat().items()]
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start:start + 100])
        client.log_batch(run_id, metrics=[Metric("iterations_per_second", rate, 0, step)
                                          for step, rate in enumerate(rates)])
        client.set_terminated(run_id, status)

    cdrl = trainings["cdrl"]
    # Three runs on one GPU kind, 16 images per process: 0.375 s/iteration (the mean of 1/2 and 1/4 s),
    # 0.125 and 1.0; their median is 0.375.
    for rates in ([2.0, 4.0], [8.0], [1.0]):
        training_run(cdrl, "NVIDIA H100 80GB HBM3", 2, 16, rates)
    training_run(cdrl, "NVIDIA H100 80GB HBM3", 2, 16, [1000.0], status="RUNNING")  # not finished
    for _ in range(4):  # more runs, but on a CPU
        training_run(cdrl, "cpu", 1, 32, [100.0])
    training_run(cdrl, "NVIDIA H100 80GB HBM3", 2, 16, [1000.0], preset_name="toy-8gaussians")  # another preset
    fewer_steps = apply_overrides(trainings["drl"], ["langevin.n_steps=1"])  # not what the DRL model trains
    training_run(fewer_steps, "NVIDIA H100 80GB HBM3", 2, 16, [1000.0])

    document = _plan_json("--suite", str(suite_file), "--tracking-uri", tracking_uri)
    measured, drl = document["costs"]
    assert measured["source"] == "measured: 3 runs on NVIDIA H100 80GB HBM3"
    assert (measured["seconds_per_iteration"], measured["gpus"]) == (pytest.approx(0.375), 2)
    assert measured["gpu_hours"] == pytest.approx(0.375 * 3 * 2 / 3600)
    assert drl["kind"] == "unknown"
    assert document["total"].startswith("total: 0.00063 GPU-hours for 1 of 2 trainings (1 measured, 1 unknown)")
    assert document["total_gpu_hours"] == pytest.approx(measured["gpu_hours"]) and document["unknown"] == 1
    # Four GPUs: 8 images each instead of 16.
    four = _plan_json("--suite", str(suite_file), "--tracking-uri", tracking_uri, "--gpus", "4")["costs"][0]
    assert four["seconds_per_iteration"] == pytest.approx(0.1875) and four["gpus"] == 4
    assert four["source"] == "measured: 3 runs on NVIDIA H100 80GB HBM3, scaled from 16 to 8 images per GPU"
    # Without --tracking-uri no store is read; an absent store is not created.
    assert _plan_json("--suite", str(suite_file))["costs"][0]["kind"] == "unknown"
    absent = tmp_path / "absent.db"
    assert _plan_json("--suite", str(suite_file), "--tracking-uri", f"sqlite:///{absent}")["costs"][0]["kind"] == \
        "unknown"
    assert not absent.exists()


def test_cost_keys_are_typed_and_bounded(tmp_path):
    attempt = functools.partial(_suite_error, tmp_path)
    assert "cost.seconds_per_iteration must be greater than 0, got 0.0" in attempt(
        TINY_SUITE + "\n[cost]\nseconds_per_iteration = 0\n")
    assert "cost.gpus must be at least 1, got 0" in attempt(TINY_SUITE + "\n[cost]\ngpus = 0\n")
    assert "cost.gpu is not a known key" in attempt(TINY_SUITE + "\n[cost]\ngpu = 8\n")
    assert "models[1].seconds_per_iteration must be greater than 0, got -1.0" in attempt(
        TINY_SUITE.replace('steps = [3]', 'steps = [3]\nseconds_per_iteration = -1'))


def test_a_stored_checkpoint_replaced_by_another_file_is_evaluated_again(tracking_uri):
    """An evaluation is done for its key and its checkpoint's hash: the same key of another file is pending."""
    plan = expand(load_suite("gate"))
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(plan.suite.experiment)
    stored = next(job for job in plan.evaluations if job.source.startswith("checkpoint-"))
    for job in plan.evaluations:
        source = "checkpoint-000000000000" if job is stored else job.source  # the file it replaced
        run = client.create_run(experiment, tags={"cdrl.kind": "eval", "cdrl.suite": plan.suite.name,
                                                  "cdrl.suite_version": str(plan.suite.version),
                                                  "cdrl.profile": plan.profile, "cdrl.run_key": job.key,
                                                  "cdrl.source": source})
        client.set_terminated(run.info.run_id, "FINISHED")
    assert [job.key for job in runner.pending_evaluations(plan, tracking_uri)] == [stored.key]
