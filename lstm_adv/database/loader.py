"""Create MIMIC-III tables (with MIMIC's own PostgreSQL column types) and stream data in with COPY.

A source is a CSV file with a header row (``.csv`` or ``.csv.gz``), a pandas DataFrame, an iterable of
DataFrames (chunks of one table), or :class:`CsvChunks` (CSV bytes without header). Columns are
matched by name; columns a source lacks are left NULL. All tables of one call load in one
transaction: a failure leaves the database as it was.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import zlib
from collections.abc import Iterable, Iterator, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import attrs
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql

from lstm_adv.domain.errors import DatabaseError, DataError

log = logging.getLogger(__name__)

MIMIC_TABLES = ("patients", "admissions", "icustays", "chartevents", "labevents", "d_items", "d_labitems")
# Built after the data is in (faster than maintaining them during COPY); the cohort and feature
# queries join on these and filter on itemid.
INDEXES: Mapping[str, tuple[str, ...]] = {
    "patients": ("subject_id",),
    "admissions": ("hadm_id", "subject_id"),
    "icustays": ("icustay_id", "hadm_id"),
    "chartevents": ("itemid", "hadm_id", "icustay_id"),
    "labevents": ("itemid", "hadm_id"),
    "d_items": ("itemid",),
    "d_labitems": ("itemid",),
}
_BLOCK_BYTES = 1 << 20
_FRAME_ROWS = 250_000
_INTEGER_TYPES = {"integer", "smallint", "bigint"}


@attrs.frozen
class CsvChunks:
    """CSV data without a header row: fields in the order of ``columns``, unquoted empty = NULL."""

    columns: tuple[str, ...] = attrs.field(converter=tuple)
    chunks: Iterable[bytes]
    name: str = "<csv chunks>"


TableSource = Path | pd.DataFrame | Iterable[pd.DataFrame] | CsvChunks


def table_ddl(table: str, schema: str) -> sql.Composed:
    """The ``CREATE TABLE`` statement of a MIMIC-III table (``lstm_adv/sql/schema/<table>.sql``)."""
    if table not in MIMIC_TABLES:
        raise DataError(f"unknown MIMIC-III table {table!r}; known: {', '.join(MIMIC_TABLES)}")
    text = files("lstm_adv").joinpath("sql", "schema", f"{table}.sql").read_text(encoding="utf-8")
    return sql.SQL(text).format(schema=sql.Identifier(schema))


def load_tables(
    conn: psycopg.Connection[Any], schema: str, tables: Mapping[str, TableSource], *, replace: bool = True
) -> dict[str, int]:
    """Create ``schema`` and load each table from its source; returns rows loaded per table.

    With ``replace`` an existing table is dropped first; without it an existing table is an error.
    Everything happens in one transaction (committed at the end unless the caller's own
    transaction is open): on any failure no table is created, replaced or half-filled.
    """
    for table in tables:
        table_ddl(table, schema)  # unknown names fail before anything is written
    counts: dict[str, int] = {}
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for table, source in tables.items():
            counts[table] = _load_table(conn, schema, table, source, replace=replace)
            log.info("loaded %d rows into %s.%s", counts[table], schema, table)
    return counts


def _load_table(conn: psycopg.Connection[Any], schema: str, table: str, source: TableSource, *, replace: bool) -> int:
    qualified = sql.Identifier(schema, table)
    if replace:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(qualified))
    elif _table_exists(conn, schema, table):
        raise DatabaseError(f"table {schema}.{table} already exists; drop it or load with replace=True")
    conn.execute(table_ddl(table, schema))
    types = _column_types(conn, schema, table)
    rows = sum(_copy(conn, schema, table, columns, data) for columns, data in _csv_parts(source, types, table))
    for column in INDEXES.get(table, ()):
        conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(qualified, sql.Identifier(column)))
    conn.execute(sql.SQL("ANALYZE {}").format(qualified))
    return rows


def _copy(
    conn: psycopg.Connection[Any], schema: str, table: str, columns: tuple[str, ...], data: Iterable[bytes]
) -> int:
    statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
        sql.Identifier(schema, table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    try:
        with conn.cursor() as cur:
            with cur.copy(statement) as copy:
                for block in data:
                    copy.write(block)
            return max(cur.rowcount, 0)
    except psycopg.errors.DataError as exc:  # bad values: name the table and the server's line/column
        raise DataError(_copy_failure(schema, table, exc)) from None
    except psycopg.errors.IntegrityError as exc:
        raise DataError(_copy_failure(schema, table, exc)) from None


def _copy_failure(schema: str, table: str, exc: psycopg.Error) -> str:
    context = (exc.diag.context or "").strip().splitlines()
    where = f" ({context[0]})" if context else ""
    return f"cannot load {schema}.{table}: {exc.diag.message_primary or exc}{where}"


def _table_exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", [f'"{schema}"."{table}"']).fetchone()
    return row is not None and row[0] is not None


def _column_types(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    return {str(name): str(kind) for name, kind in rows}


# --- sources -> (columns, CSV blocks) ----------------------------------------------------------------


def _csv_parts(
    source: TableSource, types: Mapping[str, str], table: str
) -> Iterator[tuple[tuple[str, ...], Iterable[bytes]]]:
    if isinstance(source, Path):
        yield from _file_parts(source, types, table)
    elif isinstance(source, CsvChunks):
        yield _check_columns(source.columns, types, table, source.name), source.chunks
    elif isinstance(source, pd.DataFrame):
        yield _frame_part(source, types, table)
    else:
        for frame in source:
            yield _frame_part(frame, types, table)


def _file_parts(path: Path, types: Mapping[str, str], table: str) -> Iterator[tuple[tuple[str, ...], Iterable[bytes]]]:
    try:
        handle = _open(path)
    except OSError as exc:
        raise DataError(f"cannot open {path.name} for table {table}: {exc.strerror}") from None
    with handle:
        header = _read(handle.readline, path)
        if not header.strip():
            raise DataError(f"file {path.name} for table {table} is empty; it needs a header row")
        names = next(csv.reader([header.decode("utf-8")]))
        columns = _check_columns(tuple(n.strip().lower() for n in names), types, table, path.name)
        yield columns, _blocks(handle, path)


def _open(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.GzipFile(path, "rb")
    return path.open("rb")


def _blocks(handle: io.BufferedIOBase, path: Path) -> Iterator[bytes]:
    while block := _read(lambda: handle.read(_BLOCK_BYTES), path):
        yield block


def _read(read: Any, path: Path) -> bytes:
    try:
        data: bytes = read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"file {path.name} is not a complete gzip file ({exc})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    return data


def _check_columns(columns: tuple[str, ...], types: Mapping[str, str], table: str, origin: str) -> tuple[str, ...]:
    unknown = [c for c in columns if c not in types]
    if unknown:
        raise DataError(
            f"{origin} has columns that table {table} does not have: {', '.join(unknown)}; "
            f"expected a subset of {', '.join(types)}"
        )
    return columns


def _frame_part(frame: pd.DataFrame, types: Mapping[str, str], table: str) -> tuple[tuple[str, ...], Iterable[bytes]]:
    columns = _check_columns(tuple(str(c).lower() for c in frame.columns), types, table, "DataFrame")
    frame = frame.set_axis(list(columns), axis=1)
    integer_columns = [c for c in columns if types[c] in _INTEGER_TYPES and pd.api.types.is_float_dtype(frame[c])]
    return columns, _frame_blocks(frame, integer_columns, table)


def _frame_blocks(frame: pd.DataFrame, integer_columns: list[str], table: str) -> Iterator[bytes]:
    """CSV bytes of ``frame`` in slices of ``_FRAME_ROWS`` rows (pyarrow's writer: NaN/None -> NULL)."""
    for start in range(0, len(frame), _FRAME_ROWS):
        part = frame.iloc[start : start + _FRAME_ROWS]
        if integer_columns:
            part = part.assign(**{c: _as_nullable_int(part[c], table) for c in integer_columns})
        buffer = io.BytesIO()
        pa_csv.write_csv(
            pa.Table.from_pandas(part, preserve_index=False), buffer, pa_csv.WriteOptions(include_header=False)
        )
        yield buffer.getvalue()


def _as_nullable_int(values: pd.Series[float], table: str) -> pd.Series[Any]:
    try:
        return values.astype("Int64")
    except (TypeError, ValueError):
        raise DataError(
            f"column {table}.{values.name} holds non-integer values; MIMIC-III stores it as integer"
        ) from None
