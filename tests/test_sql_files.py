"""The SQL files: headers, no itemids of their own, parameters the query stage supplies, columns it checks."""

from __future__ import annotations

import math
import re

import pytest

from lstm_adv.config import CohortConfig
from lstm_adv.domain.features import FeatureSpec
from lstm_adv.query import SOURCE_COLUMNS, cohort_params, item_params, load_sql
from lstm_adv.resources import SHIPPED_FEATURES, load_feature_spec, read_feature_definitions

SQL_FILES = ("stays", "cohort", "vitals", "labs", "bloodgas")
EVENT_FILES = {"vitals": "vital", "labs": "lab", "bloodgas": "bloodgas"}
# the alias each SQL file gives a MIMIC-III table
ALIASES = {"pat": "patients", "adm": "admissions", "ie": "icustays", "ce": "chartevents", "le": "labevents"}
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _body(name: str) -> str:
    """The SQL of a file without its header comment (what is sent to the server)."""
    lines = load_sql(name).splitlines()
    return "\n".join(lines[next(i for i, line in enumerate(lines) if not line.startswith("--")) :])


def _specs() -> list[FeatureSpec]:
    return [read_feature_definitions(name).to_spec() for name in SHIPPED_FEATURES]


@pytest.mark.parametrize("name", SQL_FILES)
def test_every_file_opens_with_a_header_comment_naming_its_relation(name: str) -> None:
    """Each SQL file starts with a comment block that names the relation, its row unit and its parameters."""
    lines = load_sql(name).splitlines()
    header = lines[: next(i for i, line in enumerate(lines) if not line.startswith("--"))]
    assert header[0].startswith(f"-- {name}: ")
    assert any("One row per" in line for line in header)
    assert any("Parameters:" in line for line in header)


@pytest.mark.parametrize("name", SQL_FILES)
def test_no_file_holds_an_itemid(name: str) -> None:
    """No itemid of either shipped definition appears in the SQL: itemids arrive as parameters."""
    itemids = {itemid for spec in _specs() for feature in spec.features for itemid in feature.all_itemids}
    assert not [i for i in sorted(itemids) if re.search(rf"(?<!\d){i}(?!\d)", load_sql(name))]


@pytest.mark.parametrize("name", SQL_FILES)
def test_each_file_uses_only_parameters_the_query_stage_supplies(name: str) -> None:
    """Every placeholder of a file's SQL is a cohort setting or (event files) a column of its items."""
    supplied = set(cohort_params(CohortConfig()))
    if name in EVENT_FILES:
        supplied |= set(item_params(load_feature_spec(), EVENT_FILES[name]))
    assert set(PLACEHOLDER.findall(_body(name))) <= supplied


@pytest.mark.parametrize("source", sorted(set(EVENT_FILES.values())))
def test_item_parameters_restate_the_feature_definitions(source: str) -> None:
    """Each itemid of a source appears once with its feature, °F flag and range (±inf as no bound)."""
    for spec in _specs():
        params = item_params(spec, source)
        rows = list(zip(*params.values(), strict=True))
        expected = []
        for feature in spec.by_source(source):
            bounds = [None if math.isinf(b) else b for b in (feature.lower, feature.upper)]
            inclusive = [feature.lower_inclusive, feature.upper_inclusive]
            expected += [(i, feature.name, False, *bounds, *inclusive) for i in feature.itemids]
            f_bounds = [None if math.isinf(b) else b for b in (feature.fahrenheit_lower, feature.fahrenheit_upper)]
            expected += [(i, feature.name, True, *f_bounds, False, False) for i in feature.fahrenheit_itemids]
        assert rows == expected


def test_serum_definitions_take_potassium_and_glucose_from_two_items() -> None:
    """features_serum.toml feeds potassium from 50971 and 50822 and glucose from 50931 and 50809 (all labevents)."""
    spec = read_feature_definitions("features_serum.toml").to_spec()
    lab = item_params(spec, "lab")
    assert {i: f for i, f in zip(lab["itemid"], lab["feature"], strict=True) if f in ("potassium", "glucose")} == {
        50971: "potassium",
        50822: "potassium",
        50931: "glucose",
        50809: "glucose",
    }
    assert 50822 not in item_params(spec, "bloodgas")["itemid"]
    assert spec.names == load_feature_spec().names


def test_declared_source_columns_are_exactly_those_the_sql_reads() -> None:
    """The columns checked before export (query.SOURCE_COLUMNS) equal the table.column references of the SQL."""
    read = {
        (ALIASES[alias], column)
        for name in SQL_FILES
        for alias, column in re.findall(r"\b(pat|adm|ie|ce|le)\.(\w+)", _body(name))
    }
    declared = {(table, column) for table, columns in SOURCE_COLUMNS.items() for column in columns}
    assert read == declared


def test_sql_files_use_no_bare_percent_signs() -> None:
    """A ``%`` outside a ``%(name)s`` parameter would break parameter binding, even in a comment."""
    for name in SQL_FILES:
        assert re.search(r"%(?!\(\w+\)s)", load_sql(name)) is None, name
