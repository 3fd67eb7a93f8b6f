"""The one cattrs converter: the only place where domain values become plain data and back.

Primitives are structured strictly (a string is not an integer, a boolean is not a number), so a
configuration file or a manifest with a wrong type fails instead of being coerced. Unions of
primitives and literals (``float | Literal["auto"]``) pass values through by their own type.
:func:`describe_error` turns cattrs' nested validation errors into one line naming the dotted key.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.strategies import configure_union_passthrough

from lstm_adv.domain.run_id import RunId

T = TypeVar("T")

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class StrictTypeError(TypeError):
    """A primitive of the wrong type; the message says what was expected and what came."""


def _strict(kind: type) -> Any:
    def structure(value: Any, _: Any) -> Any:
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
            return value
        raise StrictTypeError(f"must be {_TYPE_NAMES[kind]}, got {value!r}")

    return structure


def _is_literal(kind: Any) -> bool:
    return bool(get_origin(kind) is Literal)


def _literal(kind: Any) -> Any:
    options = get_args(kind)

    def structure(value: Any, _: Any) -> Any:
        if any(value == o and type(value) is type(o) for o in options):
            return value
        raise StrictTypeError(f"must be one of {', '.join(str(o) for o in options)}; got {value!r}")

    return structure


def _make() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    for kind in (int, float, str, bool):
        converter.register_structure_hook(kind, _strict(kind))
    converter.register_structure_hook_factory(_is_literal, _literal)
    configure_union_passthrough(Union[str, int, float, bool, None], converter)  # noqa: UP007 (a runtime type)
    converter.register_unstructure_hook(datetime, lambda value: value.isoformat())
    converter.register_structure_hook(datetime, lambda value, _: datetime.fromisoformat(value))
    converter.register_unstructure_hook(Path, str)
    converter.register_structure_hook(Path, lambda value, _: Path(value))
    converter.register_unstructure_hook(RunId, str)
    converter.register_structure_hook(RunId, lambda value, _: RunId.parse(value))
    converter.register_unstructure_hook(float, _finite_or_none)
    return converter


def _finite_or_none(value: float) -> float | None:
    """Non-finite floats are stored as ``null`` (JSON has no NaN)."""
    return value if math.isfinite(value) else None


_converter = _make()


def unstructure(value: Any, cls: Any = None) -> Any:
    """Plain JSON/TOML-ready data for ``value`` (as type ``cls`` when given)."""
    return _converter.unstructure(value, cls) if cls is not None else _converter.unstructure(value)


def structure(data: Any, cls: type[T]) -> T:
    """Rebuild a ``cls`` from plain data (extra keys and wrong types are errors)."""
    return _converter.structure(data, cls)


def describe_error(exc: BaseException, root: type) -> str:
    """One line for the first problem in a cattrs error raised while structuring a ``root``.

    ``unknown key 'cohort.window_hour'; known keys here: …``, ``key 'cohort.window_hours' must be an
    integer, got '48'``, ``cohort must be a table``; a validator's own message is passed on.
    """
    messages = cattrs.transform_error(exc, path="$", format_exception=lambda e, t: _format(e, t))
    body, _, where = messages[0].rpartition(" @ ")
    dotted = _dotted(where)
    if body.startswith("\x00extra "):
        names, _, known = body.removeprefix("\x00extra ").partition("|")
        key = f"{dotted}.{names}" if dotted else names
        return f"unknown key {key!r}; known keys here: {known}"
    if body.startswith("\x00table"):
        return f"{dotted or 'the file'} must be a table"
    if body.startswith("\x00key "):
        return f"key {dotted!r} {body.removeprefix(chr(0) + 'key ')}"
    return body


def _format(exc: BaseException, kind: Any) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        known = ", ".join(sorted(field.name for field in attrs.fields(exc.cl)))
        return f"\x00extra {', '.join(sorted(exc.extra_fields))}|{known}"
    if isinstance(exc, StrictTypeError):
        return f"\x00key {exc}"
    if isinstance(kind, type) and attrs.has(kind) and isinstance(exc, TypeError | AttributeError):
        return "\x00table"
    length = re.search(r"values in .* to structure as tuple\[(.*)\]$", str(exc))
    if isinstance(exc, ValueError) and length:
        return f"\x00key must be a list of {length.group(1).count(',') + 1} values"
    if get_origin(kind) in (tuple, list) and isinstance(exc, TypeError | ValueError):
        args = [a for a in get_args(kind) if a is not Ellipsis]
        size = f" of {len(args)} values" if get_origin(kind) is tuple and Ellipsis not in get_args(kind) else ""
        return f"\x00key must be a list{size}"
    if get_origin(kind) in (Union, UnionType) and isinstance(exc, TypeError | ValueError):
        return f"\x00key must be {' or '.join(_name(a) for a in get_args(kind))}"
    return str(exc)


def _name(kind: Any) -> str:
    if get_origin(kind) is Literal:
        return " or ".join(repr(o) if isinstance(o, str) else str(o) for o in get_args(kind))
    return _TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def _dotted(where: str) -> str:
    """``$.cohort.window_hours`` → ``cohort.window_hours``; ``$.eps[1]`` → ``eps[1]``."""
    return where.removeprefix("$").removeprefix(".")
