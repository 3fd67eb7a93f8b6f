"""Connecting to PostgreSQL with one clear line per failure that never shows a password."""

from __future__ import annotations

import getpass
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import psycopg
from psycopg import conninfo

from lstm_adv.domain.errors import DatabaseError
from lstm_adv.redaction import scrub

EMBEDDED_HINT = "is the server running? for the embedded server run `lstm-adv db start`"
_MIN_TIMEOUT_S = 2  # libpq treats smaller positive values as 2


@attrs.frozen
class Target:
    """Where a DSN points, for messages: never holds the password."""

    host: str
    port: int
    user: str
    dbname: str

    @property
    def where(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @classmethod
    def from_dsn(cls, dsn: str) -> Target:
        """Parse ``dsn`` (URL or ``key=value`` form); libpq's environment defaults fill the gaps."""
        params = _parse(dsn)
        user = params.get("user") or os.environ.get("PGUSER") or getpass.getuser()
        host = (params.get("host") or os.environ.get("PGHOST") or "localhost").split(",")[0]
        port_text = (params.get("port") or os.environ.get("PGPORT") or "5432").split(",")[0]
        try:
            port = int(port_text)
        except ValueError:
            # the port text may hold a password where an unencoded @ moved libpq's host boundary
            raise DatabaseError(scrub(f"the DSN's port must be a number, got {port_text!r}", dsn)) from None
        dbname = params.get("dbname") or os.environ.get("PGDATABASE") or user
        return cls(host=host, port=port, user=user, dbname=dbname)


def connect(dsn: str, *, timeout_s: int = 5, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a connection to ``dsn``, giving up after ``timeout_s`` seconds.

    Raises :class:`DatabaseError` with one line naming host, port, user or database and a hint,
    never the password.
    """
    target = Target.from_dsn(dsn)
    timeout_s = max(timeout_s, _MIN_TIMEOUT_S)
    options = embedded_options(dsn)
    try:
        with without_service(bool(options)):
            return psycopg.connect(
                conninfo.make_conninfo(dsn, **options), connect_timeout=timeout_s, autocommit=autocommit
            )
    except psycopg.OperationalError as exc:
        raise DatabaseError(_explain(scrub(str(exc), dsn), target, timeout_s)) from None


#: libpq environment variables that name a service, whose definitions would apply to any connection.
_SERVICE_VARIABLES = ("PGSERVICE", "PGSERVICEFILE")
_ENVIRONMENT = threading.Lock()


def embedded_options(dsn: str) -> dict[str, str]:
    """Connection options that make a DSN of the toolkit's embedded server independent of the environment.

    For a DSN whose ``passfile`` lies in an embedded server's folder (beside its ``data/PG_VERSION``): the
    password read from that file and ``sslmode=disable`` (a loopback server without TLS), given explicitly so
    that ``PGPASSWORD``, ``PGPASSFILE`` or ``PGSSLMODE`` (set for another server) cannot override them; ``{}``
    for every other DSN, which libpq's environment applies to as usual.
    """
    params = _parse(dsn)
    passfile = params.get("passfile")
    if not passfile or "password" in params or not (Path(passfile).parent / "data" / "PG_VERSION").is_file():
        return {}
    password = _pgpass_password(Path(passfile), params.get("user", ""))
    if not password:
        raise DatabaseError(
            f"the embedded server's password file {passfile} is garbled or unreadable (it must hold one line "
            f"'*:*:*:{params.get('user', '')}:<password>'); run `lstm-adv db stop`, delete the file, and "
            "`lstm-adv db start` makes and sets a new password"
        )
    return {"password": password, "sslmode": "disable"}


def _pgpass_password(path: Path, user: str) -> str | None:
    """The password of ``user`` in a libpq password file (host:port:database:user:password, ``*`` wildcards)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        fields = re.split(r"(?<!\\):", line.strip())
        if len(fields) == 5 and not line.startswith("#") and fields[3] in ("*", user):
            return fields[4].replace("\\:", ":").replace("\\\\", "\\")
    return None


@contextmanager
def without_service(active: bool) -> Iterator[None]:
    """While ``active``, the process environment without ``PGSERVICE``/``PGSERVICEFILE``: libpq would look the
    service up for every connection, explicit settings notwithstanding (a missing one fails the connection)."""
    if not active:
        yield
        return
    with _ENVIRONMENT:
        saved = {name: os.environ.pop(name) for name in _SERVICE_VARIABLES if name in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


def _explain(text: str, target: Target, timeout_s: int) -> str:
    lowered = text.lower()
    if "password authentication failed" in lowered:
        return (
            f"password authentication failed for user '{target.user}' at {target.where}; "
            "check the password (PGPASSWORD or ~/.pgpass)"
        )
    if "no password supplied" in lowered:
        return (
            f"the server at {target.where} asks for a password for user '{target.user}' and none was given; "
            "set PGPASSWORD or add it to ~/.pgpass"
        )
    if re.search(r'database ".*" does not exist', lowered):
        return f"database '{target.dbname}' does not exist at {target.where}; check the database name in the DSN"
    if re.search(r'role ".*" does not exist', lowered):
        return f"user '{target.user}' does not exist at {target.where}; check the user name in the DSN"
    if re.search(r'permission denied for database ".*"', lowered):
        return (
            f"user '{target.user}' lacks privileges on database {target.dbname} at {target.where}: CONNECT on "
            f"database {target.dbname}; ask the database's owner to run "
            f"GRANT CONNECT ON DATABASE {_quoted(target.dbname)} TO {_quoted(target.user)}"
        )
    return f"cannot connect to PostgreSQL at {target.where} within {timeout_s}s ({_reason(text)}); {EMBEDDED_HINT}"


def _quoted(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _reason(text: str) -> str:
    """The libpq reason of a failed connection: 'Connection refused', 'timeout expired', ..."""
    first = text.strip().splitlines()[0] if text.strip() else "no answer"
    reason = first.rsplit("failed:", 1)[-1].strip()
    return reason.removeprefix("FATAL:").strip() or "no answer"


def describe_source(dsn: str) -> str:
    """The canonical, password-free description of a DSN: ``postgresql://user@host:port/dbname``."""
    target = Target.from_dsn(dsn)
    return f"postgresql://{target.user}@{target.where}/{target.dbname}"


def _parse(dsn: str) -> dict[str, str]:
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's message may quote part of the DSN, password included: do not repeat it.
        raise DatabaseError(
            "the DSN is not a valid PostgreSQL connection string; "
            "expected e.g. postgresql://user@host:5432/dbname or 'host=... dbname=...'"
        ) from None
    return {key: str(value) for key, value in params.items() if value is not None}
