"""Feature definitions: which itemids feed which model input, in which unit and range."""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs

from lstm_adv.domain.errors import FeatureSpecError, ValidationError
from lstm_adv.domain.shapes import N_FEATURES

T = TypeVar("T")

SOURCES = ("bloodgas", "lab", "vital")
# Which MIMIC-III table each source reads.
SOURCE_TABLES = {"bloodgas": "labevents", "lab": "labevents", "vital": "chartevents"}

_FEATURE_KEYS = {
    "name",
    "source",
    "unit",
    "itemids",
    "lower",
    "upper",
    "lower_inclusive",
    "upper_inclusive",
    "fahrenheit_itemids",
    "fahrenheit_lower",
    "fahrenheit_upper",
}


def _itemid_tuple(value: Sequence[int]) -> tuple[int, ...]:
    return tuple(value)


#: A feature name: it becomes a column, a setting key (attack.max_change.<name>) and a report label.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")


@attrs.frozen
class Feature:
    """One model input: a named series built from one or more source itemids."""

    name: str
    source: str = attrs.field(validator=attrs.validators.in_(SOURCES))
    unit: str
    itemids: tuple[int, ...] = attrs.field(converter=_itemid_tuple)
    lower: float = -math.inf
    upper: float = math.inf
    lower_inclusive: bool = False
    upper_inclusive: bool = False
    fahrenheit_itemids: tuple[int, ...] = attrs.field(default=(), converter=_itemid_tuple)
    fahrenheit_lower: float = -math.inf
    fahrenheit_upper: float = math.inf

    def __attrs_post_init__(self) -> None:
        if not self.itemids:
            raise FeatureSpecError(f"feature {self.name!r} must list at least one itemid")
        if not self.lower < self.upper:
            raise FeatureSpecError(
                f"feature {self.name!r} must have lower < upper, got lower={self.lower}, upper={self.upper}"
            )
        if self.fahrenheit_itemids and self.source != "vital":
            raise FeatureSpecError(f"feature {self.name!r}: fahrenheit_itemids are only allowed for vitals")

    @property
    def all_itemids(self) -> tuple[int, ...]:
        """Every itemid that feeds this feature, Celsius/native first."""
        return self.itemids + self.fahrenheit_itemids

    def in_range(self, value: float) -> bool:
        """Whether ``value`` (in the feature's own unit) lies in its valid range."""
        above = value >= self.lower if self.lower_inclusive else value > self.lower
        below = value <= self.upper if self.upper_inclusive else value < self.upper
        return above and below


def _check_features(instance: FeatureSpec, attribute: attrs.Attribute[Any], value: tuple[Feature, ...]) -> None:
    if len(value) != N_FEATURES:
        raise FeatureSpecError(f"FeatureSpec must define {N_FEATURES} features, got {len(value)}")
    names = [f.name for f in value]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FeatureSpecError(f"FeatureSpec feature names must be unique; repeated: {', '.join(duplicates)}")
    seen: dict[int, str] = {}
    for feature in value:
        for itemid in feature.all_itemids:
            if itemid in seen:
                raise FeatureSpecError(
                    f"FeatureSpec itemid {itemid} is used by both {seen[itemid]!r} and {feature.name!r}"
                )
            seen[itemid] = feature.name


@attrs.frozen
class FeatureSpec:
    """The ordered model inputs. Validated: 19 features, unique names, each itemid used once."""

    features: tuple[Feature, ...] = attrs.field(validator=_check_features)

    @classmethod
    def from_toml(cls, text: str, *, origin: str = "<features>") -> FeatureSpec:
        """Build from the TOML text of a features file; errors name the file and the entry."""
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise FeatureSpecError(f"{origin}: not valid TOML ({exc})") from None
        entries = document.get("feature")
        if not isinstance(entries, list):
            raise FeatureSpecError(f"{origin}: expected a list of [[feature]] tables")
        features = tuple(_feature_from_table(entry, i, origin) for i, entry in enumerate(entries))
        _check_file(features, origin)
        return cls(features=features)

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names in model order."""
        return tuple(f.name for f in self.features)

    def by_source(self, source: str) -> tuple[Feature, ...]:
        """The features of one source (``bloodgas``, ``lab`` or ``vital``), in model order."""
        return tuple(f for f in self.features if f.source == source)

    def index(self, name: str) -> int:
        """Model-order position of feature ``name``."""
        try:
            return self.names.index(name)
        except ValueError:
            raise FeatureSpecError(f"unknown feature {name!r}; known: {', '.join(self.names)}") from None


def _feature_from_table(entry: Mapping[str, Any], position: int, origin: str) -> Feature:
    where = f"{origin}: feature #{position + 1}"
    if not isinstance(entry, Mapping):
        raise FeatureSpecError(f"{where} must be a table")
    unknown = sorted(set(entry) - _FEATURE_KEYS)
    if unknown:
        raise FeatureSpecError(f"{where} has unknown key(s): {', '.join(unknown)}")
    missing = sorted({"name", "source", "unit", "itemids"} - set(entry))
    if missing:
        raise FeatureSpecError(f"{where} is missing key(s): {', '.join(missing)}")
    where = f"{where} ({entry.get('name')!r})"
    _check_entry(entry, where)
    try:
        return Feature(
            name=_typed(entry, "name", str, where),
            source=_typed(entry, "source", str, where),
            unit=_typed(entry, "unit", str, where),
            itemids=entry["itemids"],
            lower=_number(entry, "lower", -math.inf, where),
            upper=_number(entry, "upper", math.inf, where),
            lower_inclusive=_typed(entry, "lower_inclusive", bool, where, default=False),
            upper_inclusive=_typed(entry, "upper_inclusive", bool, where, default=False),
            fahrenheit_itemids=entry.get("fahrenheit_itemids", []),
            fahrenheit_lower=_number(entry, "fahrenheit_lower", -math.inf, where),
            fahrenheit_upper=_number(entry, "fahrenheit_upper", math.inf, where),
        )
    except FeatureSpecError as exc:  # the value's own rules (ranges, °F items): add the file
        raise FeatureSpecError(f"{origin}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise FeatureSpecError(f"{where} is invalid: {exc}") from None


def _check_entry(entry: Mapping[str, Any], where: str) -> None:
    """The rules a user's file most often breaks, each named by its field: itemids, source."""
    for key in ("itemids", "fahrenheit_itemids"):
        ids = entry.get(key, [])
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise FeatureSpecError(f"{where}: {key} must be a list of integers")
    if not entry["itemids"]:
        raise FeatureSpecError(f"{where}: itemids is empty; list at least one itemid")
    name = entry["name"]
    if isinstance(name, str) and not NAME.fullmatch(name):
        raise FeatureSpecError(
            f"{where}: name must be 1–40 letters, digits or _ starting with a letter (it names a column and a "
            f"setting), got {name!r}"
        )
    source = entry["source"]
    if source not in SOURCES:
        tables = ", ".join(f"{name} ({table})" for name, table in SOURCE_TABLES.items())
        raise FeatureSpecError(f"{where}: source must be one of {tables}, got {source!r}")


def _check_file(features: Sequence[Feature], origin: str) -> None:
    """Rules across entries: 19 features, each name once, each itemid feeding one feature."""
    if len(features) != N_FEATURES:
        raise FeatureSpecError(
            f"{origin}: defines {len(features)} features; the model needs exactly {N_FEATURES} [[feature]] tables"
        )
    names: dict[str, int] = {}
    owners: dict[int, int] = {}
    for position, feature in enumerate(features, start=1):
        where = f"{origin}: feature #{position} ({feature.name!r})"
        if feature.name in names:
            raise FeatureSpecError(
                f"{where}: name is already used by feature #{names[feature.name]}; give each feature its own name"
            )
        names[feature.name] = position
        for itemid in feature.all_itemids:
            if itemid in owners:
                first = owners[itemid]
                raise FeatureSpecError(
                    f"{where}: itemid {itemid} already feeds feature #{first} ({features[first - 1].name!r}); "
                    "an itemid may feed one feature only"
                )
            owners[itemid] = position


def _typed(entry: Mapping[str, Any], key: str, kind: type[T], where: str, *, default: T | None = None) -> T:
    value = entry.get(key, default)
    if not isinstance(value, kind):
        raise FeatureSpecError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    return value


def _number(entry: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FeatureSpecError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@attrs.frozen
class FeatureDefinitions:
    """A features file as a run stores it: its name, SHA-256 and whole text.

    Runs keep the text itself, not a path, so that later stages and reports read the definitions
    the data were made with even after the file changed or on another machine.
    """

    name: str
    sha256: str
    text: str = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if _sha256_text(self.text) != self.sha256:
            raise ValidationError(
                f"FeatureDefinitions of {self.name}: the stored text does not match its SHA-256 {self.sha256[:12]}…; "
                "the run was altered — re-run `lstm-adv query`"
            )

    @classmethod
    def from_text(cls, text: str, *, name: str) -> FeatureDefinitions:
        """Validate the TOML ``text`` of a features file (a :class:`FeatureSpecError` naming ``name``) and keep it."""
        FeatureSpec.from_toml(text, origin=name)
        return cls(name=name, sha256=_sha256_text(text), text=text)

    def to_spec(self) -> FeatureSpec:
        """The validated :class:`FeatureSpec` of the text."""
        return FeatureSpec.from_toml(self.text, origin=self.name)
