"""Reading configuration files: defaults, then a user file, then command-line overrides."""

from __future__ import annotations

import json
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from lstm_adv.config import Config
from lstm_adv.domain.errors import ConfigError
from lstm_adv.resources import resource
from lstm_adv.results.converter import structure, unstructure

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def load_config(user_file: Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """The effective configuration: shipped defaults < ``user_file`` < ``overrides``.

    ``overrides`` maps dotted keys (``"cohort.window_hours"``) to values; ``None`` values are
    ignored so that unset CLI options fall through.
    """
    data = _read_toml(Path(str(resource("defaults.toml"))), "defaults.toml")
    if user_file is not None:
        _merge(data, _read_toml(user_file, str(user_file)), origin=str(user_file))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    _check_against(Config, data, origin=str(user_file) if user_file else "configuration", prefix="")
    return structure(data, Config)


def config_as_dict(config: Config) -> dict[str, Any]:
    """Plain nested data of ``config`` exactly as a manifest stores it (JSON types: lists, not tuples)."""
    result: dict[str, Any] = json.loads(json.dumps(unstructure(config)))
    return result


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {label} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {label} cannot be read: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {label} is not valid TOML: {exc}") from None


def _merge(base: dict[str, Any], extra: Mapping[str, Any], *, origin: str, prefix: str = "") -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin=origin, prefix=f"{prefix}{key}.")
        else:
            base[key] = value


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, leaf = dotted.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value


def _check_against(cls: type, data: Any, *, origin: str, prefix: str) -> None:
    """Reject unknown keys and wrong types, naming the dotted key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: {prefix.rstrip('.') or 'the file'} must be a table")
    hints = typing.get_type_hints(cls)
    known = {field.name for field in attrs.fields(cls)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{origin}: unknown key {dotted!r}; known keys here: {', '.join(sorted(known))}")
        expected = hints[key]
        if attrs.has(expected):
            _check_against(expected, value, origin=origin, prefix=f"{dotted}.")
        else:
            _check_value(expected, value, origin=origin, dotted=dotted)


def _check_value(expected: Any, value: Any, *, origin: str, dotted: str) -> None:
    origin_type = typing.get_origin(expected)
    if origin_type in (tuple, list):
        args = typing.get_args(expected)
        if not isinstance(value, list):
            raise ConfigError(f"{origin}: key {dotted!r} must be a list, got {value!r}")
        if origin_type is tuple and Ellipsis not in args:
            if len(value) != len(args):
                raise ConfigError(f"{origin}: key {dotted!r} must be a list of {len(args)} values, got {value!r}")
            items = list(args)
        else:
            items = [args[0]] * len(value)
        for item, element in zip(items, value, strict=True):
            _check_value(item, element, origin=origin, dotted=dotted)
        return
    if origin_type in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if any(_matches(option, value) for option in options):
            return
        raise ConfigError(f"{origin}: key {dotted!r} has the wrong type: got {value!r}")
    if not _matches(expected, value):
        name = _TYPE_NAMES.get(expected, getattr(expected, "__name__", str(expected)))
        raise ConfigError(f"{origin}: key {dotted!r} must be {name}, got {value!r}")


def _matches(expected: Any, value: Any) -> bool:
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.get_origin(expected) is typing.Literal:
        return value in typing.get_args(expected)
    return isinstance(value, expected)
