"""Connections: one clear line per failure, no password ever shown, missing schema and tables named."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import conninfo, sql
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.database.connection import connect, describe_source
from lstm_adv.database.server import ServerInfo
from lstm_adv.domain.errors import DatabaseError

PASSWORD = "s3cret-Pa55"
ROLE = "lstm_adv_pwtest"
HINT = "is the server running? for the embedded server run `lstm-adv db start`"


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def password_role(pg_server: ServerInfo) -> Iterator[str]:
    """A login role that must authenticate with a password over TCP (pg_hba: scram-sha-256)."""
    with psycopg.connect(pg_server.superuser_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))
    yield ROLE
    with psycopg.connect(pg_server.superuser_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))


def test_unreachable_server_fails_fast_with_hint() -> None:
    """A closed port is reported within a few seconds with host, port, the reason and a hint."""
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(DatabaseError) as caught:
        connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout_s=3)
    assert time.monotonic() - started < 5
    assert (
        str(caught.value) == f"cannot connect to PostgreSQL at 127.0.0.1:{port} within 3s (Connection refused); {HINT}"
    )


@pytest.mark.db
def test_wrong_password_is_reported_without_echoing_it(pg_server: ServerInfo, password_role: str) -> None:
    """A wrong password gives the user and address and a hint, and never the password itself."""
    wrong = "wr0ng-Guess-42"
    dsn = f"postgresql://{password_role}:{wrong}@127.0.0.1:{pg_server.port}/postgres"
    with pytest.raises(DatabaseError) as caught:
        connect(dsn, timeout_s=5)
    assert str(caught.value) == (
        f"password authentication failed for user '{ROLE}' at 127.0.0.1:{pg_server.port}; "
        "check the password (PGPASSWORD or ~/.pgpass)"
    )
    assert wrong not in str(caught.value)


@pytest.mark.db
def test_right_password_connects(pg_server: ServerInfo, password_role: str) -> None:
    """The password role connects with its password (so the wrong-password test exercises real authentication)."""
    with connect(f"postgresql://{password_role}:{PASSWORD}@127.0.0.1:{pg_server.port}/postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ROLE,)


@pytest.mark.db
def test_missing_password_is_reported(pg_server: ServerInfo, password_role: str) -> None:
    """A role that needs a password but gets none is told where to put it."""
    with pytest.raises(DatabaseError) as caught:
        connect(f"postgresql://{password_role}@127.0.0.1:{pg_server.port}/postgres")
    assert str(caught.value) == (
        f"the server at 127.0.0.1:{pg_server.port} asks for a password for user '{ROLE}' and none was given; "
        "set PGPASSWORD or add it to ~/.pgpass"
    )


@pytest.mark.db
def test_unknown_database_is_named(pg_server: ServerInfo) -> None:
    """Connecting to a database that does not exist names it."""
    with pytest.raises(DatabaseError) as caught:
        connect(conninfo.make_conninfo(pg_server.dsn, dbname="no_such_db"))
    assert str(caught.value) == (
        f"database 'no_such_db' does not exist at 127.0.0.1:{pg_server.port}; check the database name in the DSN"
    )


def test_describe_source_is_canonical_and_password_free() -> None:
    """describe_source gives postgresql://user@host:port/db, with the default port filled in."""
    assert describe_source("postgresql://me:pw@db.example/mimic") == "postgresql://me@db.example:5432/mimic"
    assert describe_source("host=h port=6000 user=u dbname=d password=x") == "postgresql://u@h:6000/d"


def test_invalid_dsn_is_reported_without_repeating_it() -> None:
    """A DSN that is not a connection string gets one line that does not repeat its text."""
    with pytest.raises(DatabaseError) as caught:
        connect("not a dsn secretword")
    assert str(caught.value) == (
        "the DSN is not a valid PostgreSQL connection string; "
        "expected e.g. postgresql://user@host:5432/dbname or 'host=... dbname=...'"
    )


def test_cli_load_demo_unreachable_dsn_fails_with_one_line(tmp_path: object) -> None:
    """`db load-demo --dsn` to a closed port exits 1 with the connection message and no traceback."""
    port = _closed_port()
    dsn = f"postgresql://postgres:hunter2@127.0.0.1:{port}/postgres"
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "db", "load-demo", "--dsn", dsn])
    assert result.exit_code == 1
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output
