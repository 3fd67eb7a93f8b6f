"""The query stage against a real PostgreSQL loaded with the MIMIC-III demo, checked against the demo CSVs.

Every expected value here is computed independently with pandas from the shipped CSV files,
following the published feature table directly (itemids and ranges are restated below, not read from the package).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.query import run_cohort_query
from lstm_adv.resources import resource
from lstm_adv.results.artifacts import read_stays
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore

pytestmark = pytest.mark.db

DEMO = Path(str(resource("mimic3_demo")))
YEAR_S = 365.2425 * 86400
HOUR = pd.Timedelta(hours=1)
INF = math.inf

# itemid -> (feature, lower (exclusive), upper, upper inclusive, Fahrenheit)
VITAL_ITEMS: dict[int, tuple[str, float, float, bool, bool]] = {
    **{i: ("heartrate", 0, 300, False, False) for i in (211, 220045)},
    **{i: ("sysbp", 0, 400, False, False) for i in (51, 442, 455, 6701, 220179, 220050)},
    **{i: ("diasbp", 0, 300, False, False) for i in (8368, 8440, 8441, 8555, 220180, 220051)},
    **{i: ("tempc", 10, 50, False, False) for i in (676, 223762)},
    **{i: ("tempc", 70, 120, False, True) for i in (678, 223761)},
    **{i: ("resprate", 0, 70, False, False) for i in (615, 618, 220210, 224690)},
    **{i: ("spo2", 0, 100, True, False) for i in (646, 220277)},
}
LAB_ITEMS: dict[int, tuple[str, float, float, bool, bool]] = {
    50862: ("albumin", 0, 10, True, False),
    51006: ("bun", 0, 300, True, False),
    50912: ("creatinine", 0, 150, True, False),
    50983: ("sodium", 0, 200, True, False),
    50882: ("bicarbonate", 0, 10000, True, False),
    51265: ("platelet", 0, 10000, True, False),
    50931: ("glucose", 0, 10000, True, False),
    50960: ("magnesium", 0, INF, True, False),
}
BLOODGAS_ITEMS: dict[int, tuple[str, float, float, bool, bool]] = {
    50822: ("potassium", 0, INF, True, False),
    50808: ("calcium", 0, INF, True, False),
    50820: ("ph", 0, INF, True, False),
    50818: ("pco2", 0, INF, True, False),
    50813: ("lactate", 0, INF, True, False),
}
EVENT_SCHEMA = pa.schema(
    [("hadm_id", pa.int64()), ("charttime", pa.timestamp("us")), ("feature", pa.string()), ("value", pa.float64())]
)
CONTRACT_SCHEMAS = {
    "stays": pa.schema(
        [
            ("subject_id", pa.int64()),
            ("hadm_id", pa.int64()),
            ("icustay_id", pa.int64()),
            ("intime", pa.timestamp("us")),
            ("outtime", pa.timestamp("us")),
            ("admittime", pa.timestamp("us")),
            ("dischtime", pa.timestamp("us")),
            ("age_years", pa.float64()),
            ("icu_los_days", pa.float64()),
            ("hospital_los_days", pa.float64()),
            ("hospital_expire_flag", pa.int64()),
            ("adult", pa.bool_()),
            ("hospital_los_ok", pa.bool_()),
            ("icu_los_ok", pa.bool_()),
            ("included", pa.bool_()),
        ]
    ),
    "admissions": pa.schema(
        [
            ("subject_id", pa.int64()),
            ("hadm_id", pa.int64()),
            ("window_start", pa.timestamp("us")),
            ("n_icustays", pa.int64()),
            ("first_icustay_id", pa.int64()),
            ("age_years", pa.float64()),
            ("label", pa.int64()),
        ]
    ),
    "vitals": EVENT_SCHEMA,
    "labs": EVENT_SCHEMA,
    "bloodgas": EVENT_SCHEMA,
}


def _csv(table: str, dates: list[str], columns: list[str] | None = None) -> pd.DataFrame:
    return pd.read_csv(DEMO / f"{table}.csv.gz", usecols=columns, parse_dates=dates)


def _parquet(run: Run, name: str) -> pd.DataFrame:
    return pq.read_table(run.file(f"{name}.parquet")).to_pandas()


# ---------------------------------------------------------------- independent computation (the oracle)


@pytest.fixture(scope="module")
def csv_stays() -> pd.DataFrame:
    """Every ICU stay with age, lengths of stay and the three inclusion rules, from the CSVs."""
    icu = _csv("ICUSTAYS", ["intime", "outtime"], ["subject_id", "hadm_id", "icustay_id", "intime", "outtime"])
    adm = _csv("ADMISSIONS", ["admittime", "dischtime"], ["hadm_id", "admittime", "dischtime", "hospital_expire_flag"])
    pat = _csv("PATIENTS", ["dob"], ["subject_id", "dob"])
    stays = icu.merge(adm, on="hadm_id").merge(pat, on="subject_id")
    age = (stays["intime"] - stays["dob"]).dt.total_seconds() / YEAR_S
    stays["age_years"] = age.where(age < 300, 90.0)
    stays["icu_los_days"] = (stays["outtime"] - stays["intime"]) / pd.Timedelta(days=1)
    stays["hospital_los_days"] = (stays["dischtime"] - stays["admittime"]) / pd.Timedelta(days=1)
    stays["adult"] = stays["age_years"] >= 18
    stays["hospital_los_ok"] = stays["hospital_los_days"] >= 1
    stays["icu_los_ok"] = stays["icu_los_days"] >= 1
    stays["included"] = stays["adult"] & stays["hospital_los_ok"] & stays["icu_los_ok"]
    return stays.sort_values("icustay_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def csv_admissions(csv_stays: pd.DataFrame) -> pd.DataFrame:
    """One row per admission with an included stay; its window starts at the earliest included intime."""
    included = csv_stays[csv_stays["included"]].sort_values(["intime", "icustay_id"])
    first = included.groupby("hadm_id").first()
    return pd.DataFrame(
        {
            "subject_id": first["subject_id"],
            "window_start": first["intime"],
            "n_icustays": included.groupby("hadm_id").size(),
            "first_icustay_id": first["icustay_id"],
            "age_years": first["age_years"],
            "label": first["hospital_expire_flag"],
        }
    ).reset_index()


def _windows(admissions: pd.DataFrame, window_hours: int = 48, lookback_hours: int = 24) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "hadm_id": admissions["hadm_id"],
            "subject_id": admissions["subject_id"],
            "start": admissions["window_start"] - lookback_hours * HOUR,
            "end": admissions["window_start"] + window_hours * HOUR,
        }
    )


def _apply_items(events: pd.DataFrame, items: dict[int, tuple[str, float, float, bool, bool]]) -> pd.DataFrame:
    """Name, range-check and convert measurements per the feature definitions; output in the contract's long format."""
    events = events[events["itemid"].isin(list(items)) & events["valuenum"].notna()].copy()
    table = pd.DataFrame.from_dict(
        items, orient="index", columns=["feature", "lower", "upper", "upper_inclusive", "fahrenheit"]
    )
    events = events.join(table, on="itemid")
    v = events["valuenum"]
    below = np.where(events["upper_inclusive"], v <= events["upper"], v < events["upper"])
    events = events[(v > events["lower"]) & below]
    value = events["valuenum"].where(~events["fahrenheit"].astype(bool), (events["valuenum"] - 32) / 1.8)
    out = pd.DataFrame(
        {"hadm_id": events["hadm_id"], "charttime": events["charttime"], "feature": events["feature"], "value": value}
    )
    return out.astype({"hadm_id": "int64"})


def _in_window(events: pd.DataFrame, windows: pd.DataFrame, on: str) -> pd.DataFrame:
    matched = events.merge(windows, on=on, suffixes=("_event", ""))
    return matched[(matched["charttime"] >= matched["start"]) & (matched["charttime"] < matched["end"])]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[["hadm_id", "charttime", "feature", "value"]].astype({"feature": object})
    frame = frame.astype({"charttime": "datetime64[us]"})
    return frame.sort_values(["hadm_id", "charttime", "feature", "value"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def chartevents() -> pd.DataFrame:
    """The demo's chartevents rows of the vital itemids."""
    columns = ["subject_id", "hadm_id", "itemid", "charttime", "valuenum", "error"]
    frame = _csv("CHARTEVENTS", ["charttime"], columns)
    return frame[frame["itemid"].isin(list(VITAL_ITEMS))]


@pytest.fixture(scope="module")
def csv_vitals(chartevents: pd.DataFrame, csv_admissions: pd.DataFrame) -> pd.DataFrame:
    """The expected vitals table: error rows dropped, in window, in range, °F converted."""
    valid = chartevents[chartevents["error"] != 1]
    return _sorted(_apply_items(_in_window(valid, _windows(csv_admissions), "hadm_id"), VITAL_ITEMS))


def _csv_labevents(admissions: pd.DataFrame, items: dict[int, tuple[str, float, float, bool, bool]]) -> pd.DataFrame:
    """Lab rows by hadm_id, plus rows without hadm_id attributed by subject and window."""
    labs = _csv("LABEVENTS", ["charttime"], ["subject_id", "hadm_id", "itemid", "charttime", "valuenum"])
    labs = labs[labs["itemid"].isin(list(items))]
    windows = _windows(admissions)
    by_hadm = _in_window(labs[labs["hadm_id"].notna()].drop(columns="subject_id"), windows, "hadm_id")
    by_subject = _in_window(labs[labs["hadm_id"].isna()].drop(columns="hadm_id"), windows, "subject_id")
    return _sorted(_apply_items(pd.concat([by_hadm, by_subject]), items))


# ---------------------------------------------------------------- the stage under test


@pytest.fixture(scope="module")
def query_run(demo_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One query run over the demo with the default configuration."""
    store = RunStore(tmp_path_factory.mktemp("query-runs"))
    return run_cohort_query(demo_dsn, schema="mimiciii", config=load_config(), store=store)


def test_flow_counts_match_an_independent_computation(query_run: Run, csv_stays: pd.DataFrame) -> None:
    """The stays left after each inclusion rule in turn, and the admissions they form, match the CSVs."""
    s = csv_stays
    expected = [
        {"step": "icu stays", "count": len(s)},
        {"step": "age >= 18", "count": int(s["adult"].sum())},
        {"step": "hospital stay >= 1 day", "count": int((s["adult"] & s["hospital_los_ok"]).sum())},
        {"step": "icu stay >= 1 day", "count": int(s["included"].sum())},
        {"step": "admissions", "count": s.loc[s["included"], "hadm_id"].nunique()},
    ]
    assert [{"step": s.step, "count": s.count} for s in query_run.manifest.summary.flow] == expected
    assert expected[0]["count"] == 136  # the demo has 136 ICU stays


def test_stays_match_the_csvs(query_run: Run, csv_stays: pd.DataFrame) -> None:
    """Every ICU stay is exported with the CSVs' ids, times, age (shifted ages as 90), lengths of stay and flags."""
    got = _parquet(query_run, "stays").sort_values("icustay_id").reset_index(drop=True)
    assert len(got) == len(csv_stays)
    for column in (
        "subject_id",
        "hadm_id",
        "icustay_id",
        "hospital_expire_flag",
        "adult",
        "hospital_los_ok",
        "icu_los_ok",
        "included",
    ):
        assert got[column].tolist() == csv_stays[column].tolist(), column
    for column in ("intime", "outtime", "admittime", "dischtime"):
        assert (got[column] == csv_stays[column]).all(), column
    for column in ("age_years", "icu_los_days", "hospital_los_days"):
        np.testing.assert_allclose(got[column], csv_stays[column], rtol=1e-12, err_msg=column)
    assert (got["age_years"] == 90.0).sum() == (csv_stays["age_years"] == 90.0).sum() > 0


def test_typed_stays_apply_the_same_inclusion_rules_as_the_sql(query_run: Run) -> None:
    """The query run's stays read back as Stay values meet the inclusion rules exactly where the SQL's flag is set."""
    stays = read_stays(query_run)
    flags = _parquet(query_run, "stays").dropna(subset=["intime", "outtime"]).set_index("icustay_id")["included"]
    rules = {"min_age_years": 18.0, "min_hospital_los_days": 1.0, "min_icu_los_days": 1.0}
    assert len(stays) == len(flags) > 100
    assert {s.icustay_id: s.meets(**rules) for s in stays} == flags.to_dict()


def test_admissions_match_the_csvs(query_run: Run, csv_admissions: pd.DataFrame) -> None:
    """Each sample admission has the CSVs' window start, stay count, first stay, age and label."""
    got = _parquet(query_run, "admissions").sort_values("hadm_id").reset_index(drop=True)
    expected = csv_admissions.sort_values("hadm_id").reset_index(drop=True)
    for column in ("subject_id", "hadm_id", "n_icustays", "first_icustay_id", "label"):
        assert got[column].tolist() == expected[column].tolist(), column
    assert (got["window_start"] == expected["window_start"]).all()
    np.testing.assert_allclose(got["age_years"], expected["age_years"], rtol=1e-12)


def test_vitals_match_an_independent_computation(query_run: Run, csv_vitals: pd.DataFrame) -> None:
    """The vitals table equals the CSV computation row for row (ids, times, feature names, values)."""
    got = _sorted(_parquet(query_run, "vitals"))
    assert len(got) == len(csv_vitals) > 0
    pd.testing.assert_frame_equal(got.drop(columns="value"), csv_vitals.drop(columns="value"))
    np.testing.assert_allclose(got["value"], csv_vitals["value"], rtol=1e-12)


def test_one_admissions_heart_rate_matches_the_csv(
    query_run: Run, chartevents: pd.DataFrame, csv_admissions: pd.DataFrame
) -> None:
    """One admission's heart rate in its export window is exactly the CSV's valid readings of items 211/220045."""
    admission = csv_admissions.sort_values("hadm_id").iloc[0]
    start = admission["window_start"]
    rows = chartevents[
        (chartevents["hadm_id"] == admission["hadm_id"])
        & chartevents["itemid"].isin([211, 220045])
        & (chartevents["error"] != 1)
        & (chartevents["charttime"] >= start - 24 * HOUR)
        & (chartevents["charttime"] < start + 48 * HOUR)
        & (chartevents["valuenum"] > 0)
        & (chartevents["valuenum"] < 300)
    ].sort_values(["charttime", "valuenum"])
    vitals = _parquet(query_run, "vitals")
    got = vitals[(vitals["hadm_id"] == admission["hadm_id"]) & (vitals["feature"] == "heartrate")]
    got = got.sort_values(["charttime", "value"])
    assert len(rows) > 24
    assert got["charttime"].tolist() == rows["charttime"].tolist()
    assert got["value"].tolist() == rows["valuenum"].tolist()


def test_fahrenheit_temperatures_are_converted_to_celsius(query_run: Run, chartevents: pd.DataFrame) -> None:
    """A reading of a °F item (678, 223761) is stored as (v - 32) / 1.8 at the same time."""
    vitals = _parquet(query_run, "vitals")
    temps = vitals[vitals["feature"] == "tempc"]
    fahrenheit = chartevents[chartevents["itemid"].isin([678, 223761]) & (chartevents["error"] != 1)]
    fahrenheit = fahrenheit[fahrenheit["hadm_id"].isin(temps["hadm_id"])]
    matched = fahrenheit.merge(temps, on=["hadm_id", "charttime"])
    matched = matched[np.isclose(matched["value"], (matched["valuenum"] - 32) / 1.8)]
    assert matched["itemid"].nunique() == 2  # both CareVue and MetaVision °F items were converted
    assert temps["value"].between(10, 50, inclusive="neither").all()


def test_rows_flagged_as_errors_are_dropped(
    query_run: Run, chartevents: pd.DataFrame, csv_admissions: pd.DataFrame
) -> None:
    """A chartevents reading with error = 1 inside a window never reaches the vitals table."""
    windows = _windows(csv_admissions)
    errors = _apply_items(_in_window(chartevents[chartevents["error"] == 1], windows, "hadm_id"), VITAL_ITEMS)
    valid = _apply_items(_in_window(chartevents[chartevents["error"] != 1], windows, "hadm_id"), VITAL_ITEMS)
    keys = ["hadm_id", "charttime", "feature", "value"]
    only_errors = errors.merge(valid[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    only_errors = only_errors[only_errors["_merge"] == "left_only"].drop(columns="_merge")
    assert len(only_errors) > 0  # the demo has such rows in the windows, so the check means something
    leaked = _parquet(query_run, "vitals").merge(only_errors[keys], on=keys)
    assert leaked.empty


@pytest.mark.parametrize(("name", "items"), [("labs", LAB_ITEMS), ("bloodgas", BLOODGAS_ITEMS)])
def test_lab_tables_match_an_independent_computation(
    query_run: Run, csv_admissions: pd.DataFrame, name: str, items: dict[int, tuple[str, float, float, bool, bool]]
) -> None:
    """Labs and blood gases equal the CSV computation, rows without hadm_id attributed by subject and window."""
    expected = _csv_labevents(csv_admissions, items)
    got = _sorted(_parquet(query_run, name))
    assert len(got) == len(expected) > 0
    pd.testing.assert_frame_equal(got.drop(columns="value"), expected.drop(columns="value"))
    np.testing.assert_allclose(got["value"], expected["value"], rtol=1e-12)


def test_lab_rows_without_hadm_id_are_attributed_to_the_admission_window(
    demo_dsn: str, tmp_path: Path, csv_admissions: pd.DataFrame
) -> None:
    """A labevents row without hadm_id counts for the subject's admission whose window holds its charttime."""
    admission = csv_admissions.sort_values("hadm_id").iloc[0]
    start = admission["window_start"]
    orphans = [(start - 2 * HOUR, 141.0), (start - 30 * HOUR, 142.0), (start + 47 * HOUR, 143.0), (start, 250.0)]
    rows = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {}::int, NULL::int, 50983, {}::timestamp, {}::float8").format(
            int(admission["subject_id"]), time.to_pydatetime(), value
        )
        for time, value in orphans
    )
    with _demo_copy(demo_dsn, labevents_extra=rows) as schema:
        run = run_cohort_query(demo_dsn, schema=schema, config=load_config(), store=RunStore(tmp_path))
    labs = _parquet(run, "labs")
    sodium = labs[(labs["hadm_id"] == admission["hadm_id"]) & (labs["feature"] == "sodium")]
    got = sodium.loc[sodium["value"].isin([141.0, 142.0, 143.0, 250.0]), ["charttime", "value"]]
    # in the window (from the look-back start) and in range: kept; before the look-back or > 200 mEq/L: dropped
    assert got.values.tolist() == [[start - 2 * HOUR, 141.0], [start + 47 * HOUR, 143.0]]


@contextlib.contextmanager
def _demo_copy(dsn: str, *, labevents_extra: sql.Composable) -> Iterator[str]:
    """A throwaway schema of views over the demo tables, with extra labevents rows; dropped afterwards."""
    schema = f"demo_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            for table in ("patients", "admissions", "icustays", "chartevents", "labevents"):
                body = sql.SQL("SELECT * FROM mimiciii.{}").format(sql.Identifier(table))
                if table == "labevents":
                    columns = "SELECT subject_id, hadm_id, itemid, charttime, valuenum FROM mimiciii.labevents"
                    body = sql.SQL("{} UNION ALL {}").format(sql.SQL(columns), labevents_extra)
                conn.execute(
                    sql.SQL("CREATE VIEW {}.{} AS {}").format(sql.Identifier(schema), sql.Identifier(table), body)
                )
            yield schema
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.parametrize("name", CONTRACT_SCHEMAS)
def test_each_file_has_the_contract_columns_and_types(query_run: Run, name: str) -> None:
    """Every stored Parquet file has exactly the columns and Arrow types of the query-run contract."""
    assert pq.read_schema(query_run.file(f"{name}.parquet")).remove_metadata() == CONTRACT_SCHEMAS[name]


def test_summary_counts_rows_and_names_the_source(query_run: Run) -> None:
    """The summary's table counts equal the files' rows; the schema and a password-free source are recorded."""
    summary = query_run.manifest.summary
    assert summary.tables == {n: pq.read_metadata(query_run.file(f"{n}.parquet")).num_rows for n in CONTRACT_SCHEMAS}
    assert summary.schema == "mimiciii"
    assert summary.source.startswith("postgresql://")


def test_event_rows_lie_in_the_configured_window(demo_dsn: str, tmp_path: Path) -> None:
    """With a 12 h window and no look-back every event lies in [window_start, window_start + 12 h)."""
    config = load_config(overrides={"cohort.window_hours": 12, "cohort.lookback_hours": 0})
    run = run_cohort_query(demo_dsn, schema="mimiciii", config=config, store=RunStore(tmp_path))
    starts = _parquet(run, "admissions").set_index("hadm_id")["window_start"]
    for name in ("vitals", "labs", "bloodgas"):
        events = _parquet(run, name)
        start = events["hadm_id"].map(starts)
        assert (events["charttime"] >= start).all(), name
        assert (events["charttime"] < start + 12 * HOUR).all(), name


def test_cli_query_writes_a_run_and_never_shows_the_password(demo_dsn: str, tmp_path: Path) -> None:
    """`lstm-adv query --dsn …` prints the flow and the new run id; a password in the DSN is not echoed or stored."""
    passfile = Path(str(psycopg.conninfo.conninfo_to_dict(demo_dsn)["passfile"]))
    password = passfile.read_text().strip().rsplit(":", 1)[1]  # the embedded server's real one, given in the DSN
    dsn = psycopg.conninfo.make_conninfo(demo_dsn, password=password)
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "query", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    (run,) = RunStore(tmp_path / "runs").list("query")
    assert f"query run {run.id}" in result.output
    assert "icu stay >= 1 day" in result.output
    manifest_text = (run.path / "manifest.json").read_text()
    assert password not in result.output + manifest_text
    assert run.manifest.summary.source.startswith("postgresql://")


def test_cli_query_reports_a_missing_schema_in_one_line(demo_dsn: str, tmp_path: Path) -> None:
    """A wrong --schema ends the command with exit code 1 and one error line, without a traceback."""
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "query", "--dsn", demo_dsn, "--schema", "nope"])
    assert result.exit_code == 1
    assert "schema 'nope' does not exist" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or RunStore(tmp_path / "runs").list("query") == []


def test_summary_records_the_feature_definitions_and_the_window_start(query_run: Run) -> None:
    """The query run stores the text and SHA-256 of the definitions it read, and where each window starts."""
    summary = query_run.manifest.summary
    shipped = resource("features.toml").read_text(encoding="utf-8")
    assert summary.features.name == "features.toml"
    assert summary.features.text == shipped
    assert summary.features.sha256 == hashlib.sha256(shipped.encode()).hexdigest()
    assert summary.window_start == "the earliest ICU intime of the admission (among all its ICU stays)"
    assert query_run.manifest.config["cohort"]["window_start"] == "all"
