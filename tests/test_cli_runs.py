"""`lstm-adv runs list/show` and the CLI's error boundary."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.results.store import RunStore
from lstm_adv.results.summaries import QuerySummary, Step

runner = CliRunner(env={"COLUMNS": "200"})


def _populate(home: Path) -> tuple[str, str]:
    store = RunStore(home / "runs")
    with store.create("query", config={"cohort": {"window_hours": 48}}) as q:
        q.file("stays.parquet").write_bytes(b"x")
        q.summary = QuerySummary(flow=(Step("icu stays", 1),), tables={"stays": 1}, schema="mimiciii", source="x")
    with store.create("features", parents=[q.id]) as f:
        f.file("features.npz").write_bytes(b"y")
    return str(q.id), str(f.id)


def test_help_lists_the_stages() -> None:
    """`lstm-adv --help` names the pipeline and the commands."""
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("demo", "db", "query", "runs"):
        assert word in result.output


def test_list_shows_runs(tmp_path: Path) -> None:
    """`runs list` prints every run with its kind."""
    q, f = _populate(tmp_path)
    result = runner.invoke(app, ["--home", str(tmp_path), "runs", "list"])
    assert result.exit_code == 0
    assert q in result.output
    assert f in result.output


def test_list_on_empty_home_says_how_to_start(tmp_path: Path) -> None:
    """With no runs, `runs list` says how to make one."""
    result = runner.invoke(app, ["--home", str(tmp_path), "runs", "list"])
    assert result.exit_code == 0
    assert "no runs yet" in result.output


def test_show_prints_lineage_by_prefix(tmp_path: Path) -> None:
    """`runs show <prefix>` finds the run and prints its parents."""
    q, f = _populate(tmp_path)
    result = runner.invoke(app, ["--home", str(tmp_path), "runs", "show", "features"])
    assert result.exit_code == 0, result.output
    assert f in result.output
    assert f"{q} (query)" in result.output
    assert "checksums ok" in result.output


def test_unknown_run_is_one_red_line(tmp_path: Path) -> None:
    """A user mistake exits 1 with one error line and no traceback."""
    _populate(tmp_path)
    result = runner.invoke(app, ["--home", str(tmp_path), "runs", "show", "nothing-like-this"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: no run matches 'nothing-like-this'; `lstm-adv runs list` shows the runs"
    assert "Traceback" not in result.output


def test_ambiguous_prefix_lists_candidates(tmp_path: Path) -> None:
    """An ambiguous prefix names every candidate."""
    store = RunStore(tmp_path / "runs")
    ids = []
    for _ in range(2):
        with store.create("query") as writer:
            writer.file("x").write_bytes(b"")
        ids.append(str(writer.id))
    result = runner.invoke(app, ["--home", str(tmp_path), "runs", "show", "query-"])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: 'query-' matches 2 runs: {', '.join(sorted(ids))}; give more of the id"


def test_show_refuses_a_path_to_a_run_of_another_home(tmp_path: Path) -> None:
    """`runs show /other/home/runs/<id>` does not load a run from outside the store: one line, exit 1."""
    q, _f = _populate(tmp_path / "other")
    path = str(tmp_path / "other" / "runs" / q)
    result = runner.invoke(app, ["--home", str(tmp_path / "mine"), "runs", "show", path])
    assert result.exit_code == 1
    assert result.output == (
        f"error: {path!r} is not a run id; give a run id or a unique prefix of one (runs of another folder: --home "
        "<folder>); `lstm-adv runs list` shows the runs\n"
    )


def test_a_bad_config_file_fails_every_command(tmp_path: Path) -> None:
    """`--config bad.toml runs list` reads no setting but still fails with the config error."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\ngrad_clip_norm = nan\n")
    result = runner.invoke(app, ["--home", str(tmp_path), "--config", str(bad), "runs", "list"])
    assert result.exit_code == 1
    assert result.output == "error: model.grad_clip_norm must be finite and ≥ 0, got nan\n"


def test_a_home_longer_than_the_system_allows_is_one_line(tmp_path: Path) -> None:
    """A --home with a folder name over NAME_MAX is refused before anything touches the disk."""
    home = tmp_path / ("h" * 300)
    result = runner.invoke(app, ["--home", str(home), "runs", "list"])
    assert result.exit_code == 1
    assert result.output.startswith("error: home folder ")
    assert result.output.endswith(
        " is 300 bytes long, this system allows 255; choose a shorter --home (or $LSTM_ADV_HOME)\n"
    )
    assert result.output.count("\n") == 1


def test_list_names_stale_temporary_runs_and_clean_removes_them(tmp_path: Path) -> None:
    """A temporary run nobody writes (a killed command's) is named by `runs list`; `runs clean` removes it."""
    _populate(tmp_path)
    stale = tmp_path / "runs" / ".tmp" / "model-20260101-000000-abcd"
    stale.mkdir(parents=True)
    listed = runner.invoke(app, ["--home", str(tmp_path), "runs", "list"])
    assert listed.exit_code == 0
    assert listed.output.splitlines()[-1] == (
        f"1 stale temporary run(s) under {tmp_path / 'runs' / '.tmp'}, left by killed commands: {stale.name}; "
        "remove them with `lstm-adv runs clean`"
    )
    cleaned = runner.invoke(app, ["--home", str(tmp_path), "runs", "clean"])
    assert cleaned.output == f"removed 1 stale temporary run(s): {stale.name}\n"
    assert not stale.exists()
    again = runner.invoke(app, ["--home", str(tmp_path), "runs", "list"])
    assert "stale" not in again.output
