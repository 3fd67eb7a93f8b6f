"""The embedded PostgreSQL server: start, status, stop, ports, accounts, passwords and roles, and the `db` commands."""

from __future__ import annotations

import json
import os
import socket
import stat
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.config import EmbeddedConfig
from lstm_adv.database.server import (
    SHELL_SPECIAL,
    ServerInfo,
    check_server_path,
    password_protected,
    server_status,
    start_server,
    stop_server,
)
from lstm_adv.domain.errors import ConfigError, ServerError

pytestmark = pytest.mark.db

# pg_hba.conf as lstm-adv wrote it before it set passwords: local and superuser logins without one.
OLD_HBA = """\
local   all  all                       trust
host    all  postgres  127.0.0.1/32    trust
host    all  postgres  ::1/128         trust
host    all  all       127.0.0.1/32    scram-sha-256
host    all  all       ::1/128         scram-sha-256
"""


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


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def no_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Connection options that give no password: an empty password file, no PGPASSWORD."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    (tmp_path / "empty.pgpass").touch(mode=0o600)
    return {"dbname": "postgres", "passfile": str(tmp_path / "empty.pgpass"), "connect_timeout": "5"}


def test_start_status_stop_are_idempotent(pg_dir: Path) -> None:
    """Start answers with a connectable server, status finds it, stop stops it once and then reports nothing to stop."""
    info = start_server(pg_dir, EmbeddedConfig())
    assert server_status(pg_dir) == info
    with psycopg.connect(info.dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("lstm_adv",)
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
    passfile = urllib.parse.quote(str(pg_server.data_dir.parent / "pgpass"), safe="")
    assert pg_server.dsn == f"postgresql://lstm_adv@127.0.0.1:{pg_server.port}/postgres?passfile={passfile}"
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
        protected = (
            "password-protected: the toolkit logs in as lstm_adv (not a superuser) with the password in "
            f"{info.passfile}, readable by you only"
        )
        assert protected in first.output
        second = runner.invoke(app, [*home, "db", "start"])
        assert "embedded PostgreSQL already running" in second.output
        status = runner.invoke(app, [*home, "db", "status"])
        assert f"port: {info.port}" in status.output
        assert f"DSN: {info.dsn}" in status.output
        assert protected in status.output
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


# --- passwords and roles ---------------------------------------------------------------------------


def test_logins_without_the_password_are_refused(pg_server: ServerInfo, no_password: dict[str, str]) -> None:
    """Neither the superuser nor the toolkit's role gets in without its password, over TCP or the socket."""
    hosts = ["127.0.0.1", *([str(pg_server.socket_dir)] if pg_server.socket_dir else [])]
    for host in hosts:
        for user in ("postgres", "lstm_adv"):
            with pytest.raises(psycopg.OperationalError, match="no password supplied"):
                psycopg.connect(host=host, port=pg_server.port, user=user, **no_password)
    with pytest.raises(psycopg.OperationalError, match='password authentication failed for user "postgres"'):
        psycopg.connect(host="127.0.0.1", port=pg_server.port, user="postgres", password="postgres", **no_password)


def test_superuser_logs_in_with_its_own_password_file(pg_server: ServerInfo) -> None:
    """The superuser's DSN (for setup and administration) logs in with the password in superuser.pgpass."""
    with psycopg.connect(pg_server.superuser_dsn) as conn:
        assert conn.execute("SELECT current_user, usesuper FROM pg_user WHERE usename = current_user").fetchone() == (
            "postgres",
            True,
        )


def test_nothing_trusts_and_private_files_are_private(pg_server: ServerInfo) -> None:
    """pg_hba.conf has no trust line; the folder and socket folder are 0700, the password and state files 0600."""
    pg_dir = pg_server.data_dir.parent
    rules = [line.split() for line in (pg_server.data_dir / "pg_hba.conf").read_text().splitlines()]
    assert [fields for fields in rules if fields and not fields[0].startswith("#") and "trust" in fields] == []
    assert password_protected(pg_dir)
    assert (_mode(pg_dir), _mode(pg_dir / "sock")) == (0o700, 0o700)
    assert (pg_dir / "sock").stat().st_uid == pg_server.data_dir.stat().st_uid
    for name in ("pgpass", "superuser.pgpass", "server.json"):
        assert (_mode(pg_dir / name), (pg_dir / name).stat().st_uid) == (0o600, os.geteuid()), name


def test_dsn_names_the_password_file_not_the_password(pg_server: ServerInfo) -> None:
    """The DSN holds no password, and psycopg and SQLAlchemy (Optuna's storages) both log in with it."""
    password = (pg_server.data_dir.parent / "pgpass").read_text().strip().rsplit(":", 1)[1]
    assert password not in pg_server.dsn
    assert password not in (pg_server.data_dir.parent / "server.json").read_text()
    with psycopg.connect(pg_server.dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("lstm_adv",)
    engine = sqlalchemy.create_engine(pg_server.dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT current_user")).scalar() == "lstm_adv"
    finally:
        engine.dispose()


def test_toolkit_role_is_not_a_superuser(pg_server: ServerInfo) -> None:
    """The toolkit's role is no superuser and cannot run a program on the server with COPY ... TO PROGRAM."""
    with psycopg.connect(pg_server.dsn) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            conn.execute("COPY (SELECT 1) TO PROGRAM 'id'")
    assert caught.value.diag.message_primary == "permission denied to COPY to or from an external program"


def test_toolkit_role_owns_the_demo_schema(demo_dsn: str) -> None:
    """After load_demo the schema mimiciii and its tables belong to the toolkit's role."""
    with psycopg.connect(demo_dsn) as conn:
        schema = conn.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'mimiciii'").fetchone()
        tables = conn.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'mimiciii'").fetchall()
    assert (schema, tables) == (("lstm_adv",), [("lstm_adv",)])


def _make_old_layout(info: ServerInfo) -> None:
    """Turn a cluster back into what an older lstm-adv made: trust, no passwords, no role, data of the superuser."""
    pg_dir = info.data_dir.parent
    with psycopg.connect(info.superuser_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA legacy")
        conn.execute("CREATE TABLE legacy.patients (subject_id serial PRIMARY KEY, gender text)")
        conn.execute("INSERT INTO legacy.patients (gender) VALUES ('F'), ('M')")
        conn.execute("CREATE TYPE public.trialstate AS ENUM ('RUNNING', 'COMPLETE')")
        conn.execute("DROP OWNED BY lstm_adv")
        conn.execute("DROP ROLE lstm_adv")
        (info.data_dir / "pg_hba.conf").write_text(OLD_HBA)
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("ALTER ROLE postgres PASSWORD NULL")
    (pg_dir / "pgpass").unlink()
    (pg_dir / "superuser.pgpass").unlink()
    pg_dir.chmod(0o755)
    (pg_dir / "sock").chmod(0o755)


@pytest.mark.parametrize("running", [False, True], ids=["stopped", "running"])
def test_cluster_of_an_older_version_is_secured_on_start(
    pg_dir: Path, no_password: dict[str, str], running: bool
) -> None:
    """Starting a trusting cluster without roles, stopped or running, turns on passwords and hands its data over."""
    old = start_server(pg_dir, EmbeddedConfig())
    _make_old_layout(old)
    with psycopg.connect(host="127.0.0.1", port=old.port, user="postgres", **no_password) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)  # the old hole is open
    assert not password_protected(pg_dir)
    if not running:
        stop_server(pg_dir)
    info = start_server(pg_dir, EmbeddedConfig())
    assert password_protected(pg_dir)
    assert info.pid != old.pid
    assert (_mode(pg_dir), _mode(pg_dir / "sock")) == (0o700, 0o700)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(host="127.0.0.1", port=info.port, user="postgres", **no_password)
    with psycopg.connect(info.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM legacy.patients").fetchone() == (2,)
        owners = conn.execute(
            "SELECT nspowner::regrole::text, (SELECT tableowner FROM pg_tables WHERE tablename = 'patients'), "
            "(SELECT typowner::regrole::text FROM pg_type WHERE typname = 'trialstate') "
            "FROM pg_namespace WHERE nspname = 'legacy'"
        ).fetchone()
    assert owners == ("lstm_adv", "lstm_adv", "lstm_adv")
    with psycopg.connect(info.superuser_dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_damaged_password_file_is_reported(tmp_path: Path) -> None:
    """A password file that lstm-adv did not write is named, with the way to get a new one."""
    folder = tmp_path / "pg"
    folder.mkdir()
    (folder / "pgpass").write_text("*:*:*:lstm_adv:it's\n")
    with pytest.raises(ServerError) as caught:
        start_server(folder, EmbeddedConfig())
    assert str(caught.value) == (
        f"the password file {folder / 'pgpass'} is garbled: it must hold one line '*:*:*:lstm_adv:<password>' as "
        "lstm-adv writes it; delete it and run `lstm-adv db start` to make a new password"
    )


def test_a_garbled_password_file_says_so_and_deleting_it_gives_a_working_new_password(pg_dir: Path) -> None:
    """A running server whose password file was garbled: connecting says "garbled" (not "no password was given");
    the fix it names (stop, delete the file, start) makes a new password that the cluster is told of."""
    from lstm_adv.database.connection import connect
    from lstm_adv.domain.errors import DatabaseError

    info = start_server(pg_dir, EmbeddedConfig())
    old = (pg_dir / "pgpass").read_text()
    (pg_dir / "pgpass").write_text("this is not a password line\n")
    with pytest.raises(DatabaseError) as caught:
        connect(info.dsn)
    message = str(caught.value)
    assert "password file" in message
    assert "is garbled or unreadable" in message
    assert "\n" not in message
    stop_server(pg_dir)
    (pg_dir / "pgpass").unlink()
    info = start_server(pg_dir, EmbeddedConfig())
    assert (pg_dir / "pgpass").read_text() != old
    with connect(info.dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("lstm_adv",)


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20))
def test_a_server_folder_is_accepted_or_refused_in_one_line(name: str) -> None:
    """Any folder name: either PostgreSQL's tools can take it (no quote, $, `, \\ or control character), or it is
    refused in one line that names the characters; nothing in between."""
    path = Path("/tmp") / name.replace("/", "_").replace("\x00", "_")
    dangerous = any(c in SHELL_SPECIAL or not c.isprintable() for c in str(path))
    if not dangerous:
        check_server_path(path)
        return
    with pytest.raises(ServerError) as info:
        check_server_path(path)
    assert "\n" not in str(info.value)
    assert "holds characters PostgreSQL's tools would hand to a shell" in str(info.value)


def test_a_home_that_would_inject_a_shell_command_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    """`--home '…/x"$(id>…/INJ)"y' db start` runs no command: one line, exit code 1, no file written by it."""
    marker = tmp_path / "INJ"
    home = tmp_path / f'x"$(id>{marker})"y'
    result = CliRunner().invoke(app, ["--home", str(home), "db", "start"])
    assert result.exit_code == 1
    assert "holds characters PostgreSQL's tools would hand to a shell ('\"' '$')" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists()


def test_a_home_with_spaces_and_an_apostrophe_starts(tmp_path: Path) -> None:
    """Spaces and apostrophes in the folder are fine: the server starts there and stops."""
    pg_dir = tmp_path / "Dr O'Neil's study" / "pg"
    info = start_server(pg_dir, EmbeddedConfig())
    try:
        with psycopg.connect(info.dsn, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        stop_server(pg_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file another user owns needs root")
def test_a_password_file_another_user_made_is_refused_not_repaired(tmp_path: Path) -> None:
    """A pg/pgpass pre-seeded by another account stops the start with one line naming the path, its owner and the
    fix; the file is left as it was (owner and mode)."""
    import pwd

    pg_dir = tmp_path / "pg"
    pg_dir.mkdir(mode=0o700)
    planted = pg_dir / "pgpass"
    planted.write_text("*:*:*:lstm_adv:known-to-the-attacker\n", encoding="utf-8")
    nobody = pwd.getpwnam("nobody")
    os.chown(planted, nobody.pw_uid, nobody.pw_gid)
    planted.chmod(0o644)
    with pytest.raises(ServerError) as info:
        start_server(pg_dir, EmbeddedConfig())
    assert str(info.value) == (
        f"the password file {planted} belongs to nobody (uid {nobody.pw_uid}), not to you or the server's account; "
        f"it may be another user's: check it, then remove it (`rm -r {planted}`) and run `lstm-adv db start` again"
    )
    assert planted.stat().st_uid == nobody.pw_uid
    assert stat.S_IMODE(planted.stat().st_mode) == 0o644


def test_a_password_file_others_may_write_is_refused(tmp_path: Path) -> None:
    """Even our own password file is refused when others may write it (someone could have changed it)."""
    pg_dir = tmp_path / "pg"
    pg_dir.mkdir(mode=0o700)
    (pg_dir / "superuser.pgpass").write_text("*:*:*:postgres:x\n", encoding="utf-8")
    (pg_dir / "superuser.pgpass").chmod(0o666)
    with pytest.raises(ServerError, match=r"may be written by other users \(mode -rw-rw-rw-\); close it"):
        start_server(pg_dir, EmbeddedConfig())


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as a system account only under root")
def test_each_home_gets_its_own_account_and_stop_takes_back_the_folder_modes(tmp_path: Path) -> None:
    """Under root two homes get two server accounts; a closed folder above a home gets o+x for the start, said in
    the log, and `db stop` takes it back."""
    from lstm_adv.database.server import service_account_name

    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    pg_dir = closed / "home" / "pg"
    assert service_account_name(pg_dir) != service_account_name(tmp_path / "other" / "pg")
    start_server(pg_dir, EmbeddedConfig())
    try:
        assert closed.stat().st_mode & stat.S_IXOTH
        assert (pg_dir / "data").stat().st_uid == pwd_uid(service_account_name(pg_dir))
    finally:
        stop_server(pg_dir)
    assert not closed.stat().st_mode & stat.S_IXOTH


def pwd_uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


@pytest.mark.db
def test_the_embedded_dsn_works_whatever_the_libpq_environment_says(
    pg_server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGPASSWORD, PGPASSFILE, PGUSER, PGHOST, PGSERVICE and PGSSLMODE set for another server do not break the
    toolkit's connections to its embedded server: its password and settings are passed explicitly."""
    from lstm_adv.database.connection import connect

    for name, value in {
        "PGPASSWORD": "for-the-hospital-server",
        "PGPASSFILE": "/nonexistent/pgpass",
        "PGUSER": "someone",
        "PGHOST": "10.255.255.1",
        "PGSERVICE": "hospital",
        "PGSSLMODE": "require",
    }.items():
        monkeypatch.setenv(name, value)
    with connect(pg_server.dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("lstm_adv",)
    assert os.environ["PGSERVICE"] == "hospital"  # put back after the connection


def test_the_embedded_server_listens_on_loopback_only() -> None:
    """embedded.host accepts loopback addresses only; 0.0.0.0 (every interface) is one line."""
    assert EmbeddedConfig(host="::1").host == "::1"
    with pytest.raises(ConfigError, match=r"embedded.host must be a loopback address .* got '0.0.0.0'"):
        EmbeddedConfig(host="0.0.0.0")
