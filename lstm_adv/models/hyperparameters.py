"""The nine hyperparameters of one model: architecture plus optimizer, step size and batch size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from lstm_adv.domain.errors import ConfigError

ACTIVATIONS: tuple[str, ...] = ("relu", "tanh")
OPTIMIZERS: tuple[str, ...] = ("adam", "rmsprop", "sgd")


def _one_of(options: tuple[str, ...]) -> Any:
    def check(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in options:
            raise ConfigError(
                f"Hyperparameters.{attribute.name} must be one of {', '.join(options)}; got {value!r}"
            )

    return check


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"Hyperparameters.{attribute.name} must be a positive integer; got {value!r}")


def _dropout(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"Hyperparameters.dropout must be in [0, 1); got {value!r}")


def _learning_rate(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0.0:
        raise ConfigError(f"Hyperparameters.learning_rate must be > 0; got {value!r}")


@attrs.frozen
class Hyperparameters:
    """What a tuning trial chooses and a model run stores in ``params.json``."""

    hidden_size: int = attrs.field(validator=_positive)
    num_layers: int = attrs.field(validator=_positive)
    lstm_activation: str = attrs.field(validator=_one_of(ACTIVATIONS))
    dropout: float = attrs.field(converter=float, validator=_dropout)
    fc_size: int = attrs.field(validator=_positive)
    fc_activation: str = attrs.field(validator=_one_of(ACTIVATIONS))
    optimizer: str = attrs.field(validator=_one_of(OPTIMIZERS))
    learning_rate: float = attrs.field(converter=float, validator=_learning_rate)
    batch_size: int = attrs.field(validator=_positive)

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
