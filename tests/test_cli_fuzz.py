"""Bad values for every option of every command, and bad files, environment variables and output targets:
exit 2, one line naming what is wrong, no traceback, nothing written.

The bad values come from each option's declared type and range (typer's ``min``/``max``,
``Literal`` choices) and from what its name says it is (a path to read, a path to write, a
name to look up, a ``--set`` override), so a new option is fuzzed without a change here.
Every case runs the real command line in this process, in an empty working directory.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import typing
from pathlib import Path

import pytest
import typer.main
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import cli
from benchmarks.regression import read_results
from benchmarks.suite import SuiteError, load_suite
from tiny_suite import TINY_SUITE

REPO = Path(__file__).resolve().parents[1]
STORED = str(REPO / "results" / "gate" / "toy-cdrl.pt")
BASELINE = str(REPO / "results" / "baselines" / "gate.json")

#: A valid invocation of each command that takes options; the fuzzed option is appended (it wins).
BASE: dict[str, list[str]] = {
    "import-checkpoint": [STORED, "--preset", "toy-checkerboard", "--out", "imported.pt"],
    "train": ["--preset", "toy-checkerboard"],
    "sample": [STORED, "--out", "samples.npz"],
    "eval": [STORED],
    "stats": ["--dataset", "digits"],
    "run": ["--suite", "ci-smoke"],
    "plan": ["--suite", "ci-smoke"],
    "table": ["--suite", "ci-smoke"],
    "check": ["--suite", "gate", "--baseline", BASELINE],
    "perf": [],
    # Four 8x8 images of random pixels: a file score reads, refused options never get to scoring it.
    "score": [str(REPO / "tests" / "fixtures" / "digit-samples.npz"), "--dataset", "digits"],
}
#: Options that take any text (a free name), or that only a cluster executor reads (it checks them there).
FREE_TEXT = {"experiment", "tags", "partition", "slurm_options", "ray_address"}
#: Paths the command reads (must exist) and paths it writes (their folder must be creatable).
READ_PATHS = {"path", "class_map_from", "class_map_to", "baseline", "results", "from_checkpoint", "samples",
              "published"}
WRITE_PATHS = {"out", "plot", "json_out", "runs_dir", "jobs_dir"}
#: Names looked up in a registry, and what else names a run or a model.
NAMES = {"preset", "suite", "dataset", "backend", "checkpoint", "resume"}
#: Bad --set overrides: unknown keys, values of the wrong type, out of range, not finite, broken relations.
BAD_OVERRIDES = ["training.batch_size=0", "training.batch_size=-4", "training.ebm_lr=-1", "training.ebm_lr=nan",
                 "langevin.n_steps=0", "schedule.n_levels=0", "training.seed=-1", "training.adam_betas=0.9,1.5", "training.adam_betas=0.9",
                 "training.ema_decay=2", "training.grad_clip=-1", "training.iterations=0", "nokey",
                 "training.nope=1", "schedule.logsnr_min=20", "run.keep_checkpoints=0", "data.toy_scale=inf"]
BAD_SAMPLER_OVERRIDES = ["sampler.steps_per_level=0", "sampler.langevin_noise_scale=-1", "training.ebm_lr=1",
                         "sampler.nope=1"]
#: Bad reference settings of `score`: another section, an unknown data key, a value of the wrong type, no "=".
BAD_REFERENCE_OVERRIDES = ["sampler.tweedie_step=false", "data.nope=1", "data.toy_scale=inf", "nokey"]


def _bad_values(name: str, parameter, workdir: Path) -> list[str]:
    annotation = parameter.type_descriptor.annotation
    origin = typing.get_origin(annotation)
    if name == "overrides":
        return BAD_OVERRIDES
    if name == "sampler_overrides":
        return BAD_SAMPLER_OVERRIDES
    if name == "reference_overrides":
        return BAD_REFERENCE_OVERRIDES
    if name in FREE_TEXT or annotation is bool:
        return []
    if origin is typing.Literal:
        return ["bogus", ""]
    if annotation in (int, float):
        values = ["abc", "", "1.5e" if annotation is float else "1.5"]
        if annotation is float:
            values += ["nan", "inf", "-inf"]
        if parameter.min is not None:
            values.append(str(parameter.min - 1))
        if parameter.max is not None and math.isfinite(parameter.max):
            values.append(str(parameter.max * 10 + 1))
        return values
    a_file = workdir / "a-file"
    if name in READ_PATHS:
        return [str(workdir / "missing" / "x"), str(workdir / "empty-dir")]
    if name == "data_dir":  # a missing folder is where a download goes: only a file there is wrong
        return [str(a_file)]
    if name in WRITE_PATHS:
        return [str(a_file / "below-a-file")]
    if name in NAMES:
        return ["", "no-such-thing", "../../etc/passwd"]
    if name == "device":  # cuda:99 exists on no machine this runs on
        return ["banana", "cuda:99", ""]
    if name == "tracking_uri":
        return ["foo://bar", f"sqlite:///{workdir}/missing/mlflow.db", f"sqlite:///{workdir}/empty-dir"]
    if name == "only":
        return ["nope", "cdrl/1", ""]
    if name == "shard":
        return ["2/2", "a/b", "1", ""]
    if name == "sampling_steps":
        return ["abc", "0", "-3"]
    raise AssertionError(f"option {name} ({annotation}) has no bad values here: classify it in tests/test_cli_fuzz.py")


def _cases() -> list[tuple[str, str, str, str]]:
    group = typer.main.get_command(cli.app)
    cases = []
    for command_name, command in sorted(group.commands.items()):
        for parameter in command.params:
            if parameter.name == "help":
                continue
            flag = parameter.opts[0]
            for value in _bad_values(parameter.name, parameter, Path("WORKDIR")):
                cases.append((command_name, parameter.name, flag, value))
    return cases


CASES = _cases()


@pytest.mark.parametrize(("command", "name", "flag", "value"), CASES,
                         ids=[f"{c}-{n}-{v!r}" for c, n, _, v in CASES])
def test_a_bad_value_is_one_line_and_exit_2(command, name, flag, value, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "a-file").write_text("not a folder")
    (workdir / "empty-dir").mkdir()
    value = value.replace("WORKDIR", str(workdir))
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = BASE.get(command, [])
    # An option is appended (the last occurrence wins); the positional argument replaces the base's.
    argv = [*base, flag, value] if flag.startswith("-") else [value, *base[1:]]
    monkeypatch.setattr(sys, "argv", ["cdrl-bench", command, *argv])
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        cli.main()
    seconds = time.monotonic() - started
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exited.value.code == 2, f"exit {exited.value.code}; stderr: {captured.err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err[-2000:]
    assert "Traceback" not in captured.err
    # About the bad value, not another problem of the invocation.
    said = lines[0]
    named = flag in said or repr(value) in said or (value and value.split("=")[0] in said)
    assert named, f"the error does not name {flag} {value!r}: {said}"
    assert sorted(path.name for path in workdir.iterdir()) == ["a-file", "empty-dir"], "the failed command wrote"
    assert not any((workdir / "empty-dir").iterdir())
    assert seconds < 30, f"{seconds:.1f} s to refuse a bad value"


# --------------------------------------------------------------------------- inputs that are not options
#
# Files a command reads (suite TOML, results JSON), environment variables, tracking stores and
# output targets, generated by kind below; every case must be refused in one line (exit 2, no
# traceback, nothing written) that names what is wrong. Hypothesis then generates arbitrary
# files of both kinds for the readers themselves.

GATE = json.loads(Path(BASELINE).read_text())


def _suite_variants() -> dict[str, bytes]:
    """Suite files: broken encodings and structures, and values that are refused before any work."""
    def replaced(old: str, new: str) -> bytes:
        assert old in TINY_SUITE
        return TINY_SUITE.replace(old, new).encode()

    return {
        "binary": bytes(random.Random(0).randrange(256) for _ in range(512)),
        "utf-16": TINY_SUITE.encode("utf-16"),
        "latin-1": TINY_SUITE.replace("tiny test suite", "suite d'été").encode("latin-1"),
        "nul bytes": TINY_SUITE.encode().replace(b"\n", b"\n\x00", 3),
        "empty": b"",
        "deep nesting": b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        "duplicate seeds": replaced("seeds = [0]", "seeds = [0, 0]"),
        "negative seed": replaced("seeds = [0]", "seeds = [-1]"),
        "negative guidance": replaced('steps = [3]', 'steps = [3]\nguidance = [-1.0]'),
        "infinite guidance": replaced('steps = [3]', 'steps = [3]\nguidance = [inf]'),
        "models a number": replaced('[[models]]\nkey = "cdrl"', '[[models_]]\nkey = "cdrl"').replace(
            b'[[models]]\nkey = "drl"', b'models = 5\n[[models_]]\nkey = "drl"'),
        "name a path": replaced('name = "tiny-test"', 'name = "../../x"'),
        "steps a string": replaced("steps = [2, 1]", 'steps = "two"'),
    }


def _results_variants() -> dict[str, bytes]:
    """Results documents (--baseline): encodings, nesting, and each level of the structure wrong."""
    point = next(iter(GATE["points"]))

    def changed(edit) -> bytes:
        document = json.loads(json.dumps(GATE))
        edit(document)
        return json.dumps(document).encode()

    return {
        "binary": bytes(random.Random(1).randrange(256) for _ in range(512)),
        "utf-16": json.dumps(GATE).encode("utf-16"),
        "deep nesting": b"[" * 200_000 + b"]" * 200_000,
        "a list": b"[1, 2]",
        "format 1": changed(lambda d: d.update(format=1)),
        "points a list": changed(lambda d: d.update(points=[1])),
        "a point a number": changed(lambda d: d["points"].update({point: 5})),
        "metrics a list": changed(lambda d: d["points"][point].update(metrics=[0.5])),
        "values a scalar": changed(lambda d: d["points"][point]["metrics"].update(energy_distance=0.5)),
        "values strings": changed(lambda d: d["points"][point]["metrics"].update(energy_distance=["a"])),
        "duplicate seeds": changed(lambda d: d["points"][point].update(seeds=[0, 0])),
        "n_samples text": changed(lambda d: d["points"][point].update(n_samples="many")),
        "fingerprint text": changed(lambda d: d.update(fingerprints={"x": "abc"})),
    }


#: Environment variables, each with the command that reads it and the text the error must name.
ENVIRONMENT = [
    ({"WORLD_SIZE": "abc"}, ["presets"], "WORLD_SIZE"),
    ({"WORLD_SIZE": "0"}, ["presets"], "WORLD_SIZE"),
    ({"LOCAL_RANK": "-1"}, ["presets"], "LOCAL_RANK"),
    ({"CDRL_BENCH_COLLECTIVE_TIMEOUT_MINUTES": "soon"}, ["presets"], "CDRL_BENCH_COLLECTIVE_TIMEOUT_MINUTES"),
    ({"CDRL_INCEPTION_FAST_CPU": "yes"}, ["presets"], "CDRL_INCEPTION_FAST_CPU"),
    ({"CDRL_FID_WEIGHTS": "WORKDIR/missing.pt"}, ["presets"], "CDRL_FID_WEIGHTS"),
    ({"CDRL_BENCH_CACHE": "WORKDIR/a-file"}, ["presets"], "a-file is a file, not a folder"),
    ({"CDRL_BENCH_CACHE": "WORKDIR/a-file/below"}, ["presets"], "CDRL_BENCH_CACHE"),
    ({"MLFLOW_TRACKING_URI": "garbage"}, ["train", "--preset", "tiny"], "MLFLOW_TRACKING_URI"),
    ({"MLFLOW_TRACKING_URI": "file://WORKDIR/mlruns"}, ["train", "--preset", "tiny"], "MLFLOW_TRACKING_URI"),
    ({"MLFLOW_TRACKING_URI": "sqlite:///WORKDIR/a-file"}, ["train", "--preset", "tiny"], "a-file is not a SQLite"),
    # Port 9 (discard) has no listener here: refused at once, as a server that is down.
    ({"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, ["eval", STORED], "does not answer"),
]
#: Output targets that cannot be written, and run names that would leave runs/; a device is refused before any work.
DEVICE = "/dev/full exists and is not a regular file"
OUTPUTS = [
    (["sample", STORED, "--out", "/dev/full"], DEVICE),
    (["import-checkpoint", STORED, "--preset", "toy-checkerboard", "--out", "/dev/full"], DEVICE),
    (["table", "--suite", "ci-smoke", "--format", "csv", "--out", "/dev/full"], DEVICE),
    (["perf", "--json", "/dev/full"], DEVICE),
    (["sample", STORED, "--out", "x" * 300 + ".npz"], "longer than a file system takes"),
    (["train", "--preset", "tiny", "--out", "WORKDIR/" + "r" * 300], "longer than a file system takes"),
    (["train", "--preset", "tiny", "--set", "name=../../../x"], "name"),
    (["train", "--preset", "tiny", "--set", "name=a/b"], "name"),
    (["table", "--suite", "ci-smoke", "--plot", "p.svg"], "--plot p.svg"),
]


def _corpus() -> list[tuple[str, str, list[str], dict[str, str], dict[str, bytes], str]]:
    """(kind, case, argv, environment, files to write first, text the error names)."""
    cases = [("suite file", name, ["plan", "--suite", "suite.toml"], {}, {"suite.toml": content}, "suite.toml")
             for name, content in _suite_variants().items()]
    cases += [("results document", name, ["check", "--suite", "gate", "--baseline", "baseline.json"], {},
               {"baseline.json": content}, "baseline.json") for name, content in _results_variants().items()]
    cases += [("environment", f"{next(iter(env))}={next(iter(env.values()))}", argv, env, {}, named)
              for env, argv, named in ENVIRONMENT]
    cases += [("output target", " ".join(argv)[:60], argv, {}, {}, named) for argv, named in OUTPUTS]
    return cases


CORPUS = _corpus()


def test_the_corpus_covers_every_kind():
    counts = {kind: sum(case[0] == kind for case in CORPUS) for kind in dict.fromkeys(case[0] for case in CORPUS)}
    assert counts == {"suite file": 13, "results document": 13, "environment": 12, "output target": 9}, counts


@pytest.mark.parametrize(("kind", "case", "argv", "env", "files", "named"), CORPUS,
                         ids=[f"{kind}-{case}" for kind, case, *_ in CORPUS])
def test_a_bad_file_variable_or_target_is_one_line_and_exit_2(kind, case, argv, env, files, named, tmp_path,
                                                               monkeypatch, capsys):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "a-file").write_text("not a folder, nor a database")
    for name, content in files.items():
        (workdir / name).write_bytes(content)
    before = sorted(path.name for path in workdir.iterdir())
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value.replace("WORKDIR", str(workdir)))
    monkeypatch.setattr(sys, "argv", ["cdrl-bench", *(item.replace("WORKDIR", str(workdir)) for item in argv)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exited.value.code == 2, f"exit {exited.value.code} (a silent acceptance?); stderr: {captured.err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err[-2000:]
    assert named in lines[0], f"the error does not name {named!r}: {lines[0]}"
    assert sorted(path.name for path in workdir.iterdir()) == before, "the failed command wrote"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                         st.sampled_from(list(_suite_variants().values()))))
def test_any_suite_file_loads_or_is_one_suite_error(content, tmp_path):
    path = tmp_path / "suite.toml"
    path.write_bytes(content)
    try:
        load_suite(path)
    except SuiteError as error:
        assert "\n" not in str(error)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda children: st.lists(children, max_size=4)
                     | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(_JSON, st.builds(lambda points: {**GATE, "points": points},
                                           st.dictionaries(st.text(max_size=8), _JSON, max_size=3))))
# Found by this test: a key holding a line break once split the error over two lines.
@example(document={**GATE, "points": {"\n": None}})
def test_any_results_document_reads_or_is_one_suite_error(document, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document))
    try:
        read = read_results(path)
    except SuiteError as error:
        assert "\n" not in str(error)
        return
    # Accepted: the structure every reader of it relies on.
    for values in read["points"].values():
        assert all(isinstance(value, (int, float)) for measured in values["metrics"].values() for value in measured)


def test_a_disk_that_fills_during_a_write_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    """A target that passes every check before the work can still fail as it is written (ENOSPC)."""
    import errno

    import numpy as np

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cdrl-bench", "sample", STORED, "--n", "2", "--steps", "1", "--out", "s.npz"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    error = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and error == ("error: cannot write s.npz: No space left on device; free some space, "
                                                "fix the folder's permissions or choose another path")
    assert list(tmp_path.iterdir()) == []  # no partial file left
