"""The SQL files and the feature definitions (resources/features.toml) must say the same thing."""

from __future__ import annotations

import math
import re

import pytest

from lstm_adv.domain.features import Feature
from lstm_adv.query import load_sql
from lstm_adv.resources import load_feature_spec

SQL_FILES = ("stays", "cohort", "vitals", "labs", "bloodgas")
EVENT_FILES = {"vitals": "vital", "labs": "lab", "bloodgas": "bloodgas"}
ITEM_ROW = re.compile(r"^\s*\((\d+), '(\w+)'(?:, (true|false))?\),?\s*--\s*(\S.*)$", re.MULTILINE)
IN_LIST = re.compile(r"itemid IN \(([\d,\s]+)\)")


def _items(name: str) -> dict[int, tuple[str, bool]]:
    """itemid -> (feature, is Fahrenheit) from the file's annotated ``items`` VALUES rows."""
    return {int(i): (feat, flag == "true") for i, feat, flag, _label in ITEM_ROW.findall(load_sql(name))}


def _range_text(feature: Feature, column: str, *, fahrenheit: bool = False) -> str:
    lower, upper = feature.lower, feature.upper
    if fahrenheit:
        lower, upper = feature.fahrenheit_lower, feature.fahrenheit_upper
    parts = [f"{column} {'>=' if feature.lower_inclusive else '>'} {lower:g}"]
    if not math.isinf(upper):
        parts.append(f"{column} {'<=' if feature.upper_inclusive else '<'} {upper:g}")
    condition = f"feature = '{feature.name}'" + (" AND fahrenheit" if fahrenheit else "")
    return f"WHEN {condition} THEN {' AND '.join(parts)}\n"


@pytest.mark.parametrize("name", SQL_FILES)
def test_every_file_opens_with_a_header_comment_naming_its_relation(name: str) -> None:
    """Each SQL file starts with a comment block that names the relation and its row unit."""
    lines = load_sql(name).splitlines()
    header = lines[: next(i for i, line in enumerate(lines) if not line.startswith("--"))]
    assert header[0].startswith(f"-- {name}: ")
    assert any("One row per" in line for line in header)
    assert any("Parameters:" in line for line in header)


@pytest.mark.parametrize(("name", "source"), EVENT_FILES.items())
def test_itemids_in_each_file_match_the_feature_definitions(name: str, source: str) -> None:
    """Every feature of a source maps exactly its features.toml itemids (°F ones flagged) in that source's file."""
    expected = {
        itemid: (f.name, itemid in f.fahrenheit_itemids)
        for f in load_feature_spec().by_source(source)
        for itemid in f.all_itemids
    }
    assert _items(name) == expected


@pytest.mark.parametrize("name", EVENT_FILES)
def test_constant_itemid_filters_list_exactly_the_files_items(name: str) -> None:
    """The literal ``itemid IN (…)`` filters name the same itemids as the file's annotated item table."""
    lists = [{int(i) for i in match.split(",")} for match in IN_LIST.findall(load_sql(name))]
    assert lists
    assert all(ids == set(_items(name)) for ids in lists)


@pytest.mark.parametrize(("name", "source"), EVENT_FILES.items())
def test_value_ranges_in_each_file_match_the_feature_definitions(name: str, source: str) -> None:
    """Each feature's valid range appears in its file exactly as features.toml defines it."""
    text = load_sql(name)
    column = "valuenum" if name == "vitals" else "value"
    for feature in load_feature_spec().by_source(source):
        assert _range_text(feature, column) in text, feature.name
        if feature.fahrenheit_itemids:
            assert _range_text(feature, column, fahrenheit=True) in text, feature.name


def test_every_feature_has_exactly_one_source_file() -> None:
    """The three event files together cover all 19 features, each once."""
    covered = [feature for name in EVENT_FILES for feature in {feat for feat, _ in _items(name).values()}]
    assert sorted(covered) == sorted(load_feature_spec().names)


def test_sql_files_use_no_bare_percent_signs() -> None:
    """A ``%`` outside a ``%(name)s`` parameter would break parameter binding, even in a comment."""
    for name in SQL_FILES:
        assert re.search(r"%(?!\(\w+\)s)", load_sql(name)) is None, name
