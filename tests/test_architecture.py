"""One source of truth per idea in the orchestration: one tag vocabulary, one reader of SQLite URIs, one
name per evaluation point, requests passed whole, executors and their options from one registry."""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli
import cli_commands.suites
from benchmarks.executors import EXECUTORS, JobSettings, build_executor, executor_options
from benchmarks.suite import EvalPoint, expand, load_suite
from cdrl import tags
from cdrl.errors import CdrlBenchError
from cdrl.store import Store

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(path for folder in ("cdrl", "baselines", "benchmarks", "tools", "cli_commands")
                 if (REPO / folder).is_dir() for path in (REPO / folder).rglob("*.py")) + [REPO / "cli.py"]


def _strings(path: Path) -> list[tuple[int, str]]:
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_only_the_tag_vocabulary_spells_a_tag():
    vocabulary = {value for name, value in vars(tags).items() if name.startswith("TAG_")}
    # A "cdrl.x" string that is no module of the package is a tag name too, even one not in the vocabulary yet.
    modules = {f"cdrl.{path.stem}" for path in (REPO / "cdrl").glob("*.py")} | {
        f"cdrl.{path.name}" for path in (REPO / "cdrl").iterdir() if (path / "__init__.py").is_file()}
    spelled = [f"{path.relative_to(REPO)}:{line} {text!r}" for path in SOURCES if path.name != "tags.py"
               for line, text in _strings(path)
               if text in vocabulary or (re.fullmatch(r"cdrl\.[a-z_]+", text) and text not in modules)]
    assert spelled == []


def test_only_the_store_reads_a_sqlite_uri():
    parsing = re.compile(r"\.(startswith|removeprefix|split|partition)\(\s*[\"']sqlite")
    readers = [str(path.relative_to(REPO)) for path in SOURCES if parsing.search(path.read_text())]
    assert readers == ["cdrl/store.py"]


@pytest.mark.parametrize("uri, database", [("sqlite:///runs/mlflow.db", Path("runs/mlflow.db")),
                                           ("sqlite:////tmp/x/mlflow.db", Path("/tmp/x/mlflow.db")),
                                           ("sqlite:///runs/mlflow.db?timeout=20", Path("runs/mlflow.db")),
                                           ("sqlite:///:memory:", None), ("http://localhost:5000", None)])
def test_the_store_reads_its_database_file(uri, database):
    store = Store(uri, "test")
    assert store.database == database
    assert store.portable().database == (None if database is None else database.absolute())


def test_a_store_is_resolved_once_and_passed_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    store = Store.resolve()
    assert store.source.startswith("MLFLOW_TRACKING_URI=") and not store.exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere/never.db")  # resolved already: not read again
    assert Store.resolve(store) is store
    assert Store.resolve(f"sqlite:///{tmp_path / 'given.db'}").source.startswith("--tracking-uri")


def test_an_evaluation_point_has_one_name_in_plans_records_and_the_baseline():
    assert EvalPoint("cond", 15, 0.3).key() == "cond/K15/w0.3"
    assert EvalPoint("cdrl", 5, 0.0, "checkpoint-0123456789ab").key() == "cdrl/K5@checkpoint-0123456789ab"
    assert EvalPoint("digits-floor", 0, 0.0, "data").key() == "digits-floor/floor"
    assert EvalPoint("cond", 15, 0.0).run_key(3, guidance_axis=True) == "cond/K15/w0/seed3"
    assert EvalPoint.fixed_inputs("digits-floor/floor") and EvalPoint.fixed_inputs("cdrl/K5@checkpoint-0123")
    assert not EvalPoint.fixed_inputs("cdrl/K5")
    # The gate's plan names its points as the shipped baseline (written by the check from MLflow records) does.
    gate = load_suite("gate")
    planned = {job.point.key() for job in expand(gate).evaluations}
    stored = set(json.loads((REPO / "results" / "baselines" / "gate.json").read_text())["points"])
    assert planned == stored
    assert all(job.key == job.point.run_key(job.seed, guidance_axis=len(job.model.guidance) > 1)
               for job in expand(gate).evaluations)


#: The functions a sampling or scoring request passes through, from the edge to the metrics.
REQUEST_PATH = ("cdrl/scoring.py", "cdrl/generation.py", "cdrl/metrics.py", "benchmarks/runner.py")


@pytest.mark.parametrize("relative", REQUEST_PATH)
def test_requests_cross_the_scoring_path_whole(relative):
    tree = ast.parse((REPO / relative).read_text())

    def parameters(node: ast.FunctionDef) -> int:  # what a caller passes: self and cls do not count
        return len([argument for argument in [*node.args.args, *node.args.kwonlyargs]
                    if argument.arg not in ("self", "cls")])

    crowded = {node.name: parameters(node) for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef) and parameters(node) > 10}
    assert crowded == {}


def test_run_offers_every_executors_options_from_the_registry():
    parameters = inspect.signature(cli_commands.suites.run_suite).parameters
    for name, (_, option) in executor_options().items():
        assert name in parameters and parameters[name].default is option
    shown = CliRunner().invoke(cli.app, ["run", "--help"], terminal_width=200).output
    for kind in EXECUTORS.values():
        assert kind.name in shown
        for _, option in kind.options.values():
            assert option.param_decls[0] in shown


def test_an_option_of_another_executor_is_refused_naming_its_executors():
    given = {name: option.default for name, (_, option) in executor_options().items()}
    executor, settings = build_executor("local", given, JobSettings("ci-smoke"))
    assert type(executor).__name__ == "LocalExecutor" and settings == JobSettings("ci-smoke")
    with pytest.raises(CdrlBenchError, match=r"^--processes-per-training is for --executor submitit or ray: here"):
        build_executor("local", {**given, "processes_per_training": 2}, JobSettings("ci-smoke"))
    with pytest.raises(CdrlBenchError, match=r"^--phase is for --executor local: Ray schedules"):
        build_executor("ray", {**given, "phase": "train"}, JobSettings("ci-smoke"))


def test_every_command_function_is_registered_once():
    """A command written in cli_commands but left out of cli.py's list would silently not exist."""
    import cli_commands.models

    defined = {function for module in (cli_commands.models, cli_commands.suites)
               for name, function in vars(module).items()
               if inspect.isfunction(function) and function.__module__ == module.__name__ and not name.startswith("_")}
    registered = [command.callback for command in cli.app.registered_commands]
    assert sorted(f"{f.__module__}.{f.__name__}" for f in registered) == sorted(
        f"{f.__module__}.{f.__name__}" for f in defined)
