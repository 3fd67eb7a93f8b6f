"""The embedded PostgreSQL server: start, status, stop, ports, accounts, and the `db` commands."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.config import EmbeddedConfig
from lstm_adv.database.server import ServerInfo, server_status, start_server, stop_server
from lstm_adv.domain.errors import ServerError

pytestmark = pytest.mark.db


@pytest.fixture
def pg_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh server folder whose server is stopped after the test."""
    folder = tmp_path / "pg"
    yield folder
    stop_server(folder)


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port on 127.0.0.1 held by a listening socket for the duration of the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_start_status_stop_are_idempotent(pg_dir: Path) -> None:
    """Start answers with a connectable server, status finds it, stop stops it once and then reports nothing to stop."""
    info = start_server(pg_dir, EmbeddedConfig())
    assert server_status(pg_dir) == info
    with psycopg.connect(info.dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert stop_server(pg_dir) is True
    assert server_status(pg_dir) is None
    assert stop_server(pg_dir) is False
    assert not (pg_dir / "server.json").exists()


def test_second_start_reuses_the_running_server(pg_server: ServerInfo) -> None:
    """Starting again in the same folder returns the running server (same pid and port) instead of a new one."""
    again = start_server(pg_server.data_dir.parent, EmbeddedConfig())
    assert (again.pid, again.port) == (pg_server.pid, pg_server.port)


def test_state_file_records_the_server(pg_server: ServerInfo) -> None:
    """server.json holds host, port, pid and data folder of the running server."""
    state = json.loads((pg_server.data_dir.parent / "server.json").read_text())
    assert state == {
        "host": "127.0.0.1",
        "port": pg_server.port,
        "pid": pg_server.pid,
        "data_dir": str(pg_server.data_dir),
        "dsn": pg_server.dsn,
    }


def test_port_zero_picks_a_free_port(pg_server: ServerInfo) -> None:
    """With embedded.port = 0 the server listens on a port it picked itself, reachable over TCP."""
    assert 1024 <= pg_server.port <= 65535
    assert pg_server.dsn == f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"
    with socket.create_connection(("127.0.0.1", pg_server.port), timeout=2):
        pass


def test_configured_port_is_used(pg_dir: Path) -> None:
    """A free configured port is the port the server listens on, restarts included."""
    port = _free_port()
    assert start_server(pg_dir, EmbeddedConfig(port=port)).port == port
    stop_server(pg_dir)
    assert start_server(pg_dir, EmbeddedConfig(port=port)).port == port


def test_taken_port_is_reported_and_nothing_starts(pg_dir: Path, listening_port: int) -> None:
    """A configured port that something else holds gives one clear error and leaves no server running."""
    with pytest.raises(ServerError) as caught:
        start_server(pg_dir, EmbeddedConfig(port=listening_port))
    assert str(caught.value) == (
        f"port {listening_port} on 127.0.0.1 is already in use; choose another with --port or set embedded.port = 0"
    )
    assert server_status(pg_dir) is None


def test_long_folder_falls_back_to_tcp_only(tmp_path: Path) -> None:
    """A folder too deep for a unix socket path still gives a working server, on TCP only."""
    folder = tmp_path / ("d" * 100) / "pg"
    try:
        info = start_server(folder, EmbeddedConfig())
        assert info.socket_dir is None
        with psycopg.connect(info.dsn, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        stop_server(folder)


def test_server_runs_as_unprivileged_account(pg_server: ServerInfo) -> None:
    """As root the cluster belongs to an unprivileged account; as a normal user it belongs to that user."""
    owner = pg_server.data_dir.stat().st_uid
    if os.geteuid() == 0:
        assert owner != 0
    else:
        assert owner == os.geteuid()


def test_cli_start_status_stop(tmp_path: Path) -> None:
    """`db start` prints the DSN, a second start says it reuses the server, `db status`/`db stop` report the state."""
    runner = CliRunner()
    home = ["--home", str(tmp_path / "home")]
    try:
        first = runner.invoke(app, [*home, "db", "start"])
        assert first.exit_code == 0, first.output
        info = server_status(tmp_path / "home" / "pg")
        assert info is not None
        assert f"DSN: {info.dsn}" in first.output
        second = runner.invoke(app, [*home, "db", "start"])
        assert "embedded PostgreSQL already running" in second.output
        status = runner.invoke(app, [*home, "db", "status"])
        assert f"port: {info.port}" in status.output
        assert f"DSN: {info.dsn}" in status.output
    finally:
        stopped = runner.invoke(app, [*home, "db", "stop"])
    assert stopped.output == "embedded PostgreSQL stopped\n"
    again = runner.invoke(app, [*home, "db", "stop"])
    assert (again.exit_code, again.output) == (0, "embedded PostgreSQL was not running\n")
    assert "embedded PostgreSQL: stopped" in runner.invoke(app, [*home, "db", "status"]).output


def test_cli_start_on_taken_port_fails_with_one_line(tmp_path: Path, listening_port: int) -> None:
    """`db start --port N` on a taken port exits 1 with the port message and no traceback."""
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "db", "start", "--port", str(listening_port)])
    assert result.exit_code == 1
    assert f"port {listening_port} on 127.0.0.1 is already in use" in result.output
    assert "Traceback" not in result.output


def test_concurrent_starts_share_one_server(pg_dir: Path) -> None:
    """Two starts of the same folder at the same time end with one server that both get."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(lambda _: start_server(pg_dir, EmbeddedConfig()), range(2))
    assert first == second
    assert server_status(pg_dir) == first
