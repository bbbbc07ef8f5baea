"""The shape of a results document (``check --baseline`` / ``--results``), checked before anything reads it.

A results document (``benchmarks.regression``) is JSON::

    {"format": 2, "suite": "gate", "suite_version": 2, "profile": "full",
     "points": {"toy-cdrl/K15": {"seeds": [0, 1, 2], "n_samples": 2000,
                                 "metrics": {"energy_distance": [0.012, 0.013, 0.011]},
                                 "protocol": {"backend": "exact-2d", ...}}},
     "recorded": {...}, "fingerprints": {"samples:toy-cdrl/K15/w0": [6.05, ...]},
     "configs": {"preset:cifar10": {"schedule.logsnr_max": 9.8, ...}}}

A metric lists fewer values than the point has seeds where a seed reported none (a diverged run).
:func:`check_results_file` reads the file as UTF-8 JSON and validates it against :func:`results_schema`
(JSON Schema, by the jsonschema library), so a file that is binary, nested past the JSON reader's
depth, or of another structure is one line that says where it is wrong, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from benchmarks.suite import SuiteError

_NUMBERS = {"type": "array", "items": {"type": "number"}}
_POINT = {
    "type": "object",
    "required": ["seeds", "metrics"],
    "properties": {
        "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "uniqueItems": True},
        "metrics": {"type": "object", "additionalProperties": _NUMBERS},
        "n_samples": {"type": ["integer", "null"], "minimum": 1},
        # How the point was measured (regression.results_from_runs), compared entry by entry.
        "protocol": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def results_schema(format_version: int) -> dict:
    """JSON Schema of a results document of ``format_version``."""
    return {
        "type": "object",
        "required": ["format", "suite", "suite_version", "profile", "points"],
        "properties": {
            "format": {"const": format_version},
            "suite": {"type": "string"},
            "suite_version": {"type": "integer"},
            "profile": {"enum": ["full", "quick"]},
            "points": {"type": "object", "additionalProperties": _POINT},
            "recorded": {"type": "object"},
            "fingerprints": {"type": "object", "additionalProperties": _NUMBERS},
            # Resolved config per preset or suite model: {field: value} (benchmarks.resolved_configs).
            "configs": {"type": "object", "additionalProperties": {"type": "object"}},
        },
    }


def check_results_file(path: Path, option: str, format_version: int, fix: str) -> dict:
    """The document of a results file; refused, in one line ending with ``fix``, when it is not UTF-8 JSON of
    the results schema."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SuiteError(f"{option} {path} is not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}): "
                         f"it is no results file; {fix}") from None
    except OSError as error:
        raise SuiteError(f"{option} {path} cannot be read ({error.strerror or error}): {fix}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise SuiteError(f"{option} {path} is not valid JSON ({error}): {fix}") from None
    except RecursionError:
        raise SuiteError(f"{option} {path} nests arrays or objects deeper than a JSON reader follows: it is no "
                         f"results file; {fix}") from None
    problem = best_match(Draft202012Validator(results_schema(format_version)).iter_errors(document))
    if problem is not None:
        # A key may hold any character: escaped as JSON writes it, so the error stays one line.
        where = "/".join(json.dumps(part)[1:-1] if isinstance(part, str) else str(part)
                         for part in problem.absolute_path) or "the document"
        message = problem.message if len(problem.message) <= 160 else problem.message[:157] + "..."
        raise SuiteError(f"{option} {path} is not a format-{format_version} results file: at {where}, {message}; "
                         f"{fix}")
    return document
