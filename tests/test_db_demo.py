"""The shipped MIMIC-III demo and the table loader: counts, column types, bad files, all-or-nothing loads."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.database.connection import connect
from lstm_adv.database.demo import demo_data_dir, demo_files, load_demo, verify_demo
from lstm_adv.database.loader import CsvChunks, load_tables
from lstm_adv.database.server import ServerInfo
from lstm_adv.domain.errors import DatabaseError, DataError
from lstm_adv.resources import SHIPPED_FEATURES, read_feature_definitions

TABLES = ("patients", "admissions", "icustays", "chartevents", "labevents", "d_items", "d_labitems")


def _schema_tables(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1", [schema]
    ).fetchall()
    return [str(row[0]) for row in rows]


def _demo_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "demo"
    shutil.copytree(demo_data_dir(), folder)
    return folder


# --- shipped files ---------------------------------------------------------------------------------


def test_manifest_matches_the_shipped_files() -> None:
    """Every table the queries need is shipped, with the row count and SHA-256 the manifest states."""
    entries = {entry.table: entry for entry in demo_files()}
    assert set(entries) == set(TABLES)
    for entry in entries.values():
        path = demo_data_dir() / entry.name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
        assert len(pd.read_csv(path, low_memory=False)) == entry.rows


def test_event_subsets_hold_only_feature_itemids() -> None:
    """chartevents keeps only vital-sign itemids and labevents only the lab/blood-gas itemids of the shipped
    definitions (features.toml and features_serum.toml), each of them present."""
    specs = [read_feature_definitions(name).to_spec() for name in SHIPPED_FEATURES]
    vital = {i for spec in specs for f in spec.by_source("vital") for i in f.all_itemids}
    lab = {i for spec in specs for f in spec.features if f.source != "vital" for i in f.all_itemids}
    chart = set(pd.read_csv(demo_data_dir() / "CHARTEVENTS.csv.gz", usecols=["itemid"])["itemid"])
    labs = set(pd.read_csv(demo_data_dir() / "LABEVENTS.csv.gz", usecols=["itemid"])["itemid"])
    assert chart <= vital
    assert labs == lab


def test_license_and_attribution_ship_with_the_data() -> None:
    """The ODbL license text and the required attribution sit beside the data."""
    assert "Open Database License" in (demo_data_dir() / "LICENSE.txt").read_text(encoding="utf-8")
    readme = (demo_data_dir() / "README.md").read_text(encoding="utf-8")
    assert "Johnson, A., Pollard, T., & Mark, R. (2019). MIMIC-III Clinical Database Demo (version 1.4)" in readme


def test_missing_demo_file_is_named(tmp_path: Path) -> None:
    """A missing demo file is named, with the fix."""
    folder = _demo_copy(tmp_path)
    (folder / "ICUSTAYS.csv.gz").unlink()
    with pytest.raises(DataError) as caught:
        verify_demo(folder)
    assert str(caught.value) == f"demo file ICUSTAYS.csv.gz is missing from {folder}; reinstall lstm-adv"


def test_truncated_demo_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    """A truncated gzip no longer matches the manifest and is reported as corrupt."""
    folder = _demo_copy(tmp_path)
    data = (folder / "CHARTEVENTS.csv.gz").read_bytes()
    (folder / "CHARTEVENTS.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as caught:
        verify_demo(folder)
    assert str(caught.value) == (
        "demo file CHARTEVENTS.csv.gz is corrupt (its SHA-256 does not match the shipped manifest); reinstall lstm-adv"
    )


# --- loading the demo ------------------------------------------------------------------------------


@pytest.mark.db
def test_demo_row_counts_match_the_files(demo_dsn: str) -> None:
    """Each loaded table has as many rows as its shipped CSV, counted independently with pandas."""
    with connect(demo_dsn) as conn:
        for entry in demo_files():
            expected = len(pd.read_csv(demo_data_dir() / entry.name, low_memory=False))
            row = conn.execute(f"SELECT count(*) FROM mimiciii.{entry.table}").fetchone()
            assert row == (expected,), entry.table


@pytest.mark.db
def test_demo_column_types_follow_mimic(demo_dsn: str) -> None:
    """Columns have MIMIC-III's PostgreSQL types (int ids, timestamp(0) times, double values, varchar texts)."""
    wanted = {
        ("chartevents", "itemid"): ("integer", None, None),
        ("chartevents", "charttime"): ("timestamp without time zone", 0, None),
        ("chartevents", "valuenum"): ("double precision", None, None),
        ("chartevents", "value"): ("character varying", None, 255),
        ("chartevents", "error"): ("integer", None, None),
        ("patients", "dob"): ("timestamp without time zone", 0, None),
        ("admissions", "hospital_expire_flag"): ("smallint", None, None),
        ("icustays", "los"): ("double precision", None, None),
        ("labevents", "hadm_id"): ("integer", None, None),
    }
    with connect(demo_dsn) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type, datetime_precision, character_maximum_length "
            "FROM information_schema.columns WHERE table_schema = 'mimiciii'"
        ).fetchall()
    found = {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}
    assert {key: found[key] for key in wanted} == wanted


@pytest.mark.db
def test_demo_values_survive_the_load(demo_dsn: str) -> None:
    """Vital-sign values in the database equal the shipped CSV's (sum and NULL count of chartevents.valuenum)."""
    frame = pd.read_csv(demo_data_dir() / "CHARTEVENTS.csv.gz", usecols=["valuenum"])
    with connect(demo_dsn) as conn:
        total, nulls = conn.execute(
            "SELECT sum(valuenum), count(*) - count(valuenum) FROM mimiciii.chartevents"
        ).fetchone() or (None, None)
    assert total == pytest.approx(frame["valuenum"].sum())
    assert nulls == frame["valuenum"].isna().sum()


@pytest.mark.db
def test_corrupt_demo_file_writes_nothing(pg_server: ServerInfo, tmp_path: Path) -> None:
    """load_demo with a corrupt file fails before creating the schema or any table."""
    folder = _demo_copy(tmp_path)
    data = (folder / "LABEVENTS.csv.gz").read_bytes()
    (folder / "LABEVENTS.csv.gz").write_bytes(data[:1000])
    with connect(pg_server.dsn) as conn:
        with pytest.raises(DataError, match=r"demo file LABEVENTS\.csv\.gz is corrupt"):
            load_demo(conn, schema="demo_corrupt", data_dir=folder)
        assert _schema_tables(conn, "demo_corrupt") == []


@pytest.mark.db
def test_cli_load_demo_loads_into_the_embedded_server(pg_server: ServerInfo, tmp_path: Path) -> None:
    """`db load-demo --dsn … --schema …` loads the seven tables and prints their row counts."""
    result = CliRunner().invoke(
        app, ["--home", str(tmp_path), "db", "load-demo", "--dsn", pg_server.dsn, "--schema", "cli_demo"]
    )
    assert result.exit_code == 0, result.output
    assert "chartevents: 83,390 rows" in result.output
    with connect(pg_server.dsn, autocommit=True) as conn:
        assert _schema_tables(conn, "cli_demo") == sorted(TABLES)
        conn.execute("DROP SCHEMA cli_demo CASCADE")


# --- the generic loader ----------------------------------------------------------------------------


@pytest.mark.db
def test_truncated_gzip_leaves_previous_table_intact(pg_server: ServerInfo, tmp_path: Path) -> None:
    """A gzip that breaks off mid-load fails with the file's name and leaves the old table and its rows as they were."""
    good = demo_data_dir() / "PATIENTS.csv.gz"
    broken = tmp_path / "PATIENTS.csv.gz"
    data = (demo_data_dir() / "CHARTEVENTS.csv.gz").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    with connect(pg_server.dsn) as conn:
        load_tables(conn, "loader_gz", {"patients": good})
        with pytest.raises(DataError) as caught:
            load_tables(conn, "loader_gz", {"admissions": demo_data_dir() / "ADMISSIONS.csv.gz", "chartevents": broken})
        assert _schema_tables(conn, "loader_gz") == ["patients"]
        assert conn.execute("SELECT count(*) FROM loader_gz.patients").fetchone() == (100,)
        conn.execute("DROP SCHEMA loader_gz CASCADE")
    assert str(caught.value) == (
        "file PATIENTS.csv.gz is not a complete gzip file "
        "(Compressed file ended before the end-of-stream marker was reached)"
    )


@pytest.mark.db
def test_dataframe_sources_load_with_nulls_and_integer_ids(pg_server: ServerInfo) -> None:
    """DataFrames (one or several chunks) load by column name: NaN becomes NULL, float ids become integers."""
    first = pd.DataFrame(
        {
            "subject_id": [1, 2],
            "hadm_id": [10.0, np.nan],
            "itemid": [50822, 50808],
            "charttime": pd.to_datetime(["2100-01-01 10:00:00", "2100-01-01 11:30:00"]),
            "valuenum": [4.1, np.nan],
            "value": ["4.1", None],
        }
    )
    second = first.assign(subject_id=[3, 4])
    with connect(pg_server.dsn) as conn:
        counts = load_tables(conn, "loader_df", {"labevents": iter([first, second]), "patients": _patients()})
        rows = conn.execute(
            "SELECT subject_id, hadm_id, charttime::text, valuenum, value FROM loader_df.labevents ORDER BY 1"
        ).fetchall()
        conn.execute("DROP SCHEMA loader_df CASCADE")
    assert counts == {"labevents": 4, "patients": 2}
    assert rows[:2] == [(1, 10, "2100-01-01 10:00:00", 4.1, "4.1"), (2, None, "2100-01-01 11:30:00", None, None)]


def _patients() -> pd.DataFrame:
    return pd.DataFrame({"subject_id": [1, 2], "dob": pd.to_datetime(["2050-01-01", "2060-06-01"]), "gender": "F"})


@pytest.mark.db
def test_csv_chunks_source_loads(pg_server: ServerInfo) -> None:
    """CSV byte chunks without a header load into the named columns."""
    chunks = CsvChunks(columns=("itemid", "label"), chunks=[b"211,Heart Rate\n", b'220045,"Heart Rate, bpm"\n'])
    with connect(pg_server.dsn) as conn:
        assert load_tables(conn, "loader_csv", {"d_items": chunks}) == {"d_items": 2}
        labels = conn.execute("SELECT label FROM loader_csv.d_items ORDER BY itemid").fetchall()
        conn.execute("DROP SCHEMA loader_csv CASCADE")
    assert labels == [("Heart Rate",), ("Heart Rate, bpm",)]


@pytest.mark.db
def test_bad_value_names_table_line_and_column(pg_server: ServerInfo) -> None:
    """A value of the wrong type fails with the table, the line and the column, and loads nothing."""
    chunks = CsvChunks(columns=("subject_id", "dob"), chunks=[b"1,2100-01-01\nabc,2100-01-01\n"])
    with connect(pg_server.dsn) as conn:
        with pytest.raises(DataError) as caught:
            load_tables(conn, "loader_bad", {"patients": chunks})
        assert _schema_tables(conn, "loader_bad") == []
    assert str(caught.value) == (
        'cannot load loader_bad.patients: invalid input syntax for type integer: "abc" '
        '(COPY patients, line 2, column subject_id: "abc")'
    )


@pytest.mark.db
def test_unknown_columns_and_tables_are_rejected(pg_server: ServerInfo) -> None:
    """A source column the table lacks, or a table the loader does not know, is named before loading."""
    with connect(pg_server.dsn) as conn:
        with pytest.raises(DataError) as column:
            load_tables(conn, "loader_cols", {"d_labitems": pd.DataFrame({"itemid": [1], "colour": ["red"]})})
        with pytest.raises(DataError) as table:
            load_tables(conn, "loader_cols", {"noteevents": pd.DataFrame({"row_id": [1]})})
        assert _schema_tables(conn, "loader_cols") == []
    assert str(column.value) == (
        "DataFrame has columns that table d_labitems does not have: colour; "
        "expected a subset of row_id, itemid, label, fluid, category, loinc_code"
    )
    assert str(table.value) == (
        "unknown MIMIC-III table 'noteevents'; known: patients, admissions, icustays, chartevents, labevents, "
        "d_items, d_labitems"
    )


@pytest.mark.db
def test_replace_false_refuses_an_existing_table(pg_server: ServerInfo) -> None:
    """Without replace, loading into an existing table is refused with a clear message."""
    with connect(pg_server.dsn) as conn:
        load_tables(conn, "loader_keep", {"patients": _patients()})
        with pytest.raises(DatabaseError) as caught:
            load_tables(conn, "loader_keep", {"patients": _patients()}, replace=False)
        conn.execute("DROP SCHEMA loader_keep CASCADE")
    assert str(caught.value) == "table loader_keep.patients already exists; drop it or load with replace=True"


def test_gzip_module_reads_what_we_ship() -> None:
    """Every shipped file is a complete gzip stream (a sanity check independent of the manifest)."""
    for entry in demo_files():
        with gzip.open(demo_data_dir() / entry.name, "rb") as handle:
            assert handle.read().count(b"\n") == entry.rows + 1
