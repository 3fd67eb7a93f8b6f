"""The query stage: run the cohort SQL (``sql/``) against MIMIC-III and store the results as a query run.

Everything runs in one transaction on one connection: the ICU stays with their inclusion flags and
the admission-level cohort become temporary tables; each result is then streamed to Parquet with
``COPY … TO STDOUT`` (see :mod:`lstm_adv.database.export`), so memory stays bounded on full MIMIC-III.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from typing import Any

import attrs
import psycopg
from psycopg import sql

from lstm_adv.config import CohortConfig, Config
from lstm_adv.database.connection import check_tables, connect, describe_source
from lstm_adv.database.export import export_parquet
from lstm_adv.domain.errors import DatabaseError
from lstm_adv.domain.run_id import RunId
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.store import Run, RunStore, RunWriter
from lstm_adv.results.summaries import QuerySummary, Step

log = logging.getLogger(__name__)

SOURCE_TABLES = ("patients", "admissions", "icustays", "chartevents", "labevents")
# (file in the run, temporary table, row order)
TEMP_TABLES = (
    ("stays.parquet", "stays", "subject_id, hadm_id, intime, icustay_id"),
    ("admissions.parquet", "cohort", "subject_id, hadm_id"),
)
# (file in the run, sql/ file)
EVENT_QUERIES = (("vitals.parquet", "vitals"), ("labs.parquet", "labs"), ("bloodgas.parquet", "bloodgas"))
_MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1

Progress = Callable[[str], None]


def load_sql(name: str) -> str:
    """The text of ``sql/<name>.sql`` shipped with the toolkit."""
    return files("lstm_adv").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


def cohort_params(cohort: CohortConfig) -> dict[str, Any]:
    """The named parameters of the SQL files (``%(min_age_years)s`` …), from the cohort settings."""
    return attrs.asdict(cohort)


def _describe_connection(conn: psycopg.Connection[Any]) -> str:
    """``postgresql://user@host:port/db`` of a connection; never includes the password."""
    info = conn.info
    return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"


def run_cohort_query(
    database: psycopg.Connection[Any] | str,
    *,
    schema: str,
    config: Config,
    store: RunStore,
    parents: Sequence[RunId] = (),
    source: str | None = None,
    progress: Progress | None = None,
) -> Run:
    """Run the cohort SQL in ``schema`` and store stays, admissions, vitals, labs, bloodgas as a query run.

    ``database`` is an open connection or a libpq URL (a password may come from PGPASSWORD or
    ~/.pgpass). The schema and the MIMIC-III tables are checked first: a missing one is a
    :class:`DatabaseError` naming it, and no run is written. ``source`` is recorded in the summary
    (default: the server's address without password); ``progress`` is told each step as it starts.
    """
    if isinstance(database, str):
        source = source or describe_source(database)
        with connect(database, timeout_s=config.database.connect_timeout_s) as conn:
            return run_cohort_query(
                conn, schema=schema, config=config, store=store, parents=parents, source=source, progress=progress
            )
    conn = database
    check_source_tables(conn, schema)
    report = progress or (lambda step: None)
    params = cohort_params(config.cohort)
    with store.create("query", parents=parents, config=config_as_dict(config)) as writer, conn.transaction():
        _prepare(conn, schema, params, report)
        tables = _export_all(conn, writer, params, report)
        writer.summary = QuerySummary(
            flow=_flow(conn, config.cohort), tables=tables, schema=schema, source=source or _describe_connection(conn)
        )
    assert writer.committed is not None  # the writer commits on leaving the block without error
    log.info("query run %s written", writer.committed.id)
    return writer.committed


def check_source_tables(conn: psycopg.Connection[Any], schema: str) -> None:
    """Raise :class:`DatabaseError` unless ``schema`` exists and holds every MIMIC-III table the SQL reads."""
    _check_identifier(schema)
    with conn.transaction():
        check_tables(conn, schema, SOURCE_TABLES)


def _check_identifier(schema: str) -> None:
    if not schema or len(schema) > _MAX_IDENTIFIER or "\x00" in schema:
        raise DatabaseError(
            f"schema name {schema!r} is not a valid PostgreSQL identifier (1 to {_MAX_IDENTIFIER} characters)"
        )


def _prepare(conn: psycopg.Connection[Any], schema: str, params: Mapping[str, Any], report: Progress) -> None:
    """Point the session at ``schema`` and build the temporary ``stays`` and ``cohort`` tables."""
    conn.execute(sql.SQL("SET LOCAL search_path TO {}, public").format(sql.Identifier(schema)))
    for table in ("stays", "cohort"):
        report(f"building {table}")
        body = _bind(conn, table, params)
        _execute(conn, table, sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS {}").format(sql.Identifier(table), body))
        _execute(conn, table, sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def _export_all(
    conn: psycopg.Connection[Any], writer: RunWriter, params: Mapping[str, Any], report: Progress
) -> dict[str, int]:
    """Stream the five results into the run; returns the row count of each (by file stem)."""
    counts: dict[str, int] = {}
    for file, table, order in TEMP_TABLES:
        query = sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier(table), sql.SQL(order))
        counts[file.removesuffix(".parquet")] = _export(conn, writer, file, query, report)
    for file, name in EVENT_QUERIES:
        counts[name] = _export(conn, writer, file, _bind(conn, name, params), report)
    return counts


def _export(
    conn: psycopg.Connection[Any], writer: RunWriter, file: str, query: sql.Composable, report: Progress
) -> int:
    report(f"exporting {file}")
    try:
        return export_parquet(conn, query, writer.file(file))
    except psycopg.Error as exc:
        raise DatabaseError(f"exporting {file} failed: {_first_line(exc)}") from exc


def _bind(conn: psycopg.Connection[Any], name: str, params: Mapping[str, Any]) -> sql.SQL:
    """``sql/<name>.sql`` with its parameters inlined as literals (COPY cannot take bound parameters)."""
    text = load_sql(name).strip().rstrip(";")
    used = {key: value for key, value in params.items() if f"%({key})s" in text}
    return sql.SQL(psycopg.ClientCursor(conn).mogrify(text, used))


def _execute(conn: psycopg.Connection[Any], name: str, statement: sql.Composed) -> None:
    try:
        conn.execute(statement)
    except psycopg.Error as exc:
        raise DatabaseError(f"query {name}.sql failed: {_first_line(exc)}") from exc


def _flow(conn: psycopg.Connection[Any], cohort: CohortConfig) -> tuple[Step, ...]:
    """ICU stays left after each inclusion rule (applied in turn), then the admissions they form."""
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE adult), count(*) FILTER (WHERE adult AND hospital_los_ok), "
        "count(*) FILTER (WHERE included), (SELECT count(*) FROM cohort) FROM stays"
    ).fetchone()
    assert row is not None
    steps = (
        "icu stays",
        f"age >= {cohort.min_age_years:g}",
        f"hospital stay >= {_days(cohort.min_hospital_los_days)}",
        f"icu stay >= {_days(cohort.min_icu_los_days)}",
        "admissions",
    )
    return tuple(Step(step, int(count)) for step, count in zip(steps, row, strict=True))


def _days(value: float) -> str:
    return f"{value:g} day" if value == 1 else f"{value:g} days"


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
