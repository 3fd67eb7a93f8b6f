"""Checks of a MIMIC-III source before the query stage reads anything from it.

:func:`check_source` looks at the catalogs once and names everything that is missing at once: the
schema, then every table and column the SQL in ``sql/`` reads (:data:`SOURCE_COLUMNS`), then every
privilege the connected user lacks (CONNECT on the database, USAGE on the schema, SELECT on each
table). Each problem is one :class:`DatabaseError` line whose hint depends on whose database it is:
the embedded server is fixed with ``lstm-adv db load-demo``; a user's own server (``--dsn``) is
compared with what a MIMIC-III build of the MIT-LCP mimic-code scripts contains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import psycopg
from psycopg import sql

from lstm_adv.domain.errors import DatabaseError

# Every column of MIMIC-III that sql/ reads, per table (tests/test_sql_files.py checks it against the SQL).
SOURCE_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "patients": ("subject_id", "dob"),
    "admissions": ("hadm_id", "admittime", "dischtime", "hospital_expire_flag"),
    "icustays": ("subject_id", "hadm_id", "icustay_id", "intime", "outtime"),
    "chartevents": ("hadm_id", "itemid", "charttime", "valuenum", "error"),
    "labevents": ("subject_id", "hadm_id", "itemid", "charttime", "valuenum"),
}
SOURCE_TABLES = tuple(SOURCE_COLUMNS)
DEFAULT_SCHEMA = "mimiciii"
_MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1
_MIMIC_BUILD = "MIMIC-III v1.4 built with the MIT-LCP mimic-code PostgreSQL scripts"


@attrs.frozen
class Lacking:
    """Privileges the connected user lacks: CONNECT on the database, USAGE on the schema, SELECT on tables."""

    connect: bool = False
    usage: bool = False
    select: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.connect or self.usage or bool(self.select)

    def describe(self, dbname: str, schema: str) -> str:
        """``CONNECT on database d; USAGE on schema s; SELECT on s.a, s.b`` (only what is lacking)."""
        parts = [f"CONNECT on database {dbname}"] if self.connect else []
        parts += [f"USAGE on schema {schema}"] if self.usage else []
        parts += [f"SELECT on {', '.join(f'{schema}.{t}' for t in self.select)}"] if self.select else []
        return "; ".join(parts)

    def grants(self, conn: psycopg.Connection[Any], schema: str) -> str:
        """The GRANT statements that give the connected user what it lacks, identifiers quoted."""
        user = _quoted(conn, conn.info.user)
        statements = [f"GRANT CONNECT ON DATABASE {_quoted(conn, conn.info.dbname)} TO {user}"] if self.connect else []
        statements += [f"GRANT USAGE ON SCHEMA {_quoted(conn, schema)} TO {user}"] if self.usage else []
        if self.select:
            tables = ", ".join(_quoted(conn, schema, table) for table in self.select)
            statements.append(f"GRANT SELECT ON {tables} TO {user}")
        return "; ".join(statements)


def _quoted(conn: psycopg.Connection[Any], *names: str) -> str:
    return sql.Identifier(*names).as_string(conn)


@attrs.frozen
class Missing:
    """What a schema lacks: tables, and columns of the tables it has (``table.column``)."""

    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.tables or self.columns)

    def describe(self, schema: str) -> str:
        """``table s.a and columns s.b.x, s.c.y are missing`` (singular or plural as it comes)."""
        parts = [
            _named("table", [f"{schema}.{t}" for t in self.tables]),
            _named("column", [f"{schema}.{c}" for c in self.columns]),
        ]
        named = " and ".join(part for part in parts if part)
        verb = "is" if len(self.tables) + len(self.columns) == 1 else "are"
        return f"{named} {verb} missing"


def _named(noun: str, names: Sequence[str]) -> str:
    if not names:
        return ""
    return f"{noun}{'s' if len(names) > 1 else ''} {', '.join(names)}"


def is_embedded(source: str | None) -> bool:
    """Whether a query's source label names the embedded server (``embedded`` or ``embedded:<schema>``)."""
    return source is not None and (source == "embedded" or source.startswith("embedded:"))


def check_source(conn: psycopg.Connection[Any], schema: str, *, embedded: bool) -> None:
    """Raise :class:`DatabaseError` unless ``schema`` holds every table and column the SQL reads, readable.

    One line per kind of problem (missing schema; missing tables and columns; missing privileges),
    naming all of that kind; the hint suits the embedded server or a user's own (``embedded``).
    Runs in a transaction of its own and writes nothing.
    """
    check_identifier(schema)
    where = f"database {conn.info.dbname} at {conn.info.host}:{conn.info.port}"
    with conn.transaction():
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone() is None:
            raise DatabaseError(f"schema '{schema}' does not exist in {where}; {_schema_hint(schema, embedded)}")
        missing = find_missing(conn, schema)
        if missing:
            raise DatabaseError(f"{missing.describe(schema)} in {where}; {_contents_hint(schema, embedded)}")
        lacking = find_missing_privileges(conn, schema)
    if lacking:
        raise DatabaseError(
            f"user '{conn.info.user}' lacks privileges on {where}: {lacking.describe(conn.info.dbname, schema)}; "
            f"{_privileges_hint(conn, schema, lacking, embedded)}"
        )


def check_identifier(schema: str) -> None:
    """Raise :class:`DatabaseError` unless ``schema`` can be a PostgreSQL identifier."""
    if not schema or len(schema) > _MAX_IDENTIFIER or "\x00" in schema:
        raise DatabaseError(
            f"schema name {schema!r} is not a valid PostgreSQL identifier (1 to {_MAX_IDENTIFIER} characters)"
        )


def find_missing(conn: psycopg.Connection[Any], schema: str) -> Missing:
    """The tables of :data:`SOURCE_COLUMNS` that ``schema`` lacks, and the columns its tables lack."""
    rows = conn.execute(
        "SELECT c.relname, a.attname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relname = ANY(%s)",
        [schema, list(SOURCE_TABLES)],
    ).fetchall()
    present: dict[str, set[str]] = {}
    for table, column in rows:
        present.setdefault(table, set()).add(column)
    tables = tuple(t for t in SOURCE_TABLES if t not in present)
    columns = tuple(
        f"{t}.{c}" for t, needed in SOURCE_COLUMNS.items() if t in present for c in needed if c not in present[t]
    )
    return Missing(tables=tables, columns=columns)


def find_missing_privileges(conn: psycopg.Connection[Any], schema: str) -> Lacking:
    """The privileges the connected user lacks to read what the SQL reads in ``schema``.

    SELECT on a table may also come from column privileges on every column the SQL reads.
    """
    row = conn.execute(
        "SELECT has_database_privilege(current_database(), 'CONNECT'), has_schema_privilege(%s, 'USAGE')",
        [schema],
    ).fetchone()
    assert row is not None
    unreadable = tuple(table for table in SOURCE_TABLES if not _can_select(conn, schema, table))
    return Lacking(connect=not row[0], usage=not row[1], select=unreadable)


def _can_select(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = conn.execute(
        "SELECT has_table_privilege(c.oid, 'SELECT') OR bool_and(has_column_privilege(c.oid, a.attnum, 'SELECT')) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = ANY(%s) "
        "WHERE n.nspname = %s AND c.relname = %s GROUP BY c.oid",
        [list(SOURCE_COLUMNS[table]), schema, table],
    ).fetchone()
    return bool(row and row[0])


def _load_demo(schema: str) -> str:
    option = "" if schema == DEFAULT_SCHEMA else f" --schema {schema}"
    return f"`lstm-adv db load-demo{option}`"


def _schema_hint(schema: str, embedded: bool) -> str:
    if embedded:
        return f"load it with {_load_demo(schema)}"
    return f"{_MIMIC_BUILD} lives in schema {DEFAULT_SCHEMA}; name the schema of your build with --schema"


def _contents_hint(schema: str, embedded: bool) -> str:
    if embedded:
        return f"reload the demo with {_load_demo(schema)}"
    tables = ", ".join(SOURCE_TABLES)
    return f"{_MIMIC_BUILD} has them (tables {tables}); check that --schema names such a build, or complete it"


def _privileges_hint(conn: psycopg.Connection[Any], schema: str, lacking: Lacking, embedded: bool) -> str:
    if embedded:
        return f"reload the demo with {_load_demo(schema)}, which makes the toolkit's role its owner"
    return f"ask the database's owner to run {lacking.grants(conn, schema)}"
