"""The one cattrs converter: the only place where domain values become plain data and back."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import cattrs

from lstm_adv.domain.run_id import RunId

T = TypeVar("T")

_converter = cattrs.Converter(forbid_extra_keys=True)
_converter.register_unstructure_hook(datetime, lambda value: value.isoformat())
_converter.register_structure_hook(datetime, lambda value, _: datetime.fromisoformat(value))
_converter.register_unstructure_hook(Path, str)
_converter.register_structure_hook(Path, lambda value, _: Path(value))
_converter.register_unstructure_hook(RunId, str)
_converter.register_structure_hook(RunId, lambda value, _: RunId.parse(value))


def unstructure(value: Any) -> Any:
    """Plain JSON/TOML-ready data for ``value``."""
    return _converter.unstructure(value)


def structure(data: Any, cls: type[T]) -> T:
    """Rebuild a ``cls`` from plain data (extra keys are an error)."""
    return _converter.structure(data, cls)
