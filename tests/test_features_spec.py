"""FeatureSpec: the shipped definitions load, and bad definitions are rejected at load."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lstm_adv.domain.errors import FeatureSpecError, ValidationError
from lstm_adv.domain.features import FeatureDefinitions, FeatureSpec
from lstm_adv.resources import load_feature_spec, read_feature_definitions, resource
from lstm_adv.results.converter import structure, unstructure

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
    assert str(info.value) == "f.toml: defines 18 features; the model needs exactly 19 [[feature]] tables"


def test_duplicate_itemid_is_rejected() -> None:
    """An itemid used by two features is named."""
    text = _text().replace("itemids = [50808]", "itemids = [50822]")
    with pytest.raises(FeatureSpecError) as info:
        FeatureSpec.from_toml(text, origin="f.toml")
    assert str(info.value) == (
        "f.toml: feature #2 ('calcium'): itemid 50822 already feeds feature #1 ('potassium'); "
        "an itemid may feed one feature only"
    )


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


USER_FILE_ERRORS = [
    (
        "unknown itemid type",
        ('source = "bloodgas"', 'source = "serum"'),
        "my.toml: feature #1 ('potassium'): source must be one of bloodgas (labevents), lab (labevents), "
        "vital (chartevents), got 'serum'",
    ),
    (
        "duplicate feature name",
        ('name = "ph"', 'name = "calcium"'),
        "my.toml: feature #3 ('calcium'): name is already used by feature #2; give each feature its own name",
    ),
    (
        "empty itemid list",
        ("itemids = [50820]", "itemids = []"),
        "my.toml: feature #3 ('ph'): itemids is empty; list at least one itemid",
    ),
    (
        "a NUL in a name",
        ('name = "ph"', 'name = "p\\u0000h"'),
        "my.toml: feature #3 ('p\\x00h'): name must be 1–40 letters, digits or _ starting with a letter (it names a "
        "column and a setting), got 'p\\x00h'",
    ),
    (
        "an empty name",
        ('name = "ph"', 'name = ""'),
        "my.toml: feature #3 (''): name must be 1–40 letters, digits or _ starting with a letter (it names a column "
        "and a setting), got ''",
    ),
]


@pytest.mark.parametrize(("case", "edit", "message"), USER_FILE_ERRORS, ids=[e[0] for e in USER_FILE_ERRORS])
def test_a_user_file_is_validated_at_load_with_one_line_naming_feature_and_field(
    tmp_path: Path, case: str, edit: tuple[str, str], message: str
) -> None:
    """A user's features file with a common mistake fails at load with one line naming the file, feature and field."""
    path = tmp_path / "my.toml"
    path.write_text(_text().replace(*edit, 1), encoding="utf-8")
    with pytest.raises(FeatureSpecError) as info:
        read_feature_definitions(str(path))
    assert str(info.value) == message.replace("my.toml", str(path))


def test_definitions_keep_name_text_and_checksum(tmp_path: Path) -> None:
    """A user file is kept whole with its SHA-256; the shipped files are found by name; a bad path is one line."""
    path = tmp_path / "mine.toml"
    path.write_text(_text(), encoding="utf-8")
    mine = read_feature_definitions(path)
    assert (mine.name, mine.text) == (str(path), _text())
    assert mine.sha256 == hashlib.sha256(_text().encode()).hexdigest()
    assert mine.to_spec() == load_feature_spec()
    assert read_feature_definitions() == read_feature_definitions("features.toml")
    assert read_feature_definitions("features_serum.toml").to_spec().features[0].itemids == (50971, 50822)
    with pytest.raises(FeatureSpecError) as info:
        read_feature_definitions(tmp_path / "none.toml")
    assert str(info.value) == (
        f"features file {tmp_path / 'none.toml'} does not exist; give the path of a TOML file in the format of "
        "lstm_adv/resources/features.toml, or a shipped one: features.toml, features_serum.toml"
    )


def test_stored_definitions_round_trip_and_refuse_altered_text() -> None:
    """Definitions survive the manifest converter; text that no longer matches its SHA-256 is refused."""
    definitions = read_feature_definitions("features_serum.toml")
    assert structure(unstructure(definitions), FeatureDefinitions) == definitions
    with pytest.raises(ValidationError, match=r"the stored text does not match its SHA-256"):
        FeatureDefinitions(name="x.toml", sha256=definitions.sha256, text=definitions.text + "# edited\n")
