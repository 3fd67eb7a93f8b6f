"""Stream a query's result from PostgreSQL into a Parquet file in bounded memory.

The server writes the result as CSV (``COPY (…) TO STDOUT``); pyarrow's streaming CSV reader parses
it block by block with column types taken from the query's own result description, and each block
is appended to the Parquet file. Memory is bounded by the block size, whatever the number of rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from psycopg import sql

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 8 << 20

# PostgreSQL type OIDs (pg_type.dat) of the result columns the toolkit's queries produce.
_ARROW_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(),  # boolean
    20: pa.int64(),  # bigint
    21: pa.int64(),  # smallint
    23: pa.int64(),  # integer
    700: pa.float64(),  # real
    701: pa.float64(),  # double precision
    1700: pa.float64(),  # numeric
    1082: pa.date32(),  # date
    1114: pa.timestamp("us"),  # timestamp without time zone
    1184: pa.timestamp("us", tz="UTC"),  # timestamp with time zone (session TimeZone is UTC)
    19: pa.string(),  # name
    25: pa.string(),  # text
    1042: pa.string(),  # character
    1043: pa.string(),  # character varying
}


class _CopyStream:
    """A read-only file over the data of a running ``COPY … TO STDOUT``, for pyarrow."""

    def __init__(self, copy: psycopg.Copy) -> None:
        self._copy = copy
        self._buffer = bytearray()
        self._done = False
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of CSV (everything left when ``size`` < 0); ``b""`` at the end."""
        buffer, read = self._buffer, self._copy.read
        while not self._done and (size < 0 or len(buffer) < size):
            data = read()  # one server message: one row of CSV
            if not data:
                self._done = True
                break
            buffer += data
        if size < 0 or size >= len(buffer):
            out = bytes(buffer)
            buffer.clear()
            return out
        out = bytes(buffer[:size])
        del buffer[:size]
        return out

    def readable(self) -> bool:
        """Always true: this is a read-only stream."""
        return True

    def seekable(self) -> bool:
        """Always false: the data is a network stream."""
        return False

    def close(self) -> None:
        """Mark the stream closed (the COPY itself is finished by its context manager)."""
        self.closed = True


def result_schema(conn: psycopg.Connection[Any], query: sql.Composable) -> pa.Schema:
    """The Arrow schema of ``query``'s result, from a ``LIMIT 0`` probe's column types."""
    probe = sql.SQL("SELECT * FROM ({}) AS probe LIMIT 0").format(query)
    with conn.cursor() as cur:
        cur.execute(probe)
        description = cur.description or []
    fields = []
    for column in description:
        arrow_type = _ARROW_TYPES.get(column.type_code)
        if arrow_type is None:
            log.warning("column %s has PostgreSQL type oid %d; exporting it as text", column.name, column.type_code)
            arrow_type = pa.string()
        fields.append(pa.field(column.name, arrow_type))
    return pa.schema(fields)


def export_parquet(
    conn: psycopg.Connection[Any],
    query: sql.Composable,
    path: Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> int:
    """Write the result of ``query`` (a parameter-free SELECT) to the Parquet file ``path``.

    Streams: at most about ``chunk_bytes`` of CSV are held at a time. Returns the number of rows.
    """
    _set_csv_session(conn)
    schema = result_schema(conn, query)
    copy_sql = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(query)
    rows = 0
    with conn.cursor() as cur, cur.copy(copy_sql) as copy, pq.ParquetWriter(path, schema) as writer:
        reader = pa_csv.open_csv(_CopyStream(copy), **_csv_options(schema, chunk_bytes))
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    log.info("exported %d rows to %s", rows, path)
    return rows


def _set_csv_session(conn: psycopg.Connection[Any]) -> None:
    """Fix the server's text output so the parser reads it the same on every server.

    ISO dates, UTC for ``timestamptz``, and floats with enough digits to round-trip (servers
    before PostgreSQL 12 round them otherwise).
    """
    for setting in ("SET DateStyle TO ISO, YMD", "SET TimeZone TO 'UTC'", "SET extra_float_digits TO 3"):
        conn.execute(setting)


def _csv_options(schema: pa.Schema, chunk_bytes: int) -> dict[str, Any]:
    """How PostgreSQL writes CSV: unquoted empty = NULL, quoted empty = '', booleans as t/f."""
    return {
        "read_options": pa_csv.ReadOptions(block_size=chunk_bytes, use_threads=False),
        "parse_options": pa_csv.ParseOptions(newlines_in_values=True),
        "convert_options": pa_csv.ConvertOptions(
            column_types=schema,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
            timestamp_parsers=[pa_csv.ISO8601],
        ),
    }
