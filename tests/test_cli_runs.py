"""`lstm-adv runs list/show` and the CLI's error boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.cli._common import hoist_global_options
from lstm_adv.results.manifest import Manifest
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
    # candidates in the order they were made
    assert result.output.strip() == f"error: 'query-' matches 2 runs: {', '.join(ids)}; give more of the id"


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


def test_clean_leaves_a_symlink_alone_and_does_not_claim_it_removed_it(tmp_path: Path) -> None:
    """A symbolic link under runs/.tmp is no temporary run of the toolkit's: `runs clean` neither follows nor names
    it."""
    _populate(tmp_path)
    target = tmp_path / "elsewhere"
    (target / "keep").mkdir(parents=True)
    link = tmp_path / "runs" / ".tmp" / "model-20260101-000000-abcd"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    cleaned = runner.invoke(app, ["--home", str(tmp_path), "runs", "clean"])
    assert cleaned.output == "no stale temporary runs\n"
    assert link.is_symlink()
    assert (target / "keep").is_dir()


def test_a_run_folder_copied_under_another_name_is_one_line_naming_both(tmp_path: Path) -> None:
    """Two folders holding one run id: every lookup that lists runs says so in one line, naming both folders and the
    copy to remove (never "2 runs" that print the same id)."""
    import shutil

    _, f = _populate(tmp_path)
    runs = tmp_path / "runs"
    shutil.copytree(runs / f, runs / f"{f}-copy")
    result = runner.invoke(app, ["--home", str(tmp_path), "runs", "show", "features"])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert f"run id {f} is held by 2 folders: {runs / f} and {runs / (f + '-copy')}" in line
    assert f"remove the copy ({runs / (f + '-copy')})" in line


def test_show_names_a_file_that_is_not_in_the_manifest(tmp_path: Path) -> None:
    """A file put into a run folder after the run was written has no checksum: `runs show` names it (it used to say
    "checksums ok")."""
    _, f = _populate(tmp_path)
    (tmp_path / "runs" / f / "extra.csv").write_text("a,b\n")
    result = runner.invoke(app, ["--home", str(tmp_path), "runs", "show", f])
    assert result.exit_code == 0, result.output
    assert "checksums ok; NOT IN THE MANIFEST (added after the run was written): extra.csv" in result.output


def test_list_and_show_as_json_round_trip_into_manifests(tmp_path: Path) -> None:
    """`runs list --json` and `runs show --json` print manifests that rebuild into the stored typed values,
    with each run's headline figure; global options work after the command too."""
    q, f = _populate(tmp_path)
    store = RunStore(tmp_path / "runs")
    listed = runner.invoke(app, ["runs", "list", "--json", "--home", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    entries = json.loads(listed.output)
    rebuilt = {str(m.id): m for m in (Manifest.from_data(e["manifest"]) for e in entries)}
    assert rebuilt == {q: store.get(q).manifest, f: store.get(f).manifest}
    headlines = {e["manifest"]["id"]: e["headline"] for e in entries}
    assert headlines[q] == "1 icu stays"
    shown = runner.invoke(app, ["runs", "show", q, "--json", "--home", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert Manifest.from_data(json.loads(shown.output)) == store.get(q).manifest


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--home", "h", "--data", "x"], ["--home", "h", "train", "--data", "x"]),
        (["runs", "list", "--config=c.toml", "-v"], ["--config=c.toml", "-v", "runs", "list"]),
        (["--home", "h", "attack", "--threads", "1"], ["--home", "h", "--threads", "1", "attack"]),
        (["query", "--", "--home"], ["query", "--", "--home"]),
        (["--verbose"], ["--verbose"]),
    ],
)
def test_global_options_after_the_command_move_in_front(args: list[str], expected: list[str]) -> None:
    """Global options given after the command are treated as if given before it; `--` ends the scan."""
    assert hoist_global_options(args) == expected


def test_help_shows_default_values_and_no_password() -> None:
    """Option help names the shipped default value beside its key; no help text shows a password."""
    result = runner.invoke(app, ["tune-attack", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "[default: 30; tune_attack.trials]" in text
    assert "[default: record; attack.cells]" in text
    for command in ("query", "synth", "tune-model", "tune-attack", "db load-demo"):
        shown = runner.invoke(app, [*command.split(), "--help"])
        assert shown.exit_code == 0, shown.output
        assert ":pw@" not in shown.output
        assert "password=" not in shown.output


def test_help_of_every_command_imports_no_heavy_library() -> None:
    """`--help` of the CLI and of every command runs without importing torch, pandas, optuna or psycopg."""
    commands = [
        [],
        *[[name] for name in ("demo", "synth", "query", "preprocess", "tune-model", "train", "tune-attack")],
        *[[name] for name in ("attack", "analyze", "report", "defend", "robustness")],
        ["db", "start"],
        ["runs", "list"],
    ]
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lstm_adv.cli import app\n"
        f"for args in {commands!r}:\n"
        "    result = CliRunner().invoke(app, [*args, '--help'])\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "heavy = [m for m in ('torch', 'pandas', 'optuna', 'psycopg', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_threads_option_sets_torch_threads(tmp_path: Path) -> None:
    """`--threads N` reaches torch (here already imported: set directly); a bad value is one line."""
    import torch

    before = torch.get_num_threads()
    try:
        result = runner.invoke(app, ["runs", "list", "--home", str(tmp_path), "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    bad = runner.invoke(app, ["--threads", "0", "runs", "list"])
    assert bad.exit_code != 0
    assert "--threads must be >= 1; got 0" in bad.output


def test_runs_list_fits_80_columns_with_whole_ids(tmp_path: Path) -> None:
    """At 80 columns every line fits and every run id (and parent id) appears whole, never cut into fragments."""
    from tests.strategies import tiny_feature_matrix
    from tests.test_train import features_run

    store = RunStore(tmp_path / "runs")
    parent = features_run(store, tiny_feature_matrix(20))
    with store.create("model", parents=[parent.id]) as writer:
        writer.file("x").write_text("x")
    narrow = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["--home", str(tmp_path), "runs", "list"])
    assert narrow.exit_code == 0, narrow.output
    assert all(len(line) <= 80 for line in narrow.output.splitlines())
    for run in store.list():
        assert str(run.id) in narrow.output
    assert f"← {parent.id}" in narrow.output


def test_usage_errors_are_one_line_with_exit_code_2() -> None:
    """A bad option value or an unknown option: one line in the toolkit's style, exit code 2."""
    bad = CliRunner().invoke(app, ["--threads", "abc", "runs", "list"])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines() == [
        "error: Invalid value for '--threads': Input should be a valid integer, unable to parse string as an "
        "integer (see `lstm-adv --help`)"
    ]
    unknown = CliRunner().invoke(app, ["runs", "list", "--bogus"])
    assert unknown.exit_code == 2
    assert unknown.output.strip() == "error: No such option: --bogus (see `lstm-adv runs list --help`)"


def test_flags_show_no_value_in_help() -> None:
    """--verbose and --help are flags: the help shows no <bool> beside them."""
    shown = CliRunner(env={"COLUMNS": "120"}).invoke(app, ["--help"])
    line = next(line for line in shown.output.splitlines() if "--verbose" in line)
    assert "<bool>" not in line
    attack_help = CliRunner(env={"COLUMNS": "120"}).invoke(app, ["attack", "--help"])
    assert "<bool>" not in next(line for line in attack_help.output.splitlines() if "--help" in line)


def test_option_mistakes_are_reported_before_torch_loads() -> None:
    """--trials 0 and --split tset are one line, before the command imports torch (checked in a fresh process)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from lstm_adv.cli import main\n"
        "sys.argv = ['lstm-adv', *sys.argv[1:]]\n"
        "try:\n    main()\n"
        "except SystemExit as exc:\n    assert 'torch' not in sys.modules, 'torch was loaded'\n    raise\n"
    )
    for args, message in (
        (["tune-model", "--trials", "0"], "error: --trials must be >= 1; got 0"),
        (
            ["attack", "--split", "tset"],
            "error: unknown split 'tset'; choose one of train, validation (or val), test, all",
        ),
    ):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
        assert done.returncode == 1, done.stderr
        assert (done.stdout + done.stderr).strip() == message
