"""Bad values for every option of every command: exit 2, one line naming the option, no traceback, nothing written.

The bad values come from each option's declared type and range (typer's ``min``/``max``,
``Literal`` choices) and from what its name says it is (a path to read, a path to write, a
name to look up, a ``--set`` override), so a new option is fuzzed without a change here.
Every case runs the real command line in this process, in an empty working directory.
"""

from __future__ import annotations

import math
import sys
import time
import typing
from pathlib import Path

import pytest
import typer.main

import cli

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
}
#: Options that take any text (a free name), or that only a cluster executor reads (it checks them there).
FREE_TEXT = {"experiment", "tags", "partition", "slurm_options", "ray_address"}
#: Paths the command reads (must exist) and paths it writes (their folder must be creatable).
READ_PATHS = {"path", "class_map_from", "class_map_to", "baseline", "results", "from_checkpoint"}
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


def _bad_values(name: str, parameter, workdir: Path) -> list[str]:
    annotation = parameter.type_descriptor.annotation
    origin = typing.get_origin(annotation)
    if name == "overrides":
        return BAD_OVERRIDES
    if name == "sampler_overrides":
        return BAD_SAMPLER_OVERRIDES
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
