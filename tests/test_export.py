"""Streaming a PostgreSQL result into Parquet (lstm_adv.database.export) against a real server."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from lstm_adv.database.export import export_parquet

pytestmark = pytest.mark.db

# Every type the query SQL produces, with NULLs, empty strings, commas, quotes and newlines in text.
MIXED = sql.SQL(
    "SELECT g::bigint AS id, g::int AS small, (g / 7.0)::float8 AS ratio, (g * 0.25)::numeric AS amount, "
    "CASE WHEN g % 5 = 0 THEN NULL ELSE g % 2 = 0 END AS flag, "
    "CASE WHEN g % 4 = 0 THEN NULL WHEN g % 4 = 1 THEN '' ELSE 'a,\"b\"' || E'\\n' || g END AS label, "
    "timestamp '2150-01-01 00:00:00' + g * interval '1 minute 1.5 second' AS at, "
    "CASE WHEN g % 3 = 0 THEN NULL ELSE g::float8 END AS maybe "
    "FROM generate_series(1, 5000) AS g"
)
MIXED_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("small", pa.int64()),
        ("ratio", pa.float64()),
        ("amount", pa.float64()),
        ("flag", pa.bool_()),
        ("label", pa.string()),
        ("at", pa.timestamp("us")),
        ("maybe", pa.float64()),
    ]
)


@pytest.fixture
def conn(demo_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the test server."""
    with psycopg.connect(demo_dsn) as connection:
        yield connection


def _fetch(conn: psycopg.Connection[Any], query: sql.Composable) -> list[tuple[Any, ...]]:
    return conn.execute(query).fetchall()


def test_export_streams_many_chunks_and_matches_a_plain_fetch(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    """With a 4 KiB chunk the result spans many Parquet row groups and equals the rows fetched directly."""
    path = tmp_path / "mixed.parquet"
    rows = export_parquet(conn, MIXED, path, chunk_bytes=4096)
    assert rows == 5000
    assert pq.ParquetFile(path).metadata.num_row_groups > 10
    table = pq.read_table(path)
    expected = _fetch(conn, MIXED)
    got = list(zip(*(table.column(i).to_pylist() for i in range(table.num_columns)), strict=True))
    assert [(*r[:3], float(r[3]), *r[4:]) for r in expected] == got


def test_export_maps_postgres_types_to_arrow_types(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    """Integers become int64, floats and numerics float64, booleans bool, text string, timestamps timestamp[us]."""
    path = tmp_path / "mixed.parquet"
    export_parquet(conn, MIXED, path)
    assert pq.read_schema(path).remove_metadata() == MIXED_SCHEMA


def test_export_keeps_nulls_apart_from_empty_strings(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    """A NULL stays null and an empty string stays empty, in text and in every other type."""
    path = tmp_path / "mixed.parquet"
    export_parquet(conn, MIXED, path, chunk_bytes=4096)
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    assert labels[3] is None  # g = 4
    assert labels[0] == ""  # g = 1
    assert labels[1] == 'a,"b"\n2'
    assert table.column("flag").null_count == 1000
    assert table.column("maybe").null_count == 1666


def test_export_of_an_empty_result_writes_the_schema(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    """A query without rows gives a valid Parquet file with the result's columns and no rows."""
    path = tmp_path / "empty.parquet"
    query = sql.SQL("SELECT 1::bigint AS a, now()::timestamp AS b WHERE false")
    assert export_parquet(conn, query, path) == 0
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.schema.remove_metadata() == pa.schema([("a", pa.int64()), ("b", pa.timestamp("us"))])


def test_export_reads_fractional_seconds_and_timezones(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    """Timestamps keep microseconds; timestamptz values are stored in UTC whatever the session time zone."""
    conn.execute("SET TimeZone TO 'America/New_York'")
    path = tmp_path / "times.parquet"
    query = sql.SQL("SELECT timestamp '2150-03-04 05:06:07.123456' AS t, timestamptz '2150-03-04 05:06:07+02' AS tz")
    export_parquet(conn, query, path)
    row = pq.read_table(path).to_pylist()[0]
    assert row["t"] == dt.datetime(2150, 3, 4, 5, 6, 7, 123456)
    assert row["tz"] == dt.datetime(2150, 3, 4, 3, 6, 7, tzinfo=dt.UTC)
