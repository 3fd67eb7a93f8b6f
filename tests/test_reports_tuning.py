"""The tuning report: results API over tune-model and tune-attack runs (real Optuna journals) and its renders."""

from __future__ import annotations

import re

import attrs
import pandas as pd
import pytest

from lstm_adv.domain.errors import DataError
from lstm_adv.reports import document_for, render_report, report_files
from lstm_adv.results import api
from lstm_adv.results.store import Run
from tests.report_checks import (
    embedded_images,
    external_references,
    layout_problems,
    leaks,
    pdf_pages,
    raw_column_names,
)
from tests.report_runs import Pipeline, make_model_pipeline, make_tuning_runs


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """query → features → model, trained for two epochs."""
    return make_model_pipeline(tmp_path_factory.mktemp("tuning-report") / "home")


@pytest.fixture(scope="module")
def tuned(pipeline: Pipeline) -> dict[str, Run]:
    """A tune-model run (some trials pruned) and a two-objective tune-attack run, by kind."""
    model, attack = make_tuning_runs(pipeline)
    return {"tune-model": model, "tune-attack": attack}


def test_tuning_kinds_are_reported_by_the_tuning_document() -> None:
    """tune-model and tune-attack runs are both rendered with reports/tuning.qmd."""
    assert document_for("tune-model") == document_for("tune-attack") == "tuning"


def test_trials_mark_the_chosen_trial_and_the_pareto_front(tuned: dict[str, Run]) -> None:
    """The trial table has every trial once; the chosen trial is the summary's; Pareto flags match the summary."""
    for kind, run in tuned.items():
        summary = run.manifest.summary
        trials = api.tuning_trials(run)
        assert trials["trial"].tolist() == [t.number for t in summary.trials]
        assert trials.loc[trials["chosen"], "trial"].tolist() == [summary.best.number]
        expected = set(summary.pareto) if kind == "tune-attack" else set()
        assert set(trials.loc[trials["pareto"], "trial"]) == expected
    model_trials = api.tuning_trials(tuned["tune-model"])
    assert model_trials.loc[model_trials["state"] == "pruned", "value"].isna().all()


def test_objectives_follow_the_study(tuned: dict[str, Run]) -> None:
    """A model study maximizes validation AUROC; the default attack study maximizes success and minimizes L0."""
    assert [(o.column, o.direction) for o in api.tuning_objectives(tuned["tune-model"])] == [("value", "maximize")]
    assert [(o.column, o.direction) for o in api.tuning_objectives(tuned["tune-attack"])] == [
        ("success_rate", "maximize"),
        ("median_l0", "minimize"),
    ]


def test_importances_sum_to_one_per_objective_and_leave_the_run_untouched(tuned: dict[str, Run]) -> None:
    """fANOVA importances cover every searched parameter, sum to 1 per objective, and opening the study writes
    nothing into the run folder."""
    run = tuned["tune-attack"]
    before = sorted(p.name for p in run.path.iterdir())
    importances = api.parameter_importances(run)
    assert sorted(p.name for p in run.path.iterdir()) == before
    assert set(importances["parameter"]) == {"κ", "λ", "step size", "method"}
    sums = importances.groupby("objective")["importance"].sum()
    assert sums.to_dict() == pytest.approx({"success rate": 1.0, "median L0 of the sparse examples": 1.0})


def test_importances_of_a_study_in_an_unreachable_database_say_why(pipeline: Pipeline, tuned: dict[str, Run]) -> None:
    """A study kept in a database whose password the run does not store cannot be opened; the error says so."""
    source = tuned["tune-model"]
    stored = "postgresql://tuner:***@db.example:5432/optuna"
    with pipeline.store.create("tune-model", parents=list(source.manifest.parents)) as writer:
        writer.summary = attrs.evolve(source.manifest.summary, storage=stored)
    assert writer.committed is not None
    with pytest.raises(DataError) as info:
        api.parameter_importances(writer.committed)
    assert str(info.value) == (
        f"the study lives in the database {stored}, whose password the run does not store, so the report cannot open it"
    )
    assert len(api.tuning_trials(writer.committed)) == len(source.manifest.summary.trials)  # trials need no storage


def test_pipeline_lists_a_model_tuning_run_between_features_and_model(
    pipeline: Pipeline, tuned: dict[str, Run]
) -> None:
    """A model trained from a tune-model trial has the pipeline query, features, tune-model, model, in that order."""
    model = pipeline.model
    with pipeline.store.create("model", parents=[tuned["tune-model"].id], config=model.manifest.config) as writer:
        writer.summary = model.manifest.summary
    assert writer.committed is not None
    runs = api.pipeline_runs(writer.committed)
    assert list(runs) == ["query", "features", "tune-model", "model"]
    assert api.pipeline_overview(runs)["stage"].tolist() == list(runs)


def test_overview_of_an_attack_study_states_the_decision_rule(tuned: dict[str, Run]) -> None:
    """The attack study's overview names the attacked model's decision rule with its t."""
    overview = api.tuning_overview(tuned["tune-attack"]).set_index("property")["value"]
    assert overview["decision rule of the model"] == "argmax (predict death when its logit is the larger; t = 0.5)"
    assert overview["chosen trial"] == str(tuned["tune-attack"].manifest.summary.best.number)


@pytest.fixture(scope="module")
def rendered(pipeline: Pipeline, tuned: dict[str, Run]) -> dict[str, Run]:
    """The tuning report of each tuning run (offline engine)."""
    return {
        kind: render_report(run, store=pipeline.store, home=pipeline.home, engine="offline")
        for kind, run in tuned.items()
    }


@pytest.mark.slow
def test_attack_tuning_report_shows_history_pareto_front_and_importances(rendered: dict[str, Run]) -> None:
    """The tune-attack report embeds the history, the Pareto front and the importances, lists the front, and its
    tables fit the PDF page and a 1,100 px HTML page."""
    report = rendered["tune-attack"]
    html = report_files(report)[0].read_text(encoding="utf-8")
    assert external_references(html) == []
    for label in ("fig-history", "fig-pareto", "fig-importance", "tbl-pareto", "tbl-trials"):
        assert f'id="{label}"' in html
    assert embedded_images(html) == 3
    assert "Figure 2: Pareto front of the attack study" in html
    assert "argmax (predict death when its logit is the larger; t = 0.5)" in html
    assert raw_column_names(html) == []
    assert layout_problems(report, "tuning") == []
    assert pdf_pages(report) >= 2


@pytest.mark.slow
def test_model_tuning_report_has_no_pareto_section(rendered: dict[str, Run]) -> None:
    """A single-objective study draws the history and the importances, numbered without gaps, and no Pareto front."""
    report = rendered["tune-model"]
    html = report_files(report)[0].read_text(encoding="utf-8")
    assert embedded_images(html) == 2
    assert 'id="fig-pareto"' not in html
    assert ">Pareto front</h2>" not in html
    assert "Figure 2: Parameter importances" in html
    assert re.search(r'<a href="#tbl-trials"[^>]*>Table 2</a>', html)
    assert raw_column_names(html) == []
    assert layout_problems(report, "tuning") == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tune-model", "tune-attack"])
def test_tuning_reports_show_no_cohort_id_or_time(pipeline: Pipeline, rendered: dict[str, Run], kind: str) -> None:
    """No subject, admission or stay id, and no date of the cohort, appears in the HTML, notebook or PDF."""
    assert leaks(rendered[kind], pipeline.query, "tuning") == []


def test_trials_frame_holds_no_worker_or_identifier(tuned: dict[str, Run]) -> None:
    """The trial table leaves out where a trial ran (host and process) and passes the aggregates-only check."""
    trials = api.tuning_trials(tuned["tune-model"])
    assert "worker" not in trials.columns
    assert not trials.astype(str).apply(lambda c: c.str.contains("host:")).to_numpy().any()
    assert isinstance(api.aggregates_only(trials), pd.DataFrame)
