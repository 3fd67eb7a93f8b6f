"""The main job: every stage runs on the embedded default, ends in rendered reports, and reuses unchanged runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.config import Config
from lstm_adv.database.server import stop_server
from lstm_adv.pipeline import DemoResult, run_demo
from lstm_adv.reports import report_files
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import Estimate, ModelSummary, Step
from lstm_adv.results.workspace import Workspace

pytestmark = [pytest.mark.db, pytest.mark.slow]

# Small budgets: the point is that every stage runs and connects, not the quality of the numbers.
SMALL = {
    "demo.model_trials": 2,
    "tune_model.epochs_per_trial": 3,
    "model.max_epochs": 4,
    "model.bootstrap_samples": 50,
    "demo.attack_trials": 2,
    "demo.attack_subset": 16,
    "demo.tune_attack_iterations": 50,
    "demo.attack_iterations": 300,
    "demo.defend_epochs": 1,
    "demo.robustness_l1_iterations": 20,
    "demo.obfuscation_iterations": 5,
    "defend.monitor_samples": 8,
    "analysis.figure_dpi": 50,
    "analysis.bootstrap_samples": 100,
    "model.device": "cpu",
    "attack.device": "cpu",
}
STAGES = [
    "database",
    "query",
    "preprocess",
    "tune-model",
    "train",
    "tune-attack",
    "attack",
    "analyze",
    "defend",
    "robustness",
    "report pipeline",
    "report model",
    "report data",
    "report attack",
    "report tuning",
    "report robustness",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A fresh workspace whose embedded server is stopped when the module ends."""
    workspace = Workspace(home=tmp_path_factory.mktemp("demo") / "home")
    yield workspace
    stop_server(workspace.pg_dir)


@pytest.fixture(scope="module")
def config() -> Config:
    """The shipped configuration with small search and attack budgets."""
    return load_config(None, SMALL)


@pytest.fixture(scope="module")
def first(workspace: Workspace, config: Config) -> DemoResult:
    """The main job run once on the MIMIC-III demo."""
    return run_demo(workspace, config)


def test_every_stage_runs_in_order_and_ends_in_reports(first: DemoResult) -> None:
    """The demo runs database → … → report and leaves an HTML and a PDF for the pipeline and the model."""
    assert [o.stage for o in first.outcomes] == STAGES
    assert not any(o.reused for o in first.outcomes)
    assert first.runs["query"].manifest.summary.flow[-1] == Step("admissions", 105)
    documents = [report.manifest.summary.document for report in first.reports]
    assert documents == ["pipeline", "model", "data", "attack", "tuning", "robustness"]
    for report in first.reports:
        html, pdf = report_files(report)
        assert html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
        assert pdf.read_bytes().startswith(b"%PDF")


def test_lineage_runs_from_the_report_back_to_the_query(first: DemoResult, workspace: Workspace) -> None:
    """The pipeline report's lineage holds every stage's run."""
    lineage = workspace.store.lineage(first.reports[0])
    kinds = {run.kind for run in lineage}
    assert {"report", "analysis", "attack", "tune-attack", "model", "tune-model", "features", "query"} <= kinds


def test_rerun_reuses_every_unchanged_run(first: DemoResult, workspace: Workspace, config: Config) -> None:
    """A second run with the same settings makes no new run; --fresh-style recomputation is opt-in."""
    before = len(workspace.store.list())
    again = run_demo(workspace, config)
    assert all(o.reused for o in again.outcomes if o.stage != "database")
    assert [o.run_id for o in again.outcomes] == [o.run_id for o in first.outcomes]
    assert len(workspace.store.list()) == before


def test_changed_attack_settings_rerun_only_the_attack_stages(
    first: DemoResult, workspace: Workspace, config: Config
) -> None:
    """Changing an attack setting reuses the data and model runs and recomputes the attack stages.

    tune-attack reads the [attack] section too (its mask and misclassified-sample settings), so it is
    recomputed as well: reuse compares whole sections."""
    changed = load_config(None, {**SMALL, "demo.attack_iterations": 310})
    result = run_demo(workspace, changed)
    reused = {o.stage: o.reused for o in result.outcomes}
    assert [stage for stage in ("query", "preprocess", "tune-model", "train") if not reused[stage]] == []
    assert not reused["attack"]


def test_cli_demo_prints_the_report_paths(first: DemoResult, workspace: Workspace, tmp_path: Path) -> None:
    """`lstm-adv demo` prints a table of the stages and the paths of the rendered reports."""
    settings = tmp_path / "small.toml"
    sections: dict[str, list[str]] = {}
    for dotted, value in SMALL.items():
        section, key = dotted.split(".")
        sections.setdefault(section, []).append(f"{key} = {value!r}".replace("'", '"'))
    settings.write_text("\n".join(f"[{name}]\n" + "\n".join(lines) for name, lines in sections.items()))
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app, ["--home", str(workspace.home), "--config", str(settings), "demo"]
    )
    assert result.exit_code == 0, result.output
    assert "pipeline.html" in result.output
    assert "model.pdf" in result.output
    assert "reused" in result.output


def test_model_line_without_intervals() -> None:
    """A model run scored without bootstrap (no interval bounds) is still described, without brackets."""
    from lstm_adv.results.describe import _describe_model

    summary = ModelSummary(cv=False, test={"auroc": Estimate(0.8, None, None)}, oracle_test_auroc=None)
    assert _describe_model(summary) == "test AUROC 0.800"


def test_an_interrupted_stage_stops_the_demo(tmp_path: Path) -> None:
    """A stage whose new run is interrupted (Ctrl-C inside tune-model) stops the main job: no later stage uses it."""
    from lstm_adv.domain.errors import RunInterruptedError
    from lstm_adv.pipeline import _Context, _Silent
    from lstm_adv.results.store import RunStore

    store = RunStore(tmp_path / "runs")

    def interrupted() -> Run:
        with store.create("tune-model") as writer:
            return writer.commit(status="interrupted")

    context = _Context(store, load_config(), fresh=True, listen=_Silent())
    with pytest.raises(RunInterruptedError) as info:
        context.stage("tune-model", parents=(), make=interrupted)
    (run,) = store.list("tune-model")
    assert str(info.value) == (
        f"the demo stopped: tune-model was interrupted (run {run.id} keeps what it finished); run `lstm-adv demo` "
        "again to redo that stage and go on"
    )


def test_speed_settings_do_not_stop_a_run_from_being_reused(tmp_path: Path) -> None:
    """A tune-attack run made with another batch size, block size or device is reused; one made with another
    setting that changes results (the cells) is not."""
    from lstm_adv.pipeline import find_reusable
    from lstm_adv.results.config_file import config_as_dict, load_config
    from lstm_adv.results.store import RunStore

    store = RunStore(tmp_path / "runs")
    with store.create("features") as parent:
        parent.file("x").write_text("x")
    made = load_config(overrides={"attack.batch_size": 64, "attack.block_size": 128, "attack.device": "cpu"})
    with store.create("tune-attack", parents=[parent.id], config=config_as_dict(made)) as writer:
        writer.file("y").write_text("y")
    assert writer.committed is not None
    now = load_config()
    assert find_reusable(store, "tune-attack", now, parents=(parent.id,)) == writer.committed
    other = load_config(overrides={"attack.cells": "all"})
    assert find_reusable(store, "tune-attack", other, parents=(parent.id,)) is None
