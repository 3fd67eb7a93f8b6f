"""Reading configuration files: defaults, then a user file, then command-line overrides."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from lstm_adv.config import Config
from lstm_adv.domain.errors import ConfigError
from lstm_adv.resources import resource
from lstm_adv.results.converter import describe_error, structure, unstructure

# A validator's message starts with its section ("model.imbalance must be …"): it is passed on as it is.
SECTION_NAMES = tuple(f"{field.name}." for field in attrs.fields(Config))


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
    origin = str(user_file) if user_file else "configuration"
    try:
        return structure(data, Config)
    except ConfigError:
        raise
    except Exception as exc:  # cattrs raises (nested) exception groups; one line names the first problem
        message = describe_error(exc, Config)
        raise ConfigError(message if message.startswith(SECTION_NAMES) else f"{origin}: {message}") from None


def config_as_dict(config: Config) -> dict[str, Any]:
    """Plain nested data of ``config`` exactly as a manifest stores it (JSON types: lists, not tuples)."""
    result: dict[str, Any] = json.loads(json.dumps(unstructure(config)))
    return result


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {label} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {label} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
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
