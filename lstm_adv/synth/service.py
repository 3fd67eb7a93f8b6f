"""`lstm-adv synth` as a library call: generate, load into PostgreSQL, record a ``synth`` run."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from lstm_adv.config import Config
from lstm_adv.database.connection import connect, describe_source
from lstm_adv.database.loader import load_tables
from lstm_adv.domain.errors import ConfigError, DatabaseError
from lstm_adv.metrics import auroc
from lstm_adv.results.artifacts import TRUTH_FILE
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import SynthSeconds, SynthSummary
from lstm_adv.synth.cohort import SyntheticCohort, check_request, generate_cohort

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
TRUTH_TABLE = "synth_truth"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> None:
    """A schema name must be a plain lower-case identifier (so that SQL and `--schema` agree)."""
    if not _SCHEMA_NAME.match(schema):
        raise ConfigError(
            f"synth schema must be a lower-case SQL name (letters, digits, _; at most 63), got {schema!r}; "
            "pass e.g. --schema synthetic"
        )


def run_synth(
    database: psycopg.Connection[Any] | str,
    *,
    config: Config,
    store: RunStore,
    source: str | None = None,
    progress: Progress | None = None,
) -> Run:
    """Generate ``config.synth.admissions`` admissions, load them into ``config.synth.schema``, store a synth run.

    ``database`` is an open connection or a libpq URL. The schema's tables are replaced, but only
    if it is new or was written by this command before: a schema holding other tables (real
    MIMIC-III, say) is refused. The run holds ``truth.parquet`` (hadm_id, death_probability,
    label, severity); the same rows go to table ``<schema>.synth_truth``. Bad input writes nothing.
    """
    settings = config.synth
    check_request(settings.admissions, settings.seed)
    check_schema_name(settings.schema)
    if isinstance(database, str):
        source = source or describe_source(database)
        with connect(database, timeout_s=config.database.connect_timeout_s) as conn:
            return run_synth(conn, config=config, store=store, source=source, progress=progress)
    conn = database
    report = progress or (lambda step: None)
    _check_schema_is_ours(conn, settings.schema)
    started = time.perf_counter()
    with store.create("synth", config=config_as_dict(config)) as writer:
        report(f"generating {settings.admissions:,} admissions (seed {settings.seed})")
        cohort = generate_cohort(settings.admissions, seed=settings.seed, config=settings)
        generated = time.perf_counter()
        report(f"loading {sum(cohort.counts.values()):,} rows into schema {settings.schema}")
        counts = load_cohort(conn, settings.schema, cohort)
        loaded = time.perf_counter()
        cohort.truth.to_parquet(writer.file(TRUTH_FILE), index=False)
        source = source or describe_source(conn.info.dsn)
        writer.summary = _summary(cohort, counts, settings.schema, source, started, generated, loaded)
    run = writer.committed
    assert run is not None  # committed on leaving the block without error
    log.info("synth run %s: %s", run.id, counts)
    return run


def load_cohort(conn: psycopg.Connection[Any], schema: str, cohort: SyntheticCohort) -> dict[str, int]:
    """Write the cohort's MIMIC-III tables and ``synth_truth`` into ``schema`` in one transaction."""
    with conn.transaction():
        counts = load_tables(conn, schema, cohort.tables)
        counts[TRUTH_TABLE] = _write_truth(conn, schema, cohort)
    return counts


def _write_truth(conn: psycopg.Connection[Any], schema: str, cohort: SyntheticCohort) -> int:
    table = sql.Identifier(schema, TRUTH_TABLE)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (hadm_id INT PRIMARY KEY, death_probability DOUBLE PRECISION NOT NULL, "
            "label INT NOT NULL, severity DOUBLE PRECISION NOT NULL)"
        ).format(table)
    )
    text = cohort.truth.to_csv(index=False, header=False, float_format="%.17g")
    with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv)").format(table)) as copy:
        copy.write(text.encode())
    return len(cohort.truth)


def _check_schema_is_ours(conn: psycopg.Connection[Any], schema: str) -> None:
    """Refuse to replace tables in a schema that this command did not write."""
    was_idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        [schema],
    ).fetchall()
    names = {str(row[0]) for row in rows}
    if was_idle:  # end the implicit transaction of the probe: the load runs in its own
        conn.rollback()
    if names and TRUTH_TABLE not in names:
        raise DatabaseError(
            f"schema '{schema}' already holds tables that `lstm-adv synth` did not write "
            f"({', '.join(sorted(names)[:3])}{', …' if len(names) > 3 else ''}); "
            "choose another --schema, the synthetic tables would replace them"
        )


def _summary(
    cohort: SyntheticCohort,
    counts: dict[str, int],
    schema: str,
    source: str,
    started: float,
    generated: float,
    loaded: float,
) -> SynthSummary:
    truth = cohort.truth
    deaths = int(truth["label"].sum())
    return SynthSummary(
        admissions=cohort.n_admissions,
        seed=cohort.seed,
        schema=schema,
        source=source,
        tables=counts,
        deaths=deaths,
        prevalence=round(cohort.prevalence, 6),
        mean_death_probability=round(float(truth["death_probability"].mean()), 6),
        oracle_auroc_all=round(auroc(truth["label"].to_numpy(), truth["death_probability"].to_numpy()), 6)
        if 0 < deaths < len(truth)
        else None,
        seconds=SynthSeconds(
            generate=round(generated - started, 2),
            load=round(loaded - generated, 2),
            total=round(time.perf_counter() - started, 2),
        ),
    )
