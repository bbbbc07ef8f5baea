"""Values pasted into MLflow search filters (``search_runs(filter_string=...)``), quoted so they stay values.

MLflow's filter grammar (``mlflow.utils.search_utils``, tokenised by sqlparse) takes a string
value in single or double quotes and only strips the outer pair: it has no escape for a quote
inside. So a value is written in single quotes, or in double quotes when it holds a single
quote (``it's`` -> ``"it's"``); a value holding both kinds, or ending in a backslash (sqlparse
reads ``\\'`` as an escaped quote and the string would run on into the next clause), cannot be
written at all and is refused up front with :class:`FilterValueError`.
"""

from __future__ import annotations

from cdrl.errors import CdrlBenchError


class FilterValueError(CdrlBenchError):
    """A value (or tag name) that MLflow's search filter syntax cannot express."""


def filter_value(value: object, what: str = "value") -> str:
    """``value`` (made a string) as a quoted string literal of an MLflow search filter."""
    text = str(value)
    problem = ("ends in a backslash" if text.endswith("\\")
               else "holds both ' and \"" if "'" in text and '"' in text else None)
    if problem is not None:
        raise FilterValueError(f"cannot search MLflow for {what} {text!r}: it {problem}, which MLflow's filter "
                               "syntax cannot quote; rename it")
    return f'"{text}"' if "'" in text else f"'{text}'"


def tag_clause(key: str, value: object) -> str:
    """The filter clause "tag ``key`` equals ``value``", e.g. ``tags.`cdrl.suite` = 'toy-steps'``."""
    if "`" in key:
        raise FilterValueError(f"cannot search MLflow for tag {key!r}: a tag name in a filter may not hold '`'")
    return f"tags.`{key}` = {filter_value(value, f'tag {key}')}"
