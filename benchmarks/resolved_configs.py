"""The resolved configuration of every preset and of every shipped suite's models, field by field.

A changed default (a preset's learning rate, the schedule's logSNR range, what DRL or an
ablation sets) changes what every suite trains, yet the gate trains only one small model:
its scores cannot see most such changes. The baseline therefore stores each resolved config
(presets as defined; suite models after method, ablations, overrides, batch and budget, in
both profiles), and the check names every field that differs, e.g.
``preset:cifar10: schedule.logsnr_max 9.8 → 10.0``. Stored checkpoints are left out: their
config travels inside the file, whose hash is part of their point keys.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.suite import available_suites, load_suite, model_config
from cdrl.config import PRESETS, preset


def _plain(flat: dict[str, Any]) -> dict[str, Any]:
    """The config as the baseline's JSON holds it (tuples become lists), so stored and current compare equal."""
    return json.loads(json.dumps(flat))


def resolved_configs() -> dict[str, dict[str, Any]]:
    """``{"preset:NAME" | "suite:SUITE/MODEL (PROFILE)": {field: value}}`` of every preset and suite model."""
    configs = {f"preset:{name}": _plain(preset(name).flat()) for name in PRESETS}
    for name in available_suites():
        suite = load_suite(name)
        for profile in suite.profiles:
            for model in suite.models:
                if model.checkpoint is None:
                    configs[f"suite:{name}/{model.key} ({profile})"] = _plain(
                        model_config(suite, model, profile, seed=0).flat())
    return configs


def _show(value: Any) -> str:
    return "absent" if value is _ABSENT else json.dumps(value)


_ABSENT = object()


def config_changes(stored: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """(config, what changed) for each config that differs from the baseline's, naming each changed field."""
    changes = []
    for name in sorted(stored.keys() | current.keys()):
        if name not in current:
            changes.append((name, "no longer defined"))
        elif name not in stored:
            changes.append((name, "new, not in the baseline"))
        else:
            before, after = stored[name], current[name]
            fields = [f"{key} {_show(before.get(key, _ABSENT))} → {_show(after.get(key, _ABSENT))}"
                      for key in sorted(before.keys() | after.keys())
                      if before.get(key, _ABSENT) != after.get(key, _ABSENT)]
            if fields:
                changes.append((name, ", ".join(fields)))
    return changes
