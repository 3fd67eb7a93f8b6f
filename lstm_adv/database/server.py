"""The embedded PostgreSQL server: a private, password-protected cluster in a project-local folder.

The binaries come from the ``pgserver`` wheel (PostgreSQL 16); this module drives them itself
(``initdb``, ``pg_ctl``, ``postgres --single``) so that it controls the port, the socket folder, the
account and the roles. Layout of ``pg_dir``, which only its owner may enter (mode 0700)::

    pg_dir/data/             the cluster (PGDATA)
    pg_dir/sock/             the unix socket, 0700 (left out when its path would be too long)
    pg_dir/server.log        the server's log
    pg_dir/server.json       host, port, pid, data folder and DSN of the last start (0600)
    pg_dir/pgpass            the password of the toolkit's role ``lstm_adv``, a libpq password file (0600)
    pg_dir/superuser.pgpass  the password of the superuser ``postgres``, for administration only (0600)

Every role gives its password (scram-sha-256), on TCP and on the socket; pg_hba.conf trusts no one.
The passwords are random, made on first start. The toolkit connects as ``lstm_adv``: not a
superuser, allowed to create schemas in the database, and the owner of those it creates. Its DSN
names the password file (``?passfile=...``), never the password, so the DSN can be printed, logged
and stored. The superuser only serves the setup, which runs in single-user mode while the server is
down: set both passwords, create the role, hand it what the superuser owns outside the system
schemas. A cluster made by an older lstm-adv (trusting local connections, no role) gets this setup
on its next start; if it is running, it is restarted for it.

PostgreSQL refuses to run as root. Under root the server runs as a dedicated system account
(``lstm-adv-pg``, created when missing; ``nobody`` if that fails), which owns ``pg_dir``; root, the
client, still reaches the socket and owns the password files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from lstm_adv.config import EmbeddedConfig
from lstm_adv.domain.errors import ServerError

log = logging.getLogger(__name__)

PG_USER = "postgres"
PG_DATABASE = "postgres"
ROLE = "lstm_adv"
PASSFILE = "pgpass"
SUPERUSER_PASSFILE = "superuser.pgpass"
SERVICE_ACCOUNT = "lstm-adv-pg"
FALLBACK_ACCOUNT = "nobody"
STATE_FILE = "server.json"
#: The ancestors of pg_dir that a start made traversable for the server account, undone by ``db stop``.
WIDENED_FILE = "widened.json"
# sun_path holds 108 bytes including the terminating NUL.
_SOCKET_PATH_MAX = 107
_SOCKET_NAME_LEN = len("/.s.PGSQL.65535")
_PORT_RETRIES = 3

_PASSWORD = re.compile(r"[A-Za-z0-9_-]{32,}")

_HBA = """\
# Written by lstm-adv: every role gives its password, on the socket and on TCP alike.
local   all  all                   scram-sha-256
host    all  all   127.0.0.1/32    scram-sha-256
host    all  all   ::1/128         scram-sha-256
"""

# Hands the toolkit's role what the superuser owns outside the system schemas: the schemas and
# tables an older lstm-adv loaded as the superuser, and Optuna's tables and enum types. Sequences
# and indexes of a table follow it.
_HAND_OVER = f"""\
DO $$
DECLARE
    command text;
BEGIN
    FOR command IN
        WITH user_schemas AS (
            SELECT oid, nspname, nspowner FROM pg_namespace
            WHERE left(nspname, 3) <> 'pg_' AND nspname <> 'information_schema'
        )
        SELECT format('ALTER SCHEMA %I OWNER TO {ROLE}', nspname) FROM user_schemas
        WHERE nspowner = '{PG_USER}'::regrole
        UNION ALL
        SELECT format('ALTER TABLE %s OWNER TO {ROLE}', c.oid::regclass)
        FROM pg_class c JOIN user_schemas s ON s.oid = c.relnamespace
        WHERE c.relowner = '{PG_USER}'::regrole AND (c.relkind IN ('r', 'p', 'v', 'm', 'f') OR c.relkind = 'S'
            AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.deptype IN ('a', 'i')))
        UNION ALL
        SELECT format('ALTER TYPE %s OWNER TO {ROLE}', t.oid::regtype)
        FROM pg_type t JOIN user_schemas s ON s.oid = t.typnamespace
        WHERE t.typowner = '{PG_USER}'::regrole AND t.typtype IN ('e', 'd', 'r')
    LOOP
        EXECUTE command;
    END LOOP;
END $$"""


@attrs.frozen
class ServerInfo:
    """A running embedded server."""

    host: str
    port: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(1), attrs.validators.le(65535)))
    pid: int = attrs.field(validator=attrs.validators.ge(1))
    data_dir: Path
    socket_dir: Path | None = None

    @property
    def passfile(self) -> Path:
        """The libpq password file holding the password of the toolkit's role (mode 0600)."""
        return self.data_dir.parent / PASSFILE

    @property
    def dsn(self) -> str:
        """The toolkit's URL: role ``lstm_adv``, whose password libpq reads from :attr:`passfile`.

        E.g. ``postgresql://lstm_adv@127.0.0.1:54321/postgres?passfile=%2Fhome%2Fme%2F.lstm-adv%2Fpg%2Fpgpass``;
        it holds no password, so it may be printed, logged and stored.
        """
        return _url(ROLE, self.host, self.port, self.passfile)

    @property
    def superuser_dsn(self) -> str:
        """The superuser's URL, for administration only (password in ``superuser.pgpass``)."""
        return _url(PG_USER, self.host, self.port, self.data_dir.parent / SUPERUSER_PASSFILE)


def _url(user: str, host: str, port: int, passfile: Path) -> str:
    # Slashes are percent-encoded too: libpq and SQLAlchemy both decode them, and SQLAlchemy renders
    # the URL back (e.g. into a tuning run's manifest) exactly as written here.
    quoted = urllib.parse.quote(str(passfile), safe="")
    return f"postgresql://{user}@{host}:{port}/{PG_DATABASE}?passfile={quoted}"


@attrs.frozen
class _Passwords:
    """The passwords of the superuser and of the toolkit's role (left out of ``repr``)."""

    superuser: str = attrs.field(repr=False)
    role: str = attrs.field(repr=False)
    #: Whether either password was just made (its file was missing): the cluster must be told it.
    fresh: bool = False


@attrs.frozen
class _Account:
    """The OS account that runs the server (``None`` in fields = the current user)."""

    name: str
    uid: int | None = None
    gid: int | None = None


def pg_bin_dir() -> Path:
    """The folder of the PostgreSQL binaries shipped by the ``pgserver`` package."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("the embedded PostgreSQL needs the package pgserver; reinstall lstm-adv")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").exists():
        raise ServerError(f"the PostgreSQL binaries are missing from {bin_dir}; reinstall pgserver")
    return bin_dir


def start_server(pg_dir: Path, config: EmbeddedConfig) -> ServerInfo:
    """Start the embedded server in ``pg_dir`` (creating the cluster on first use); reuse a running one.

    ``config.port`` 0 picks a free port; a taken configured port raises :class:`ServerError`. A
    cluster without password authentication (made by an older lstm-adv) is set up first, and
    restarted for it if it runs.
    """
    pg_dir = pg_dir.absolute()
    check_server_path(pg_dir)
    running = server_status(pg_dir)
    if running is not None and password_protected(pg_dir):
        return _reuse(running, config)
    if config.port and running is None:
        _choose_port(config)  # a taken port fails before anything is written
    with _start_lock(pg_dir):
        return _start_locked(pg_dir, config)


#: Characters PostgreSQL's own tools cannot take in a path: initdb and pg_ctl hand the data folder to a shell
#: inside double quotes, where these keep a meaning (a ``"$(cmd)"`` in a folder name would run ``cmd``).
SHELL_SPECIAL = frozenset('"$`\\')


def check_server_path(pg_dir: Path) -> None:
    """Refuse, in one line, a server folder whose path PostgreSQL's tools would pass unsafely to a shell.

    Refused: the characters of :data:`SHELL_SPECIAL`, control characters (a newline ends a shell command)
    and bytes that are not UTF-8. Spaces, quotes ``'`` and other printable characters are fine.
    """
    text = str(pg_dir.absolute())
    bad = sorted({c for c in text if c in SHELL_SPECIAL or not c.isprintable() or "\udc80" <= c <= "\udcff"})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise ServerError(
            f"the embedded server's folder {text.encode('utf-8', 'backslashreplace').decode()!r} holds characters "
            f"PostgreSQL's tools would hand to a shell ({shown}); choose a --home without them"
        )


def _start_locked(pg_dir: Path, config: EmbeddedConfig) -> ServerInfo:
    running = server_status(pg_dir)  # another process may have started it meanwhile
    if running is not None and password_protected(pg_dir):
        return _reuse(running, config)
    if running is not None:
        log.warning("restarting the embedded PostgreSQL in %s to turn on password authentication", pg_dir)
        stop_server(pg_dir)
    account = _server_account(pg_dir / "data")
    _prepare_folders(pg_dir, account)
    passwords = _ensure_passwords(pg_dir)
    if not (pg_dir / "data" / "PG_VERSION").exists():
        _init_cluster(pg_dir, account, passwords)
    elif not password_protected(pg_dir) or passwords.fresh:
        _secure_cluster(pg_dir, pg_dir / "data", account, passwords)  # also sets a password just made
        log.warning("the embedded PostgreSQL in %s now asks every role for its password", pg_dir)
    info = _start_on_free_port(pg_dir, config, account)
    _write_state(pg_dir, info)
    log.info("embedded PostgreSQL running at %s (pid %d)", info.dsn, info.pid)
    return info


def _reuse(running: ServerInfo, config: EmbeddedConfig) -> ServerInfo:
    if config.port and config.port != running.port:
        log.warning("the embedded server already runs on port %d; stop it to change the port", running.port)
    return running


@contextlib.contextmanager
def _start_lock(pg_dir: Path) -> Iterator[None]:
    """Serialize starts of the same folder across processes."""
    try:
        pg_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = os.fdopen(os.open(pg_dir / ".start.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a")
    except OSError as exc:
        raise ServerError(f"cannot create the embedded server's folder {pg_dir}: {exc.strerror}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_server(pg_dir: Path, config: EmbeddedConfig) -> ServerInfo:
    """The running embedded server of ``pg_dir``, started if needed."""
    return start_server(pg_dir, config)


def password_protected(pg_dir: Path) -> bool:
    """Whether the cluster in ``pg_dir`` asks every role for its password and both password files exist."""
    pg_dir = pg_dir.absolute()
    hba = pg_dir / "data" / "pg_hba.conf"
    if not all(path.exists() for path in (hba, pg_dir / PASSFILE, pg_dir / SUPERUSER_PASSFILE)):
        return False
    lines = (line.split("#", 1)[0].split() for line in hba.read_text(encoding="utf-8").splitlines())
    return not any("trust" in fields for fields in lines)


def server_status(pg_dir: Path) -> ServerInfo | None:
    """The running server of ``pg_dir``, or ``None`` when none runs (or it does not accept connections)."""
    data_dir = pg_dir.absolute() / "data"
    lock = _read_postmaster_pid(data_dir)
    if lock is None:
        return None
    pid, port, socket_dir, ready = lock
    host = _read_state(pg_dir).get("host", "127.0.0.1")
    if not (ready and _pid_alive(pid) and _accepts_tcp(str(host), port)):
        return None
    return ServerInfo(host=str(host), port=port, pid=pid, data_dir=data_dir, socket_dir=socket_dir)


def stop_server(pg_dir: Path, *, timeout_s: int = 60) -> bool:
    """Stop the server of ``pg_dir``; ``False`` when none was running."""
    pg_dir = pg_dir.absolute()
    running = server_status(pg_dir)
    if running is None:
        (pg_dir / STATE_FILE).unlink(missing_ok=True)
        return False
    account = _server_account(running.data_dir)
    result = _run(
        [str(pg_bin_dir() / "pg_ctl"), "stop", "-D", str(running.data_dir), "-m", "fast", "-w", "-t", str(timeout_s)],
        account,
        cwd=pg_dir,
        timeout_s=timeout_s + 10,
    )
    if result.returncode != 0:
        raise ServerError(
            f"cannot stop the embedded server (pid {running.pid}) in {pg_dir}: {_last_line(result.stderr)}"
        )
    (pg_dir / STATE_FILE).unlink(missing_ok=True)
    _restore_widened(pg_dir)
    log.info("embedded PostgreSQL (pid %d) stopped", running.pid)
    return True


# --- accounts and folders ---------------------------------------------------------------------------


def _server_account(data_dir: Path) -> _Account | None:
    """``None`` (run as ourselves) unless we are root; then the data folder's owner or this home's service account."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(FileNotFoundError):
        owner = data_dir.stat().st_uid
        if owner != 0:
            entry = pwd.getpwuid(owner)
            return _Account(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)
    return _service_account(service_account_name(data_dir.parent))


def service_account_name(pg_dir: Path) -> str:
    """The system account of one home's server (root only): ``lstm-adv-pg-`` and 8 hex digits of the folder's
    path, so that no server can read another home's cluster."""
    digest = hashlib.sha256(os.fsencode(pg_dir.absolute())).hexdigest()[:8]
    return f"{SERVICE_ACCOUNT}-{digest}"


def _service_account(name: str) -> _Account:
    """The home's system account, created when missing; ``nobody`` when it cannot be created."""
    for attempt in range(2):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _Account(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)
        if attempt == 0 and _create_service_account(name):
            continue
        break
    log.warning("cannot create the system account %s; running PostgreSQL as %s", name, FALLBACK_ACCOUNT)
    entry = pwd.getpwnam(FALLBACK_ACCOUNT)
    return _Account(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def _create_service_account(name: str) -> bool:
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if result.returncode == 0:
        log.warning("created the system account %s to run the embedded PostgreSQL (it refuses root)", name)
    return result.returncode == 0


def _check_owned(path: Path, allowed: set[int], what: str) -> None:
    """Refuse, in one line, a file or folder that another account owns, that is a link, or that others may write.

    Nothing of another user is ever repaired silently: their file could hold their password or their data.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ServerError(f"cannot check the {what} {path}: {exc.strerror}") from None
    owner = _account_name(info.st_uid)
    if stat.S_ISLNK(info.st_mode):
        raise ServerError(f"the {what} {path} is a symbolic link (owned by {owner}); remove it (`rm {path}`)")
    if info.st_uid not in allowed:
        raise ServerError(
            f"the {what} {path} belongs to {owner}, not to you or the server's account; it may be another user's: "
            f"check it, then remove it (`rm -r {path}`) and run `lstm-adv db start` again"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ServerError(
            f"the {what} {path} may be written by other users (mode {stat.filemode(info.st_mode)}); "
            f"close it (`chmod go-w {path}`) after checking its content"
        )


def _account_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _trusted_accounts(account: _Account | None) -> set[int]:
    """Who may own what the server folder holds: we, and the server's account when it runs as another."""
    owners = {os.geteuid()}
    if account is not None and account.uid is not None:
        owners.add(account.uid)
    return owners


def _prepare_folders(pg_dir: Path, account: _Account | None) -> None:
    """Create ``pg_dir`` (and its socket folder) owned by the server's account and closed to everyone else.

    Existing folders and password files must belong to us or to the server's account (see :func:`_check_owned`).
    """
    trusted = _trusted_accounts(account)
    for path, what in ((pg_dir, "server folder"), (pg_dir / "sock", "socket folder"), (pg_dir / "data", "data folder")):
        _check_owned(path, trusted, what)
    for name in (PASSFILE, SUPERUSER_PASSFILE):
        _check_owned(pg_dir / name, {os.geteuid()}, "password file")
    try:
        pg_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (pg_dir / "sock").mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ServerError(f"cannot create the embedded server's folder {pg_dir}: {exc.strerror}") from None
    for path in (pg_dir, pg_dir / "sock"):
        path.chmod(0o700)  # also closes the folders of a cluster made by an older lstm-adv
    if account is None or account.uid is None or account.gid is None:
        return
    for path in (pg_dir, pg_dir / "sock"):
        os.chown(path, account.uid, account.gid)
    _make_traversable(pg_dir, account)


def _make_traversable(pg_dir: Path, account: _Account) -> None:
    """Add o+x to each ancestor of ``pg_dir`` that the server account could not pass through, say so, and record
    it in ``pg_dir/widened.json`` so that ``db stop`` takes it back."""
    widened = _widened(pg_dir)
    for path in (pg_dir.parent, *pg_dir.parent.parents):
        mode = path.stat().st_mode
        if mode & stat.S_IXOTH or path.stat().st_uid == account.uid:
            continue
        path.chmod(mode | stat.S_IXOTH)
        widened.append(str(path))
        log.warning(
            "made %s traversable (o+x) so that the account %s can reach its data folder; `lstm-adv db stop` "
            "takes it back",
            path,
            account.name,
        )
    _write_private(pg_dir / WIDENED_FILE, json.dumps(sorted(set(widened))))


def _widened(pg_dir: Path) -> list[str]:
    try:
        value = json.loads((pg_dir / WIDENED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [str(item) for item in value] if isinstance(value, list) else []


def _restore_widened(pg_dir: Path) -> None:
    """Take back the o+x a start added to the folders above ``pg_dir``."""
    for name in _widened(pg_dir):
        path = Path(name)
        with contextlib.suppress(OSError):
            path.chmod(path.stat().st_mode & ~stat.S_IXOTH)
            log.warning("took back o+x of %s (added when the embedded server started)", path)
    (pg_dir / WIDENED_FILE).unlink(missing_ok=True)


def _socket_dir(pg_dir: Path) -> Path | None:
    folder = pg_dir / "sock"
    if len(os.fsencode(folder)) + _SOCKET_NAME_LEN > _SOCKET_PATH_MAX:
        log.info("socket folder path %s is too long for a unix socket; the server listens on TCP only", folder)
        return None
    return folder


# --- passwords and roles ----------------------------------------------------------------------------


def _ensure_passwords(pg_dir: Path) -> _Passwords:
    """Both passwords, from their files in ``pg_dir``; a missing file is made with a new random password."""
    missing = not (pg_dir / SUPERUSER_PASSFILE).exists() or not (pg_dir / PASSFILE).exists()
    return _Passwords(
        superuser=_ensure_passfile(pg_dir / SUPERUSER_PASSFILE, PG_USER),
        role=_ensure_passfile(pg_dir / PASSFILE, ROLE),
        fresh=missing,
    )


def _ensure_passfile(path: Path, user: str) -> str:
    """The password of ``user`` in the libpq password file ``path``, made when missing; the file is kept 0600.

    An existing file must be ours (:func:`_check_owned`): one another user made would let them log in.
    """
    _check_owned(path, {os.geteuid()}, "password file")
    try:
        if not path.exists():
            _write_private(path, f"*:*:*:{user}:{secrets.token_urlsafe(32)}\n")
            log.info("made a new password for the role %s in %s", user, path)
        path.chmod(0o600)  # libpq ignores a password file that others may read
        fields = path.read_text(encoding="utf-8").strip().split(":")
    except OSError as exc:
        raise ServerError(f"cannot write or read the password file {path}: {exc.strerror}; check its owner") from None
    if len(fields) != 5 or fields[3] != user or not _PASSWORD.fullmatch(fields[4]):
        raise ServerError(
            f"the password file {path} is garbled: it must hold one line '*:*:*:{user}:<password>' as lstm-adv "
            "writes it; delete it and run `lstm-adv db start` to make a new password"
        )
    return fields[4]


def _secure_cluster(pg_dir: Path, data_dir: Path, account: _Account | None, passwords: _Passwords) -> None:
    """Set the passwords and the toolkit's role up (server down), then make pg_hba.conf ask for passwords."""
    command = [
        str(pg_bin_dir() / "postgres"),
        "--single",
        "-D",
        str(data_dir),
        "-j",
        "-c",
        "exit_on_error=on",
        # the failing statement would hold the passwords: never log it
        "-c",
        "log_min_error_statement=panic",
        PG_DATABASE,
    ]
    result = _run(command, account, cwd=pg_dir, timeout_s=120, stdin_text=_setup_script(passwords))
    if result.returncode != 0:
        reason = _last_line(result.stderr).split("FATAL:", 1)[-1].strip()
        raise ServerError(f"cannot set up the roles of the embedded database in {data_dir}: {reason}")
    # Written last: until it is, the next start sees an unprotected cluster and runs the setup again.
    _write_private(data_dir / "pg_hba.conf", _HBA, account)


def _setup_script(passwords: _Passwords) -> str:
    """SQL for ``postgres --single -j``: statements end with a semicolon and a blank line."""
    statements = [
        f"ALTER ROLE {PG_USER} PASSWORD '{passwords.superuser}'",
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN CREATE ROLE {ROLE}; "
        "END IF; END $$",
        f"ALTER ROLE {ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
        f"PASSWORD '{passwords.role}'",
        f"GRANT CREATE ON DATABASE {PG_DATABASE} TO {ROLE}",
        f"GRANT USAGE, CREATE ON SCHEMA public TO {ROLE}",  # Optuna keeps its tables in public
        _HAND_OVER,
    ]
    return "".join(f"{statement};\n\n" for statement in statements)


def _write_private(path: Path, text: str, account: _Account | None = None) -> None:
    """Replace ``path`` atomically by a file only its owner may read: ``account``, else the current user."""
    temporary = path.with_name(f"{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
        handle.write(text)
    if account is not None and account.uid is not None and account.gid is not None:
        os.chown(temporary, account.uid, account.gid)
    temporary.replace(path)


# --- the cluster ------------------------------------------------------------------------------------


def _init_cluster(pg_dir: Path, account: _Account | None, passwords: _Passwords) -> None:
    """``initdb`` and the setup in a temporary folder, then rename: an interrupted init leaves no half cluster."""
    staging = pg_dir / "data.initdb"
    _remove_tree(staging)
    command = [
        # "reject" lets no one in until _secure_cluster has set the passwords and written pg_hba.conf
        str(pg_bin_dir() / "initdb"),
        "-D",
        str(staging),
        "-U",
        PG_USER,
        "-A",
        "reject",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
        "--no-instructions",
    ]
    result = _run(command, account, cwd=pg_dir, timeout_s=120)
    if result.returncode != 0:
        _remove_tree(staging)
        raise ServerError(f"cannot create the embedded database cluster in {pg_dir}: {_last_line(result.stderr)}")
    with (staging / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# Settings written by lstm-adv at each start.\ninclude_if_exists = 'lstm_adv.conf'\n")
    _secure_cluster(pg_dir, staging, account, passwords)
    staging.rename(pg_dir / "data")
    log.info("created the embedded database cluster in %s", pg_dir / "data")


def _remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _write_settings(data_dir: Path, host: str, port: int, socket_dir: Path | None, account: _Account | None) -> None:
    lines = {
        "listen_addresses": host,
        "port": str(port),
        "unix_socket_directories": str(socket_dir) if socket_dir else "",
        "unix_socket_permissions": "0700",
        "synchronous_commit": "off",
        "maintenance_work_mem": "256MB",
        "max_wal_size": "2GB",
        "TimeZone": "UTC",
    }
    text = "".join(f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n" for key, value in lines.items())
    _write_private(data_dir / "lstm_adv.conf", text, account)


def _start_on_free_port(pg_dir: Path, config: EmbeddedConfig, account: _Account | None) -> ServerInfo:
    """Start the server; with ``config.port`` 0, retry on another free port if one is taken meanwhile."""
    for attempt in range(_PORT_RETRIES):
        port = _choose_port(config)
        _write_settings(pg_dir / "data", config.host, port, _socket_dir(pg_dir), account)
        info = _pg_ctl_start(pg_dir, config, account)
        if info is not None:
            return info
        if config.port or attempt == _PORT_RETRIES - 1 or not _log_says_port_taken(pg_dir):
            break
    raise ServerError(
        f"the embedded PostgreSQL server in {pg_dir} did not start within {config.start_timeout_s}s: "
        f"{_last_log_line(pg_dir)}; see {pg_dir / 'server.log'}"
    )


def _pg_ctl_start(pg_dir: Path, config: EmbeddedConfig, account: _Account | None) -> ServerInfo | None:
    command = [
        str(pg_bin_dir() / "pg_ctl"),
        "start",
        "-D",
        str(pg_dir / "data"),
        "-l",
        str(pg_dir / "server.log"),
        "-w",
        "-t",
        str(config.start_timeout_s),
    ]
    try:
        _run(command, account, cwd=pg_dir, timeout_s=config.start_timeout_s + 15)
    except subprocess.TimeoutExpired:
        return None
    return server_status(pg_dir)


def _choose_port(config: EmbeddedConfig) -> int:
    """``config.port`` if free (else :class:`ServerError`), or a free port when it is 0."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((config.host, config.port))
            return int(probe.getsockname()[1])
    except OSError:
        if config.port == 0:
            raise ServerError(f"cannot find a free TCP port on {config.host} for the embedded server") from None
        raise ServerError(
            f"port {config.port} on {config.host} is already in use; "
            "choose another with --port or set embedded.port = 0"
        ) from None


def _log_says_port_taken(pg_dir: Path) -> bool:
    return "Address already in use" in _read_log_tail(pg_dir)


def _last_log_line(pg_dir: Path) -> str:
    lines = [line for line in _read_log_tail(pg_dir).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no log output"


def _read_log_tail(pg_dir: Path) -> str:
    try:
        with (pg_dir / "server.log").open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


# --- state ------------------------------------------------------------------------------------------


def _read_postmaster_pid(data_dir: Path) -> tuple[int, int, Path | None, bool] | None:
    """(pid, port, socket folder, ready) from the server's lock file ``postmaster.pid``."""
    try:
        lines = (data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    socket_dir = Path(lines[4]) if len(lines) > 4 and lines[4].strip() else None
    ready = len(lines) > 7 and lines[7].strip() == "ready"
    return pid, port, socket_dir, ready


def _read_state(pg_dir: Path) -> dict[str, object]:
    try:
        state = json.loads((pg_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(pg_dir: Path, info: ServerInfo) -> None:
    state = {"host": info.host, "port": info.port, "pid": info.pid, "data_dir": str(info.data_dir), "dsn": info.dsn}
    _write_private(pg_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


# --- processes --------------------------------------------------------------------------------------


def _run(
    command: Sequence[str], account: _Account | None, *, cwd: Path, timeout_s: int, stdin_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool, as ``account`` when given, with a clean ``PG*``-free environment."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    uid = gid = None
    if account is not None:
        uid, gid = account.uid, account.gid
        env["HOME"] = str(cwd)
    log.debug("running %s", " ".join(command))
    try:
        return subprocess.run(
            list(command),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL if stdin_text is None else None,
            input=stdin_text,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            start_new_session=True,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )
    except OSError as exc:
        raise ServerError(f"cannot run {Path(command[0]).name}: {exc.strerror}") from None


def _last_line(text: str) -> str:
    """The first error line of a tool's output (its cause), else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line or "FATAL" in line]
    return errors[0] if errors else lines[-1] if lines else "no output"
