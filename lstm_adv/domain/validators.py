"""Validator factories for attrs fields: one rule each, one message form everywhere.

Each factory returns an attrs validator that raises ``error`` (a :class:`LstmAdvError` subclass)
with a message naming the owner class, the field, the rule and the value, e.g.
``L1Settings.lam must be finite and ≥ 0, got nan``. Config classes pass their dotted section
instead of the class name (``owner="tune_attack"`` → ``tune_attack.lam …``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import attrs

from lstm_adv.domain.errors import ConfigError, LstmAdvError

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _owner(instance: Any, owner: str | None) -> str:
    return owner if owner is not None else type(instance).__name__


def number(
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_strict: bool = False,
    high_strict: bool = False,
    owner: str | None = None,
    error: type[LstmAdvError] = ConfigError,
) -> Validator:
    """A finite number in [low, high] (``*_strict``: the open bound); NaN and ±inf always fail."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > low if low_strict else value >= low) and (value < high if high_strict else value <= high)
        if not ok:
            raise error(
                f"{_owner(instance, owner)}.{attribute.name} must be {_rule(low, high, low_strict, high_strict)}"
                f", got {value!r}"
            )

    return check


def _rule(low: float, high: float, low_strict: bool, high_strict: bool) -> str:
    parts = ["finite"]
    if math.isfinite(low) and math.isfinite(high):
        left, right = ("(" if low_strict else "["), (")" if high_strict else "]")
        parts.append(f"in {left}{low:g}, {high:g}{right}")
    elif math.isfinite(low):
        parts.append(f"{'>' if low_strict else '≥'} {low:g}")
    elif math.isfinite(high):
        parts.append(f"{'<' if high_strict else '≤'} {high:g}")
    return " and ".join(parts)


#: The largest integer a setting takes unless it says otherwise: beyond it, counts and seeds overflow the
#: 32-bit integers of torch and numpy.
INT_LIMIT = 2**31 - 1


def at_least(
    low: int, *, high: int = INT_LIMIT, owner: str | None = None, error: type[LstmAdvError] = ConfigError
) -> Validator:
    """An integer in [``low``, ``high``] (booleans are not integers)."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise error(f"{_owner(instance, owner)}.{attribute.name} must be an integer ≥ {low}, got {value!r}")
        if value > high:
            raise error(f"{_owner(instance, owner)}.{attribute.name} must be an integer ≤ {high:,}, got {value!r}")

    return check


def one_of(options: Collection[Any], *, owner: str | None = None, error: type[LstmAdvError] = ConfigError) -> Validator:
    """One of ``options``."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in options:
            listed = ", ".join(str(o) for o in options)
            raise error(f"{_owner(instance, owner)}.{attribute.name} must be one of {listed}; got {value!r}")

    return check


def some_of(
    options: Collection[Any], *, owner: str | None = None, error: type[LstmAdvError] = ConfigError
) -> Validator:
    """A non-empty collection whose every item is one of ``options``."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value or any(item not in options for item in value):
            listed = ", ".join(str(o) for o in options)
            raise error(f"{_owner(instance, owner)}.{attribute.name} must list some of {listed}; got {list(value)!r}")

    return check


def ordered_range(
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_strict: bool = False,
    owner: str | None = None,
    error: type[LstmAdvError] = ConfigError,
) -> Validator:
    """A pair ``[a, b]`` of finite numbers with low ≤ a ≤ b ≤ high (``low_strict``: low < a)."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        pair = tuple(value)
        finite = len(pair) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in pair
        )
        ok = finite and pair[0] <= pair[1] <= high and (pair[0] > low if low_strict else pair[0] >= low)
        if not ok:
            bound = f"{low:g} {'<' if low_strict else '≤'} low ≤ high" if math.isfinite(low) else "low ≤ high"
            bound += f" ≤ {high:g}" if math.isfinite(high) else ""
            raise error(
                f"{_owner(instance, owner)}.{attribute.name} must be [low, high] of finite numbers with "
                f"{bound}; got {list(pair)!r}"
            )

    return check
