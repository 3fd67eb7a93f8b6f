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
