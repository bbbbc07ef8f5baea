"""The environment variables cdrl-bench reads, checked before a command does any work.

Each is read where it is used (one reader per variable, which says what it accepts); this module
calls every reader once at the start of a command, so a bad value is one line naming the variable
before anything runs, not a traceback half-way through. ``MLFLOW_TRACKING_URI`` is checked with
the commands that use a store (:func:`cdrl.tracking.checked_store`).
"""

from __future__ import annotations

import os

from cdrl.distributed import collective_timeout, launched_world_size, local_rank
from cdrl.errors import CdrlBenchError
from cdrl.evaluation.inception import fast_cpu_enabled
from cdrl.evaluation.weights import CACHE_ENV_VAR, cache_dir, resolve_weights


def check_environment() -> None:
    """Every variable cdrl-bench reads, read once: a bad one raises a CdrlBenchError naming it and the fix."""
    launched_world_size()
    local_rank()
    collective_timeout()
    fast_cpu_enabled()
    resolve_weights()  # CDRL_FID_WEIGHTS, when set, names a file or "library"
    if os.environ.get(CACHE_ENV_VAR):
        _check_cache(cache_dir())


def _check_cache(folder) -> None:
    """$CDRL_BENCH_CACHE is a folder this user can write into, or can be made as one."""
    existing = next(place for place in (folder.absolute(), *folder.absolute().parents) if place.exists())
    if not existing.is_dir():
        raise CdrlBenchError(f"{CACHE_ENV_VAR}={os.environ[CACHE_ENV_VAR]}: {existing} is a file, not a folder; "
                             "point it at a folder, or unset it for ~/.cache/cdrl-bench")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CdrlBenchError(f"{CACHE_ENV_VAR}={os.environ[CACHE_ENV_VAR]}: {existing} is not writable by this user; "
                             "point it at a folder you can write, or unset it for ~/.cache/cdrl-bench")
