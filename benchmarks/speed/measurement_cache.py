"""Measurements that depend only on the machine or on a config, kept in the cache folder between commands.

``cdrl-bench perf`` spent minutes before its first iteration on numbers that never change for a
given input: the FLOP counts of a config (the meta-device count of the paper's CIFAR-10 networks,
training and two sampling schedules, 3 minutes on a loaded 2-core machine) and the CPU's FMA peak
(a few seconds). Each is stored once under ``$CDRL_BENCH_CACHE/perf/`` (default
``~/.cache/cdrl-bench``), keyed by everything it depends on (the config, torch's version, the
CPU model and threads), and read back by later commands. The cache is an optimisation: a file
that cannot be read or written is recomputed, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from cdrl.evaluation.weights import cache_dir

T = TypeVar("T")


def cache_path(kind: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_dir() / "perf" / f"{kind}-{digest}.json"


def cached(kind: str, key: dict[str, Any], compute: Callable[[], T], keep: Callable[[T], bool] = lambda _: True) -> T:
    """``compute()``'s JSON value, stored under ``kind`` and ``key`` when ``keep(value)``; read back afterwards."""
    path = cache_path(kind, key)
    try:
        return json.loads(path.read_text())["value"]
    except (OSError, ValueError, KeyError):
        pass
    value = compute()
    if keep(value):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps({"key": key, "value": value}, sort_keys=True, default=str))
            partial.replace(path)  # atomic: a concurrent command reads the whole file or none
        except OSError:
            pass
    return value
