"""The nine hyperparameters of one model: architecture plus optimizer, step size and batch size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from lstm_adv.config import ACTIVATIONS, MAX_LAYERS, MAX_WIDTH, OPTIMIZERS
from lstm_adv.domain import validators as v
from lstm_adv.domain.errors import ConfigError

__all__ = ["ACTIVATIONS", "OPTIMIZERS", "Hyperparameters"]


@attrs.frozen
class Hyperparameters:
    """What a tuning trial chooses and a model run stores in ``params.json``."""

    hidden_size: int = attrs.field(validator=v.at_least(1, high=MAX_WIDTH))
    num_layers: int = attrs.field(validator=v.at_least(1, high=MAX_LAYERS))
    lstm_activation: str = attrs.field(validator=v.one_of(ACTIVATIONS))
    dropout: float = attrs.field(validator=v.number(low=0, high=1, high_strict=True))
    fc_size: int = attrs.field(validator=v.at_least(1, high=MAX_WIDTH))
    fc_activation: str = attrs.field(validator=v.one_of(ACTIVATIONS))
    optimizer: str = attrs.field(validator=v.one_of(OPTIMIZERS))
    learning_rate: float = attrs.field(validator=v.number(low=0, high=10, low_strict=True))
    batch_size: int = attrs.field(validator=v.at_least(1))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, origin: str) -> Hyperparameters:
        """Build from plain data (a params file, a config section, a trial); unknown or missing keys are errors."""
        names = [field.name for field in attrs.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"{origin}: unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(names)}")
        missing = [name for name in names if name not in data]
        if missing:
            raise ConfigError(f"{origin}: missing hyperparameter(s) {', '.join(missing)}")
        try:
            return cls(
                hidden_size=data["hidden_size"],
                num_layers=data["num_layers"],
                lstm_activation=data["lstm_activation"],
                dropout=data["dropout"],
                fc_size=data["fc_size"],
                fc_activation=data["fc_activation"],
                optimizer=data["optimizer"],
                learning_rate=data["learning_rate"],
                batch_size=data["batch_size"],
            )
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{origin}: a hyperparameter has the wrong type ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as stored in ``params.json`` and trial attributes."""
        return attrs.asdict(self)
