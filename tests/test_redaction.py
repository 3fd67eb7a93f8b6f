"""Passwords never reach a manifest, a command's output or `runs show`, in whatever form they were given."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.redaction import passwords, redact, scrub
from lstm_adv.results.store import MANIFEST, RunStore
from tests.strategies import tiny_feature_matrix
from tests.test_train import features_run

runner = CliRunner(env={"COLUMNS": "200"})

_name = st.text(alphabet=st.characters(codec="ascii", categories=("L", "N"), include_characters="._-"), min_size=1)
_secret = st.text(alphabet=st.characters(codec="ascii", min_codepoint=33, max_codepoint=126), min_size=1)


@st.composite
def urls(draw: st.DrawFn) -> tuple[str, str, str, str]:
    """A libpq URI with a percent-encoded user (which may hold @) and password (any printable character), a host,
    port, database and query; and the user, password and the URI without its password as libpq reads them."""
    user = draw(_name) + draw(st.sampled_from(("", "@server")))
    password = draw(_secret)
    host, db = draw(_name), draw(_name)
    port = draw(st.integers(1, 65535))
    query = draw(st.sampled_from(("", "?sslmode=require", "?application_name=a@b&connect_timeout=5")))
    quoted = urllib.parse.quote
    url = f"postgresql://{quoted(user, safe='')}:{quoted(password, safe='')}@{host}:{port}/{db}{query}"
    return url, user, password, f"postgresql://{quoted(user, safe='')}:***@{host}:{port}/{db}{query}"


@given(urls())
def test_no_generated_password_survives_redaction_and_the_rest_is_what_libpq_reads(
    case: tuple[str, str, str, str],
) -> None:
    """For any user, password, host, port and query, the redacted URI holds neither the password nor its
    encoding; it is the URI with *** for the password; libpq reads the same connection from both, but the
    password; and the password is read back decoded."""
    url, _user, password, expected = case
    redacted = redact(url)
    assert redacted == expected
    assert password not in redacted.replace("postgresql://", "").replace("***", "") or password in expected
    assert urllib.parse.quote(password, safe="") not in redacted or urllib.parse.quote(password, safe="") in expected
    parsed, shown = psycopg.conninfo.conninfo_to_dict(url), psycopg.conninfo.conninfo_to_dict(redacted)
    assert parsed.pop("password") == password
    assert shown.pop("password") == "***"
    assert parsed == shown
    assert passwords(url) == [password]


def test_a_user_name_holding_at_keeps_its_password_hidden() -> None:
    """An unencoded @ in the user name (Azure's user@server) does not expose the password: the userinfo ends at
    the last @ before the query, as SQLAlchemy reads it."""
    url = "postgresql+psycopg://a@b:PASSWORD@host/db"
    assert redact(url) == "postgresql+psycopg://a@b:***@host/db"
    assert passwords(url) == ["PASSWORD"]
    assert scrub(f"the DSN's port must be a number: {url}", url) == (
        "the DSN's port must be a number: postgresql+psycopg://a@b:***@host/db"
    )
    assert redact("postgresql://u:pw@h/db?options=a@b") == "postgresql://u:***@h/db?options=a@b"
    from lstm_adv.database.connection import Target
    from lstm_adv.domain.errors import DatabaseError

    with pytest.raises(DatabaseError) as info:
        Target.from_dsn("postgresql://a@b:PASSWORD@host/db")
    assert "PASSWORD" not in str(info.value)


def test_redact_hides_the_password_of_every_form() -> None:
    """Userinfo, a ?password= query and a key=value password all become ***; everything else stays as given."""
    assert redact("postgresql://me:pw@db.example:5433/mimic?sslmode=require") == (
        "postgresql://me:***@db.example:5433/mimic?sslmode=require"
    )
    assert redact("postgresql://me@db.example/mimic?sslmode=require&password=pw") == (
        "postgresql://me@db.example/mimic?sslmode=require&password=***"
    )
    assert redact("host=db.example user=me password=pw dbname=mimic") == (
        "host=db.example user=me password=*** dbname=mimic"
    )
    assert redact("host=h password = 'a b\\' c' dbname=d") == "host=h password=*** dbname=d"
    assert redact("postgresql+psycopg://u:p/w?x#@h/db") == "postgresql+psycopg://u:***@h/db"
    assert redact("postgresql://u@h:5432/db?passfile=%2Fhome%2Fu%2Fpgpass") == (
        "postgresql://u@h:5432/db?passfile=%2Fhome%2Fu%2Fpgpass"
    )
    redacted = redact("host=db.example user=me password=pw dbname=mimic")
    assert psycopg.conninfo.conninfo_to_dict(redacted)["password"] == "***"


def test_passwords_are_read_back_decoded() -> None:
    """The passwords of a DSN are found in each form, percent-encoding and libpq quoting resolved."""
    assert passwords("postgresql://u:p%40ss@h/db?password=x%20y") == ["p@ss", "x y"]
    assert passwords("host=h password='a b\\' c'") == ["a b' c"]
    assert passwords("postgresql://u@h/db") == []


def test_scrub_removes_the_dsn_password_and_pgpassword_from_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text that quotes a password (plain or percent-encoded) or $PGPASSWORD shows *** instead."""
    monkeypatch.setenv("PGPASSWORD", "env-secret")
    text = "failed for postgresql://u:p%40ss@h/db (p@ss) with env-secret"
    assert scrub(text, "postgresql://u:p%40ss@h/db") == "failed for postgresql://u:***@h/db (***) with ***"


def _role_password(pg_server: Any) -> str:
    return str(pg_server.passfile.read_text(encoding="utf-8").strip().split(":")[4])


@pytest.mark.db
@pytest.mark.parametrize("form", ["userinfo", "query", "pgpassword"])
def test_a_storage_password_is_in_no_manifest_output_or_runs_show(
    tmp_path: Path, pg_server: Any, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tune-model --storage` on the real PostgreSQL works with the password in any form and never shows it."""
    secret = _role_password(pg_server)
    where = f"127.0.0.1:{pg_server.port}/postgres"
    url = {
        "userinfo": f"postgresql://lstm_adv:{secret}@{where}",
        "query": f"postgresql://lstm_adv@{where}?password={secret}",
        "pgpassword": f"postgresql://lstm_adv@{where}",
    }[form]
    if form == "pgpassword":
        monkeypatch.setenv("PGPASSWORD", secret)
    store = RunStore(tmp_path / "runs")
    parent = features_run(store, tiny_feature_matrix(40))
    config = tmp_path / "tiny.toml"
    config.write_text('[model]\ndevice = "cpu"\n[tune_model]\nepochs_per_trial = 1\nhidden_size_log2 = [2, 2]\n')
    base = ["--home", str(tmp_path), "--config", str(config)]
    tuned = runner.invoke(app, [*base, "tune-model", "--data", str(parent.id), "--trials", "1", "--storage", url])
    assert tuned.exit_code == 0, tuned.output
    run = store.latest("tune-model")
    shown = runner.invoke(app, [*base, "runs", "show", str(run.id)])
    assert shown.exit_code == 0, shown.output
    expected = url.replace(secret, "***")
    assert run.manifest.summary.storage == expected
    assert f"in {expected}" in shown.output
    for text in (tuned.output, shown.output, (run.path / MANIFEST).read_text(encoding="utf-8")):
        assert secret not in text
