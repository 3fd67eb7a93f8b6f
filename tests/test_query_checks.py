"""The query stage on real PostgreSQL sources other than the owner's demo: a read-only account, the
official build's partitioned chartevents, sources that lack something, and the window-start setting."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import conninfo, sql
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.database.server import ServerInfo
from lstm_adv.domain.errors import DatabaseError
from lstm_adv.domain.features import FeatureSpec
from lstm_adv.query import cohort_params, item_params, run_cohort_query, statement
from lstm_adv.resources import resource
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore

pytestmark = pytest.mark.db

FILES = ("stays", "admissions", "vitals", "labs", "bloodgas")
TABLES = ("patients", "admissions", "icustays", "chartevents", "labevents")
BUILD = "MIMIC-III v1.4 built with the MIT-LCP mimic-code PostgreSQL scripts"


@pytest.fixture(scope="module")
def owner_run(demo_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The demo queried by the toolkit's own role, which owns the tables."""
    store = RunStore(tmp_path_factory.mktemp("owner"))
    return run_cohort_query(demo_dsn, schema="mimiciii", config=load_config(), store=store, source="embedded")


def _same_files(run: Run, reference: Run) -> None:
    for name in FILES:
        assert run.file(f"{name}.parquet").read_bytes() == reference.file(f"{name}.parquet").read_bytes(), name


def _superuser(server: ServerInfo) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(server.superuser_dsn, autocommit=True)


@contextlib.contextmanager
def _role(server: ServerInfo, *grants: str) -> Iterator[tuple[str, str]]:
    """A login role with a password and only ``grants`` (``{role}`` is its name); yields (name, password)."""
    name, password = f"reader_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with _superuser(server) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), password))
        try:
            for grant in grants:
                conn.execute(grant.format(role=name))
            yield name, password
        finally:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def _no_temp_for_public(server: ServerInfo) -> Iterator[None]:
    """Take TEMP on the database from PUBLIC (a default grant) for the duration; give it back afterwards."""
    with _superuser(server) as conn:
        conn.execute("REVOKE TEMPORARY ON DATABASE postgres FROM PUBLIC")
        try:
            yield
        finally:
            conn.execute("GRANT TEMPORARY ON DATABASE postgres TO PUBLIC")


def _dsn(server: ServerInfo, user: str, dbname: str = "postgres") -> str:
    return f"postgresql://{user}@127.0.0.1:{server.port}/{dbname}"


@contextlib.contextmanager
def _schema(dsn: str, views: dict[str, str], tables: dict[str, str] | None = None) -> Iterator[str]:
    """A throwaway schema of views (table -> SELECT over the demo) and tables (table -> DDL body); dropped after."""
    schema = f"src_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            for table, body in (tables or {}).items():
                conn.execute(sql.SQL(body).format(table=sql.Identifier(schema, table)))
            for table, select in views.items():
                target = sql.Identifier(schema, table)
                conn.execute(sql.SQL("CREATE VIEW {} AS {}").format(target, sql.SQL(select)))
            yield schema
        finally:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _demo_views(*tables: str) -> dict[str, str]:
    return {table: f"SELECT * FROM mimiciii.{table}" for table in tables}


def _where(server: ServerInfo) -> str:
    return f"database postgres at 127.0.0.1:{server.port}"


# --- read-only accounts and the official build --------------------------------------------------------


def test_a_read_only_role_without_temp_gets_the_owners_output(
    pg_server: ServerInfo, demo_dsn: str, owner_run: Run, tmp_path: Path
) -> None:
    """A role with only CONNECT, USAGE and SELECT (no TEMP) runs `lstm-adv query` to the owner's exact Parquet files."""
    grants = (
        "GRANT CONNECT ON DATABASE postgres TO {role}",
        "GRANT USAGE ON SCHEMA mimiciii TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA mimiciii TO {role}",
    )
    with _no_temp_for_public(pg_server), _role(pg_server, *grants) as (role, password):
        with psycopg.connect(_dsn(pg_server, role), password=password) as conn:
            assert conn.execute("SELECT has_database_privilege('postgres', 'TEMP')").fetchone() == (False,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("CREATE TEMP TABLE probe (x int)")
        result = CliRunner().invoke(
            app, ["--home", str(tmp_path), "query", "--dsn", _dsn(pg_server, role)], env={"PGPASSWORD": password}
        )
    assert result.exit_code == 0, result.output
    (run,) = RunStore(tmp_path / "runs").list("query")
    _same_files(run, owner_run)
    assert run.manifest.summary.source == f"postgresql://{role}@127.0.0.1:{pg_server.port}/postgres"


PARTITIONED_CHARTEVENTS = """
CREATE TABLE {table} (LIKE mimiciii.chartevents) PARTITION BY RANGE (itemid);
"""
# itemid ranges in the spirit of mimic-code's build (CareVue items below 220000, MetaVision above)
PARTITIONS = ((0, 200), (200, 1000), (1000, 10000), (10000, 220000), (220000, 225000), (225000, 1000000))


def test_chartevents_partitioned_by_itemid_gives_the_same_output(demo_dsn: str, owner_run: Run, tmp_path: Path) -> None:
    """chartevents as a table range-partitioned by itemid, with indexes (as MIMIC-III's build makes it): same files."""
    views = _demo_views("patients", "admissions", "icustays", "labevents")
    with _schema(demo_dsn, views, {"chartevents": PARTITIONED_CHARTEVENTS}) as schema:
        with psycopg.connect(demo_dsn, autocommit=True) as conn:
            parent = sql.Identifier(schema, "chartevents")
            for number, (low, high) in enumerate(PARTITIONS, start=1):
                conn.execute(
                    sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                        sql.Identifier(schema, f"chartevents_{number}"), parent, low, high
                    )
                )
            conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM mimiciii.chartevents").format(parent))
            conn.execute(sql.SQL("CREATE INDEX ON {} (itemid)").format(parent))
            conn.execute(sql.SQL("CREATE INDEX ON {} (hadm_id)").format(parent))
            conn.execute(sql.SQL("ANALYZE {}").format(parent))
        run = run_cohort_query(demo_dsn, schema=schema, config=load_config(), store=RunStore(tmp_path))
    _same_files(run, owner_run)


# --- what a source lacks: one line each, everything named, nothing written ----------------------------


def _failure(dsn: str, schema: str, tmp_path: Path, *, source: str | None) -> str:
    store = RunStore(tmp_path / "runs")
    with pytest.raises(DatabaseError) as caught:
        run_cohort_query(dsn, schema=schema, config=load_config(), store=store, source=source)
    assert store.list("query") == []
    assert not (store.root / ".tmp").exists() or not any((store.root / ".tmp").iterdir())
    message = str(caught.value)
    assert "\n" not in message
    return message


MISSING_COLUMNS = {
    "chartevents": "SELECT subject_id, hadm_id, icustay_id, itemid, charttime, valuenum FROM mimiciii.chartevents",
    "labevents": "SELECT row_id, subject_id, hadm_id, itemid, charttime, value FROM mimiciii.labevents",
}


@pytest.mark.parametrize("source", [None, "embedded"])
def test_missing_columns_are_all_named_before_anything_is_exported(
    pg_server: ServerInfo, demo_dsn: str, tmp_path: Path, source: str | None
) -> None:
    """chartevents without error and labevents without valuenum: one line naming both columns, hint by source."""
    views = _demo_views("patients", "admissions", "icustays") | MISSING_COLUMNS
    with _schema(demo_dsn, views) as schema:
        message = _failure(demo_dsn, schema, tmp_path, source=source)
    hint = (
        f"reload the demo with `lstm-adv db load-demo --schema {schema}`"
        if source
        else f"{BUILD} has them (tables patients, admissions, icustays, chartevents, labevents); "
        "check that --schema names such a build, or complete it"
    )
    assert message == (
        f"columns {schema}.chartevents.error, {schema}.labevents.valuenum are missing in {_where(pg_server)}; {hint}"
    )


def test_missing_tables_and_columns_are_named_in_one_line(pg_server: ServerInfo, demo_dsn: str, tmp_path: Path) -> None:
    """A schema without chartevents whose labevents lacks valuenum: both in one line, from a user's server."""
    views = _demo_views("patients", "admissions", "icustays") | {"labevents": MISSING_COLUMNS["labevents"]}
    with _schema(demo_dsn, views) as schema:
        message = _failure(demo_dsn, schema, tmp_path, source=None)
    assert message.startswith(
        f"table {schema}.chartevents and column {schema}.labevents.valuenum are missing in {_where(pg_server)}; {BUILD}"
    )


@pytest.mark.parametrize("source", [None, "embedded:mimiciii"])
def test_missing_tables_are_all_named(pg_server: ServerInfo, demo_dsn: str, tmp_path: Path, source: str | None) -> None:
    """A schema lacking chartevents and labevents names both; the embedded hint is to load the demo."""
    with _schema(demo_dsn, _demo_views("patients", "admissions", "icustays")) as schema:
        message = _failure(demo_dsn, schema, tmp_path, source=source)
    hint = (
        f"reload the demo with `lstm-adv db load-demo --schema {schema}`"
        if source
        else f"{BUILD} has them (tables patients, admissions, icustays, chartevents, labevents); "
        "check that --schema names such a build, or complete it"
    )
    assert message == f"tables {schema}.chartevents, {schema}.labevents are missing in {_where(pg_server)}; {hint}"


@pytest.mark.parametrize(
    ("source", "schema", "hint"),
    [
        ("embedded", "mimiciii_x", "load it with `lstm-adv db load-demo --schema mimiciii_x`"),
        (None, "mimic3", f"{BUILD} lives in schema mimiciii; name the schema of your build with --schema"),
    ],
)
def test_a_missing_schema_is_named_with_a_hint_for_its_source(
    pg_server: ServerInfo, demo_dsn: str, tmp_path: Path, source: str | None, schema: str, hint: str
) -> None:
    """A schema that does not exist: the embedded server is told to load the demo, a user's server to name its own."""
    message = _failure(demo_dsn, schema, tmp_path, source=source)
    assert message == f"schema '{schema}' does not exist in {_where(pg_server)}; {hint}"


def test_missing_privileges_are_each_named_with_the_grants_that_fix_them(
    pg_server: ServerInfo, demo_dsn: str, tmp_path: Path
) -> None:
    """A role without USAGE on the schema and SELECT on two tables gets one line listing exactly those."""
    grants = ("GRANT SELECT ON mimiciii.patients, mimiciii.admissions, mimiciii.icustays TO {role}",)
    with _role(pg_server, *grants) as (role, password):
        dsn = conninfo.make_conninfo(_dsn(pg_server, role), password=password)
        message = _failure(dsn, "mimiciii", tmp_path, source=None)
    assert message == (
        f"user '{role}' lacks privileges on {_where(pg_server)}: USAGE on schema mimiciii; "
        "SELECT on mimiciii.chartevents, mimiciii.labevents; ask the database's owner to run "
        f'GRANT USAGE ON SCHEMA "mimiciii" TO "{role}"; '
        f'GRANT SELECT ON "mimiciii"."chartevents", "mimiciii"."labevents" TO "{role}"'
    )


def test_column_privileges_on_every_column_read_are_enough(
    pg_server: ServerInfo, demo_dsn: str, owner_run: Run, tmp_path: Path
) -> None:
    """SELECT granted on just the columns the SQL reads (not the table) passes the check and gives the same files."""
    grants = (
        "GRANT USAGE ON SCHEMA mimiciii TO {role}",
        "GRANT SELECT ON mimiciii.patients, mimiciii.admissions, mimiciii.icustays, mimiciii.chartevents TO {role}",
        "GRANT SELECT (subject_id, hadm_id, itemid, charttime, valuenum) ON mimiciii.labevents TO {role}",
    )
    with _role(pg_server, *grants) as (role, password):
        dsn = conninfo.make_conninfo(_dsn(pg_server, role), password=password)
        run = run_cohort_query(dsn, schema="mimiciii", config=load_config(), store=RunStore(tmp_path))
    _same_files(run, owner_run)


def test_a_database_refusing_connect_is_named_at_connect_time(pg_server: ServerInfo, tmp_path: Path) -> None:
    """A role without CONNECT on the database fails with one line naming that privilege and its grant."""
    database = f"closed_{uuid.uuid4().hex[:8]}"
    with _superuser(pg_server) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        try:
            admin.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
            with _role(pg_server) as (role, password):
                dsn = conninfo.make_conninfo(_dsn(pg_server, role, database), password=password)
                message = _failure(dsn, "mimiciii", tmp_path, source=None)
        finally:
            admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(database)))
    assert message == (
        f"user '{role}' lacks privileges on database {database} at 127.0.0.1:{pg_server.port}: CONNECT on database "
        f'{database}; ask the database\'s owner to run GRANT CONNECT ON DATABASE "{database}" TO "{role}"'
    )


def test_cli_names_missing_columns_in_one_red_line(demo_dsn: str, tmp_path: Path) -> None:
    """`lstm-adv query --dsn … --schema …` on a schema lacking columns exits 1 with the one line, no traceback."""
    views = _demo_views("patients", "admissions", "icustays") | MISSING_COLUMNS
    with _schema(demo_dsn, views) as schema:
        result = CliRunner().invoke(app, ["--home", str(tmp_path), "query", "--dsn", demo_dsn, "--schema", schema])
    assert result.exit_code == 1
    assert f"columns {schema}.chartevents.error, {schema}.labevents.valuenum are missing" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or RunStore(tmp_path / "runs").list("query") == []


# --- the window start ---------------------------------------------------------------------------------

SYNTHETIC_ROWS = (
    "INSERT INTO {schema}.patients (subject_id, dob) VALUES (1, '2040-01-01')",
    "INSERT INTO {schema}.admissions (hadm_id, subject_id, admittime, dischtime, hospital_expire_flag) "
    "VALUES (10, 1, '2100-01-01 06:00', '2100-01-20 12:00', 0)",
    # a first ICU stay of 12 h (excluded: shorter than a day), then a stay of three days (included)
    "INSERT INTO {schema}.icustays (subject_id, hadm_id, icustay_id, intime, outtime) VALUES "
    "(1, 10, 100, '2100-01-01 08:00', '2100-01-01 20:00'), (1, 10, 101, '2100-01-03 00:00', '2100-01-06 00:00')",
    # heart rate in the first stay (39 h before the second stay: outside its window and look-back)
    "INSERT INTO {schema}.chartevents (subject_id, hadm_id, itemid, charttime, valuenum) VALUES "
    "(1, 10, 220045, '2100-01-01 09:30', 88), (1, 10, 220045, '2100-01-03 01:30', 92)",
)


@pytest.mark.parametrize(
    ("setting", "start", "first_stay", "heart_rates"),
    [("all", "2100-01-01 08:00", 100, [88.0, 92.0]), ("included", "2100-01-03 00:00", 101, [92.0])],
)
def test_window_start_follows_the_setting(
    demo_dsn: str, tmp_path: Path, setting: str, start: str, first_stay: int, heart_rates: list[float]
) -> None:
    """An admission whose first ICU stay is under a day starts at that stay ("all") or at the next ("included")."""
    tables = {name: f"CREATE TABLE {{table}} (LIKE mimiciii.{name})" for name in TABLES}
    with _schema(demo_dsn, {}, tables) as schema:
        with psycopg.connect(demo_dsn, autocommit=True) as conn:
            for row in SYNTHETIC_ROWS:
                conn.execute(row.format(schema=schema))  # the schema name is generated here, not user input
        config = load_config(overrides={"cohort.window_start": setting})
        run = run_cohort_query(demo_dsn, schema=schema, config=config, store=RunStore(tmp_path))
    admissions = pq.read_table(run.file("admissions.parquet")).to_pandas()
    assert admissions[["hadm_id", "first_icustay_id", "n_icustays"]].values.tolist() == [[10, first_stay, 1]]
    assert admissions["window_start"].tolist() == [pd.Timestamp(start)]
    vitals = pq.read_table(run.file("vitals.parquet")).to_pandas()
    assert vitals["value"].tolist() == heart_rates
    assert (
        run.manifest.summary.window_start
        == {
            "all": "the earliest ICU intime of the admission (among all its ICU stays)",
            "included": "the earliest ICU intime among the admission's included stays",
        }[setting]
    )
    assert run.manifest.config["cohort"]["window_start"] == setting


# --- parameters are values, never SQL -------------------------------------------------------------------


def test_feature_names_reach_the_sql_as_values_not_as_sql(demo_dsn: str) -> None:
    """A feature name with a quote, a comment marker and a newline comes back unchanged as data (a features file
    refuses such a name; built directly, the SQL still takes it as a value: the queries never splice names)."""
    shipped = FeatureSpec.from_toml(resource("features.toml").read_text(encoding="utf-8"))
    odd = "k'); DROP TABLE x; --\n-- "
    spec = attrs.evolve(shipped, features=(attrs.evolve(shipped.features[0], name=odd), *shipped.features[1:]))
    assert spec.names[0] == odd
    params = {**cohort_params(load_config().cohort), **item_params(spec, "bloodgas")}
    with psycopg.connect(demo_dsn) as conn:
        conn.execute("SET search_path TO mimiciii")
        rows = conn.execute(statement(conn, "bloodgas", params, order="feature")).fetchall()
    assert odd in {row[2] for row in rows}
