"""Configuration: shipped defaults < user file < command-line overrides, with exact error messages."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from lstm_adv.config import Config
from lstm_adv.domain.errors import ConfigError
from lstm_adv.results.config_file import config_as_dict, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "user.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_typed_classes() -> None:
    """The shipped TOML sets every field to the same default as the attrs classes."""
    assert load_config() == Config()


def test_user_file_overrides_defaults_and_options_override_the_file(tmp_path: Path) -> None:
    """A user file changes only the keys it names; CLI overrides win over it; None overrides are ignored."""
    user = _write(tmp_path, "[cohort]\nwindow_hours = 24\nmin_age_years = 16\n")
    config = load_config(user, {"cohort.window_hours": 12, "database.schema": None})
    assert config.cohort.window_hours == 12
    assert config.cohort.min_age_years == 16.0
    assert config.database.schema == "mimiciii"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    """A misspelt key is an error naming the dotted key and the keys that exist."""
    user = _write(tmp_path, "[cohort]\nwindow_hour = 24\n")
    with pytest.raises(ConfigError) as info:
        load_config(user)
    assert str(info.value) == (
        f"{user}: unknown key 'cohort.window_hour'; known keys here: features_file, lookback_hours, min_age_years, "
        "min_hospital_los_days, min_icu_los_days, window_hours, window_start"
    )


def test_unknown_section_is_named(tmp_path: Path) -> None:
    """A section that does not exist is an unknown key too, listed against the real sections."""
    user = _write(tmp_path, "[cohrt]\nwindow_hours = 24\n")
    with pytest.raises(ConfigError) as info:
        load_config(user)
    sections = ", ".join(sorted(field.name for field in attrs.fields(Config)))
    assert str(info.value) == f"{user}: unknown key 'cohrt'; known keys here: {sections}"
    assert "cohort" in sections


def test_wrong_type_is_named(tmp_path: Path) -> None:
    """A value of the wrong type is an error naming the key, the expected type and the value."""
    user = _write(tmp_path, '[cohort]\nwindow_hours = "48"\n')
    with pytest.raises(ConfigError) as info:
        load_config(user)
    assert str(info.value) == f"{user}: key 'cohort.window_hours' must be an integer, got '48'"


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    """TOML booleans are not accepted where a number is expected."""
    user = _write(tmp_path, "[embedded]\nport = true\n")
    with pytest.raises(ConfigError, match=r"key 'embedded.port' must be an integer, got True"):
        load_config(user)


def test_section_must_be_a_table(tmp_path: Path) -> None:
    """A section given as a scalar is rejected."""
    user = _write(tmp_path, "cohort = 3\n")
    with pytest.raises(ConfigError, match=r"cohort must be a table"):
        load_config(user)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    """A missing file and a file that is not TOML each give one clear line."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value) == f"config file {tmp_path / 'nope.toml'} does not exist"
    bad = _write(tmp_path, "[cohort\n")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_config(bad)


def test_effective_config_is_plain_data() -> None:
    """The manifest form of the configuration is nested plain dicts."""
    data = config_as_dict(load_config())
    assert data["cohort"]["window_hours"] == 48
    assert data["database"]["schema"] == "mimiciii"


def test_manifest_form_equals_its_json_round_trip() -> None:
    """The stored configuration compares equal after a trip through a manifest (tuples become lists)."""
    data = config_as_dict(load_config())
    assert json.loads(json.dumps(data)) == data
    assert data["tune_model"]["dropout"] == [0.0, 0.5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\ngrad_clip_norm = nan\n", "model.grad_clip_norm must be finite and ≥ 0, got nan"),
        ("[model]\nlearning_rate = inf\n", "model.learning_rate must be finite and in (0, 10], got inf"),
        ("[preprocess]\ntrain_fraction = nan\n", "preprocess.train_fraction must be finite and in (0, 1], got nan"),
        (
            "[model]\nimbalance = 'smote'\n",
            "{user}: key 'model.imbalance' must be one of weighted_sampling, class_weighted_loss, none; got 'smote'",
        ),
        (
            "[tune_model]\ndropout = [0.3, 0.1]\n",
            "tune_model.dropout must be [low, high] of finite numbers with 0 ≤ low ≤ high ≤ 0.99; got [0.3, 0.1]",
        ),
        ("[tune_model]\ndropout = [0.1]\n", "{user}: key 'tune_model.dropout' must be a list of 2 values"),
        ("[pgd]\nstep_size = 'fast'\n", "{user}: key 'pgd.step_size' must be a number or 'auto'"),
        ("[pgd]\ntarget = 2\n", "{user}: key 'pgd.target' must be one of none, 0, 1; got 2"),
        ("[embedded]\nport = 70000\n", "embedded.port must be a TCP port in 0..65535 (0 picks a free one), got 70000"),
        ("[attack]\nhours = [5, 2]\n", "attack.hours must be [first, last) with 0 <= first < last <= 48; got [5, 2]"),
        ("[robustness]\neps = [0.1, nan]\n", "robustness.eps values must be finite numbers ≥ 0, got nan"),
        ("[analysis]\ndense_l0_share = 1.5\n", "analysis.dense_l0_share must be finite and in (0, 1], got 1.5"),
        ("[pgd]\nstep_size = nan\n", 'pgd.step_size must be a finite number > 0 or "auto" (2.5·ε/iterations), got nan'),
        (
            "[tune_model]\ndropout = [0.1, nan]\n",
            "tune_model.dropout must be [low, high] of finite numbers with 0 ≤ low ≤ high ≤ 0.99; got [0.1, nan]",
        ),
        (
            "[tune_model]\nlearning_rate = [nan, 0.1]\n",
            "tune_model.learning_rate must be [low, high] of finite numbers with 0 < low ≤ high ≤ 10; got [nan, 0.1]",
        ),
        (
            "[tune_attack]\nkappa = [0.0, nan]\n",
            "tune_attack.kappa must be [low, high] of finite numbers with 0 ≤ low ≤ high; got [0.0, nan]",
        ),
        (
            "[model]\nhidden_size = 1000000000000000\n",
            "model.hidden_size must be an integer ≤ 16,384, got 1000000000000000",
        ),
        (
            "[model]\nseed = 99999999999999999999\n",
            "model.seed must be an integer ≤ 2,147,483,647, got 99999999999999999999",
        ),
        (
            "[embedded]\nstart_timeout_s = 100000000000000000000000\n",
            "embedded.start_timeout_s must be an integer ≤ 86,400, got 100000000000000000000000",
        ),
        ("[attack]\ncells = 'some'\n", "{user}: key 'attack.cells' must be one of record, observed, all; got 'some'"),
        (
            "[attack]\nmax_change = {sysbp = -3}\n",
            "attack.max_change.sysbp must be a number ≥ 0 in the feature's clinical unit (inf: unbounded), got -3.0",
        ),
        (
            "[attack]\nmax_change = {sysbp = nan}\n",
            "attack.max_change.sysbp must be a number ≥ 0 in the feature's clinical unit (inf: unbounded), got nan",
        ),
    ],
)
def test_bad_values_are_refused_when_the_config_is_loaded(tmp_path: Path, text: str, message: str) -> None:
    """Every setting is checked at load: non-finite and out-of-range numbers and unknown choices name the key."""
    user = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(user)
    assert str(info.value) == message.format(user=user)


def test_pgd_placeholders_are_explicit_values() -> None:
    """The automatic PGD step and untargeted PGD are the words "auto" and "none", not magic numbers."""
    config = load_config(None, {"pgd.step_size": 0.01, "pgd.target": 0})
    assert config.pgd.step_size == 0.01
    assert config.pgd.target_class == 0
    assert load_config().pgd.step_size == "auto"
    assert load_config().pgd.target_class is None


def test_window_start_and_the_new_data_settings_are_checked_at_load() -> None:
    """cohort.window_start is "all" by default or "included"; other values and wrong types are named."""
    assert load_config().cohort.window_start == "all"
    assert load_config(overrides={"cohort.window_start": "included"}).cohort.window_start == "included"
    assert load_config().preprocess.drop_unmeasured_vitals is False
    assert load_config().cohort.features_file == ""
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"cohort.window_start": "first"})
    assert str(info.value) == "configuration: key 'cohort.window_start' must be one of all, included; got 'first'"
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"preprocess.drop_unmeasured_vitals": "yes"})
    assert str(info.value) == (
        "configuration: key 'preprocess.drop_unmeasured_vitals' must be true or false, got 'yes'"
    )


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """A config file in another encoding names the file and the byte, and says to save it as UTF-8."""
    path = tmp_path / "latin1.toml"
    path.write_bytes("[model]\n# Größe\nhidden_size = 32\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"config file {path} is not UTF-8 text (byte 12: invalid start byte); save it as UTF-8")
