"""FeatureSpec: the shipped definitions load, and bad definitions are rejected at load."""

from __future__ import annotations

import pytest

from lstm_adv.domain.errors import FeatureSpecError
from lstm_adv.domain.features import FeatureSpec
from lstm_adv.resources import load_feature_spec, resource

EXPECTED = (
    "potassium",
    "calcium",
    "ph",
    "pco2",
    "lactate",
    "albumin",
    "bun",
    "creatinine",
    "sodium",
    "bicarbonate",
    "platelet",
    "glucose",
    "magnesium",
    "heartrate",
    "sysbp",
    "diasbp",
    "tempc",
    "resprate",
    "spo2",
)


def _text() -> str:
    return resource("features.toml").read_text(encoding="utf-8")


def test_shipped_spec_has_the_19_features_in_order() -> None:
    """The shipped file defines the 19 features in model order with their sources."""
    spec = load_feature_spec()
    assert spec.names == EXPECTED
    assert [f.name for f in spec.by_source("bloodgas")] == ["potassium", "calcium", "ph", "pco2", "lactate"]
    assert len(spec.by_source("vital")) == 6
    assert spec.features[spec.index("tempc")].fahrenheit_itemids == (678, 223761)
    assert spec.features[spec.index("sysbp")].itemids == (51, 442, 455, 6701, 220179, 220050)


def test_ranges_follow_the_spec_bounds() -> None:
    """Open and closed range ends behave as the feature table writes them."""
    spec = load_feature_spec()
    spo2 = spec.features[spec.index("spo2")]
    heartrate = spec.features[spec.index("heartrate")]
    assert spo2.in_range(100.0)
    assert not spo2.in_range(0.0)
    assert not spo2.in_range(100.1)
    assert heartrate.in_range(299.9)
    assert not heartrate.in_range(300.0)


def test_wrong_count_is_rejected() -> None:
    """A file with 18 features fails validation with the count in the message."""
    text = _text()
    cut = text[: text.rindex("[[feature]]")]
    with pytest.raises(FeatureSpecError) as info:
        FeatureSpec.from_toml(cut, origin="f.toml")
    assert str(info.value) == "FeatureSpec must define 19 features, got 18"


def test_duplicate_itemid_is_rejected() -> None:
    """An itemid used by two features is named."""
    text = _text().replace("itemids = [50808]", "itemids = [50822]")
    with pytest.raises(FeatureSpecError) as info:
        FeatureSpec.from_toml(text, origin="f.toml")
    assert str(info.value) == "FeatureSpec itemid 50822 is used by both 'potassium' and 'calcium'"


def test_unknown_key_and_bad_types_are_named() -> None:
    """Unknown keys and non-integer itemids point at the feature entry."""
    with pytest.raises(FeatureSpecError) as info:
        FeatureSpec.from_toml(_text().replace('unit = "mEq/L"', 'units = "mEq/L"', 1), origin="f.toml")
    assert str(info.value) == "f.toml: feature #1 has unknown key(s): units"
    with pytest.raises(FeatureSpecError) as info:
        FeatureSpec.from_toml(_text().replace("itemids = [50822]", 'itemids = ["50822"]'), origin="f.toml")
    assert str(info.value) == "f.toml: feature #1 ('potassium'): itemids must be a list of integers"


def test_invalid_range_and_toml() -> None:
    """lower >= upper and broken TOML are rejected."""
    bad_range = _text().replace("lower = 0.0\nupper = 10.0", "lower = 10.0\nupper = 0.0")
    with pytest.raises(FeatureSpecError, match=r"feature 'albumin' must have lower < upper"):
        FeatureSpec.from_toml(bad_range)
    with pytest.raises(FeatureSpecError, match=r"not valid TOML"):
        FeatureSpec.from_toml("[[feature]\n")
