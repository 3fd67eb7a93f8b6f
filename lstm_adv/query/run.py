"""The query stage: run the cohort SQL (``sql/``) against MIMIC-III and store the results as a query run.

Nothing is written to the database, so a read-only account (CONNECT, USAGE, SELECT; no TEMP) is
enough. The source is checked first (:mod:`lstm_adv.query.checks`). Each of the five results is then
one self-contained SELECT: the relations it reads (``stays``, ``cohort``) come first as WITH queries
(:func:`statement`), and it is streamed to Parquet with ``COPY … TO STDOUT`` (see
:mod:`lstm_adv.database.export`), so memory stays bounded on full MIMIC-III. All of them run in one
read-only transaction on one snapshot, so they agree with each other.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.resources import files
from typing import Any

import attrs
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from lstm_adv.config import CohortConfig, Config
from lstm_adv.database.connection import connect, describe_source
from lstm_adv.database.export import export_parquet
from lstm_adv.domain.errors import DatabaseError
from lstm_adv.domain.features import FeatureSpec
from lstm_adv.domain.run_id import RunId
from lstm_adv.query.checks import check_source, is_embedded
from lstm_adv.query.parameters import cohort_params, item_params
from lstm_adv.resources import read_feature_definitions
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.store import Run, RunStore, RunWriter
from lstm_adv.results.summaries import QuerySummary, Step

log = logging.getLogger(__name__)

EVENT_ORDER = "hadm_id, charttime, feature, value"


@attrs.frozen
class Export:
    """One file of a query run: the ``sql/`` relation it holds, the source of its items, its row order."""

    file: str
    relation: str
    source: str | None
    order: str


EXPORTS = (
    Export("stays.parquet", "stays", None, "subject_id, hadm_id, intime, icustay_id"),
    Export("admissions.parquet", "cohort", None, "subject_id, hadm_id"),
    Export("vitals.parquet", "vitals", "vital", EVENT_ORDER),
    Export("labs.parquet", "labs", "lab", EVENT_ORDER),
    Export("bloodgas.parquet", "bloodgas", "bloodgas", EVENT_ORDER),
)
# The relations later files read, in dependency order; each reaches them as a WITH query.
BASE_RELATIONS = ("stays", "cohort")
WINDOW_START_RULES = {
    "all": "the earliest ICU intime of the admission (among all its ICU stays)",
    "included": "the earliest ICU intime among the admission's included stays",
}

Progress = Callable[[str], None]


def load_sql(name: str) -> str:
    """The text of ``sql/<name>.sql`` shipped with the toolkit."""
    return files("lstm_adv").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


def window_start_rule(setting: str) -> str:
    """Where the window starts under ``cohort.window_start``, in words (stored in the query run's summary)."""
    return WINDOW_START_RULES[setting]


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
    ~/.pgpass). The feature definitions are ``cohort.features_file`` (default: the shipped
    ``features.toml``); they are stored in the run's summary. The schema, tables, columns and
    privileges are checked first: anything missing is a :class:`DatabaseError` naming all of it, and
    no run is written. ``source`` is recorded in the summary (default: the server's address without
    password; ``embedded…`` marks the embedded server, for the hints); ``progress`` is told each step.
    """
    definitions = read_feature_definitions(config.cohort.features_file)
    if isinstance(database, str):
        source = source or describe_source(database)
        with connect(database, timeout_s=config.database.connect_timeout_s) as conn:
            return run_cohort_query(
                conn, schema=schema, config=config, store=store, parents=parents, source=source, progress=progress
            )
    conn = database
    check_source(conn, schema, embedded=is_embedded(source))
    report = progress or (lambda step: None)
    params = cohort_params(config.cohort)
    with store.create("query", parents=parents, config=config_as_dict(config)) as writer, _snapshot(conn, schema):
        tables = _export_all(conn, writer, params, definitions.to_spec(), report)
        writer.summary = QuerySummary(
            flow=_flow(conn, params, config.cohort),
            tables=tables,
            schema=schema,
            source=source or _describe_connection(conn),
            window_start=window_start_rule(config.cohort.window_start),
            features=definitions,
        )
    assert writer.committed is not None  # the writer commits on leaving the block without error
    log.info("query run %s written", writer.committed.id)
    return writer.committed


@contextlib.contextmanager
def _snapshot(conn: psycopg.Connection[Any], schema: str) -> Iterator[None]:
    """One read-only transaction on one snapshot (unless the caller's is open), ``schema`` first on the path."""
    fresh = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction():
        if fresh:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(sql.SQL("SET LOCAL search_path TO {}, public").format(sql.Identifier(schema)))
        # The cohort is a WITH query without statistics: the planner takes it for one row and would
        # probe chartevents once per admission; hash joins scan each itemid partition once instead.
        conn.execute("SET LOCAL enable_nestloop TO off")
        yield


def _export_all(
    conn: psycopg.Connection[Any], writer: RunWriter, params: Mapping[str, Any], spec: FeatureSpec, report: Progress
) -> dict[str, int]:
    """Stream the five results into the run; returns the row count of each (by file stem)."""
    counts: dict[str, int] = {}
    for export in EXPORTS:
        used = {**params, **item_params(spec, export.source)} if export.source else params
        query = statement(conn, export.relation, used, order=export.order)
        counts[export.file.removesuffix(".parquet")] = _export(conn, writer, export.file, query, report)
    return counts


def statement(conn: psycopg.Connection[Any], name: str, params: Mapping[str, Any], *, order: str) -> sql.Composed:
    """``sql/<name>.sql`` as one SELECT ordered by ``order``, after the base relations it reads as WITH queries."""
    query = sql.SQL("SELECT * FROM ({}) AS {} ORDER BY {}").format(
        _bind(conn, name, params), sql.Identifier(name), sql.SQL(order)
    )
    return _with_bases(conn, name, params, query)


def _with_bases(
    conn: psycopg.Connection[Any], name: str, params: Mapping[str, Any], query: sql.Composed
) -> sql.Composed:
    """``WITH stays AS (…), cohort AS (…) <query>``: the base relations that come before ``name``."""
    bases = BASE_RELATIONS[: BASE_RELATIONS.index(name)] if name in BASE_RELATIONS else BASE_RELATIONS
    if not bases:
        return query
    ctes = sql.SQL(", ").join(
        sql.SQL("{} AS ({})").format(sql.Identifier(base), _bind(conn, base, params)) for base in bases
    )
    return sql.SQL("WITH {} {}").format(ctes, query)


def _export(
    conn: psycopg.Connection[Any], writer: RunWriter, file: str, query: sql.Composable, report: Progress
) -> int:
    report(f"exporting {file}")
    try:
        return export_parquet(conn, query, writer.file(file))
    except psycopg.Error as exc:
        raise DatabaseError(f"exporting {file} failed: {_first_line(exc)}") from exc


def _bind(conn: psycopg.Connection[Any], name: str, params: Mapping[str, Any]) -> sql.SQL:
    """``sql/<name>.sql`` without its header comment, parameters inlined as quoted literals.

    COPY cannot take bound parameters, so psycopg quotes each value into the text; the header is
    dropped first because it names the parameters too, and a value inside a comment could end it.
    """
    lines = load_sql(name).strip().rstrip(";").splitlines()
    text = "\n".join(lines[next(i for i, line in enumerate(lines) if not line.startswith("--")) :])
    used = {key: value for key, value in params.items() if f"%({key})s" in text}
    return sql.SQL(psycopg.ClientCursor(conn).mogrify(text, used))


def _flow(conn: psycopg.Connection[Any], params: Mapping[str, Any], cohort: CohortConfig) -> tuple[Step, ...]:
    """ICU stays left after each inclusion rule (applied in turn), then the admissions they form."""
    counts = sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE adult), count(*) FILTER (WHERE adult AND hospital_los_ok), "
        "count(*) FILTER (WHERE included), (SELECT count(*) FROM cohort) FROM stays"
    )
    try:
        row = conn.execute(_with_bases(conn, "flow", params, sql.Composed([counts]))).fetchone()
    except psycopg.Error as exc:
        raise DatabaseError(f"counting the cohort flow failed: {_first_line(exc)}") from exc
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
