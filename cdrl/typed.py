"""Typed dataclasses from plain values: one reader for saved configs, ``--set`` overrides and suite files.

A field's annotation says what it accepts (``int``, ``float``, ``str``, ``bool``, ``Literal``,
``X | None``, ``tuple[X, ...]``, ``dict[str, X]``, another dataclass) and its metadata adds
bounds, e.g. ``field(default=1, metadata=at_least(1))`` or ``metadata=bounds(at_least=0, below=1)``. :func:`build` checks a mapping
(JSON, TOML) against them; :func:`parse` reads one command-line string. Both raise
:class:`FieldError`, which names the key, so each caller words the fix for its own input.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from cdrl.errors import CdrlBenchError


class FieldError(CdrlBenchError):
    """``key`` cannot take the value given; ``problem`` says why and what it accepts."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key} {problem}")
        self.key, self.problem = key, problem


def bounds(*, at_least: float | None = None, above: float | None = None, at_most: float | None = None,
           below: float | None = None) -> dict[str, float]:
    """Field metadata: the value (every item of a tuple) must lie within these bounds; None is always allowed."""
    given = {"at_least": at_least, "above": above, "at_most": at_most, "below": below}
    return {name: value for name, value in given.items() if value is not None}


def at_least(minimum: float) -> dict[str, float]:
    return bounds(at_least=minimum)


def above(bound: float) -> dict[str, float]:
    return bounds(above=bound)


_BOUND_WORDING = {"at_least": ("at least", lambda v, b: v >= b), "above": ("greater than", lambda v, b: v > b),
                  "at_most": ("at most", lambda v, b: v <= b), "below": ("less than", lambda v, b: v < b)}


def _describe(annotation: Any) -> str:
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _describe(a) for a in arguments)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, arguments))
    if origin is tuple:
        return f"a list (each {_describe(arguments[0])})" if arguments else "a list"
    if origin is dict:
        return f"a table (each value {_describe(arguments[1])})"
    if dataclasses.is_dataclass(annotation):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def _check_length(arguments: tuple, count: int, key: str) -> None:
    """A fixed-length tuple (``tuple[float, float]``) takes exactly that many values."""
    if arguments and arguments[-1] is not Ellipsis and count != len(arguments):
        raise FieldError(key, f"takes {len(arguments)} values, got {count}")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` as ``annotation`` describes it (lists become tuples, integers floats where floats are due)."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if _is_union(annotation):
        if value is None and type(None) in arguments:
            return None
        for candidate in (a for a in arguments if a is not type(None)):
            try:
                return coerce(value, candidate, key)
            except FieldError:
                continue
        raise FieldError(key, f"must be {_describe(annotation)}, got {value!r}")
    if origin is Literal:
        if value not in arguments:
            raise FieldError(key, f"must be {_describe(annotation)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise FieldError(key, f"must be {_describe(annotation)}, got {value!r}")
        _check_length(arguments, len(value), key)
        element = arguments[0] if arguments else Any
        return tuple(value if element is Any else coerce(item, element, key) for item in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise FieldError(key, f"must be {_describe(annotation)}, got {value!r}")
        return {str(name): coerce(item, arguments[1], f"{key}.{name}") for name, item in value.items()}
    if dataclasses.is_dataclass(annotation):
        if dataclasses.is_dataclass(value) and isinstance(value, annotation):
            return value
        return build(annotation, value, f"{key}.")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (bool, int, float, str):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise FieldError(key, f"must be {_describe(annotation)}, got {value!r}")
        if annotation is float and not math.isfinite(value):
            raise FieldError(key, f"must be a finite number, got {value!r}")
        return value
    if annotation is Any:
        return value
    raise FieldError(key, f"has a type this reader does not know ({annotation!r})")


def check_field(field: dataclasses.Field, value: Any, key: str) -> None:
    """Check ``value`` against the bounds in ``field``'s metadata."""
    values = value if isinstance(value, tuple) else (value,)
    for item in values:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        for name, (wording, holds) in _BOUND_WORDING.items():
            if name in field.metadata and not holds(item, field.metadata[name]):
                rule = " and ".join(f"{_BOUND_WORDING[other][0]} {field.metadata[other]:g}"
                                    for other in _BOUND_WORDING if other in field.metadata)
                raise FieldError(key, f"must be {rule}, got {item!r}")


def check_tree(instance: Any, where: str = "") -> None:
    """Check every field of a dataclass instance, and of the dataclasses inside it, against its bounds."""
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if dataclasses.is_dataclass(value):
            check_tree(value, f"{where}{field.name}.")
        else:
            check_field(field, value, f"{where}{field.name}")


def build(cls: type, values: Any, where: str = "") -> Any:
    """An instance of dataclass ``cls`` from a mapping; keys are checked, missing ones take their defaults."""
    if not isinstance(values, Mapping):
        raise FieldError(where.rstrip(".") or cls.__name__, f"must be a table, got {values!r}")
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise FieldError(f"{where}{unknown[0]}", f"is not a known key: use one of {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name not in values:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise FieldError(f"{where}{name}", "is missing")
            continue
        kwargs[name] = coerce(values[name], hints[name], f"{where}{name}")
        check_field(field, kwargs[name], f"{where}{name}")
    return cls(**kwargs)


def parse(raw: str, annotation: Any, key: str) -> Any:
    """One command-line value (``--set key=raw``) as ``annotation`` describes it."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if _is_union(annotation):
        if raw.lower() in ("none", "null") and type(None) in arguments:
            return None
        return parse(raw, next(a for a in arguments if a is not type(None)), key)
    if origin is Literal:
        if raw not in arguments:
            raise FieldError(key, f"must be one of {', '.join(map(str, arguments))}, got {raw!r}")
        return raw
    if origin is tuple:
        items = [item for item in raw.strip("()[] ").split(",") if item.strip()]
        _check_length(arguments, len(items), key)
        element = arguments[0] if arguments else str
        return tuple(parse(item.strip(), element, key) for item in items)
    if annotation not in (bool, int, float, str):
        raise FieldError(key, "cannot be set from the command line")
    if annotation is bool:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise FieldError(key, f"needs {_describe(bool)}, got {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    try:
        value = annotation(raw)
    except ValueError:
        raise FieldError(key, f"needs {_describe(annotation)}, got {raw!r}") from None
    if annotation is float and not math.isfinite(value):
        raise FieldError(key, f"must be a finite number, got {raw!r}")
    return value


def key_values(items: list[str], flag: str, example: str) -> list[tuple[str, str]]:
    """``key=value`` options, refused one line each when they are not."""
    pairs = []
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise CdrlBenchError(f"{flag} {item!r} is not key=value: write e.g. {flag} {example}")
        pairs.append((key, value))
    return pairs
