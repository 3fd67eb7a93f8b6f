"""Passwords never reach a manifest, a command's output or `runs show`, in whatever form they were given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.redaction import passwords, redact, scrub
from lstm_adv.results.store import MANIFEST, RunStore
from tests.strategies import tiny_feature_matrix
from tests.test_train import features_run

runner = CliRunner(env={"COLUMNS": "200"})


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
