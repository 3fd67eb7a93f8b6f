"""The named parameters of the SQL in ``sql/``: cohort settings, and the items of the feature definitions.

Itemids, the feature each feeds, its valid range and whether it is a Fahrenheit item reach the SQL
as parameters (one array per column), never as text spliced into the SQL: the files in ``sql/``
hold no itemid, and a user's feature file changes what they read without changing them.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from lstm_adv.config import CohortConfig
from lstm_adv.domain.features import Feature, FeatureSpec

# One array parameter per column; row i of every array describes the same itemid.
ITEM_COLUMNS = ("itemid", "feature", "fahrenheit", "lower_bound", "upper_bound", "lower_inclusive", "upper_inclusive")

ItemRow = tuple[int, str, bool, float | None, float | None, bool, bool]


def cohort_params(cohort: CohortConfig) -> dict[str, Any]:
    """The named parameters of the SQL files (``%(min_age_years)s`` …), from the cohort settings."""
    return attrs.asdict(cohort)


def item_params(spec: FeatureSpec, source: str) -> dict[str, list[Any]]:
    """The ``items`` arrays of one source's SQL file (``vital``, ``lab`` or ``bloodgas``), in model order.

    Keys are :data:`ITEM_COLUMNS`; a bound of ±inf is ``None`` (no bound). A Fahrenheit item carries
    its own open range in °F.
    """
    rows = [row for feature in spec.by_source(source) for row in _item_rows(feature)]
    return {column: [row[i] for row in rows] for i, column in enumerate(ITEM_COLUMNS)}


def _item_rows(feature: Feature) -> list[ItemRow]:
    native = [
        (
            i,
            feature.name,
            False,
            _bound(feature.lower),
            _bound(feature.upper),
            feature.lower_inclusive,
            feature.upper_inclusive,
        )
        for i in feature.itemids
    ]
    fahrenheit = [
        (i, feature.name, True, _bound(feature.fahrenheit_lower), _bound(feature.fahrenheit_upper), False, False)
        for i in feature.fahrenheit_itemids
    ]
    return native + fahrenheit


def _bound(value: float) -> float | None:
    return None if math.isinf(value) else value
