"""The model report: results API over a model run (real tiny training) and its offline render."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import DataError
from lstm_adv.reports import document_for, render_report, report_files
from lstm_adv.results import api
from lstm_adv.results.artifacts import METRICS_FILE
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import ModelSummary
from tests.report_checks import (
    embedded_images,
    external_references,
    layout_problems,
    leaks,
    pdf_pages,
    raw_column_names,
)
from tests.report_runs import Pipeline, make_model_pipeline, without_curves


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """query → features → model, trained for two epochs."""
    return make_model_pipeline(tmp_path_factory.mktemp("model-report") / "home")


@pytest.fixture(scope="module")
def uncurved(pipeline: Pipeline) -> Run:
    """A copy of the model run that also stores ROC and PR points (curves.parquet)."""
    return without_curves(pipeline)


def test_model_kind_is_reported_by_the_model_document() -> None:
    """Model runs are rendered with reports/model.qmd."""
    assert document_for("model") == "model"


def test_metrics_table_has_every_metric_with_its_interval(pipeline: Pipeline) -> None:
    """The metrics table lists the six test metrics with low ≤ value ≤ high, then the threshold without interval."""
    table = api.model_metrics(pipeline.model)
    assert table["metric"].tolist() == [
        "AUROC",
        "AUPRC",
        "F1",
        "precision",
        "recall",
        "Brier score",
        "decision threshold t",
    ]
    ranked = table.iloc[:6]
    assert ((ranked["low"] <= ranked["value"] + 1e-12) & (ranked["value"] <= ranked["high"] + 1e-12)).all()
    assert np.isnan(table["low"].iloc[-1])
    assert table["value"].iloc[0] == pipeline.model.manifest.summary.test["auroc"].value


def test_confusion_and_calibration_count_the_test_split(pipeline: Pipeline) -> None:
    """The confusion matrix and the calibration bins each add up to the test split's size."""
    n_test = pipeline.model.manifest.summary.n["test"]
    confusion = api.confusion_table(pipeline.model)
    assert int(confusion.iloc[:, 1:].to_numpy().sum()) == n_test
    assert int(api.calibration_table(pipeline.model)["count"].sum()) == n_test


def test_training_history_marks_the_kept_epoch(pipeline: Pipeline) -> None:
    """The history has one row per epoch run and marks exactly the best epoch."""
    history = api.training_history(pipeline.model)
    summary = pipeline.model.manifest.summary
    assert history["epoch"].tolist() == list(range(1, summary.epochs_run + 1))
    assert history.loc[history["best"], "epoch"].tolist() == [summary.best_epoch]


def test_curves_are_none_without_curve_points(pipeline: Pipeline, uncurved: Run) -> None:
    """A run without curves.parquet has no curves; a trained run gives ROC points from (0, 0) to (1, 1)."""
    assert api.model_curves(uncurved) is None
    curves = api.model_curves(pipeline.model)
    assert curves is not None
    roc = curves[curves["curve"] == "roc"]
    assert (roc["x"].iloc[0], roc["y"].iloc[0]) == (0.0, 0.0)
    assert (roc["x"].iloc[-1], roc["y"].iloc[-1]) == (1.0, 1.0)
    assert set(curves.columns) == {"curve", "x", "y"}


def test_model_decision_describes_the_stored_rule(pipeline: Pipeline) -> None:
    """The model's decision rule in words is the stored rule's description, with its t."""
    summary = pipeline.model.manifest.summary
    assert api.model_decision(pipeline.model) == DecisionRule(summary.decision, summary.threshold).describe()
    assert f"t = {summary.threshold:.3f}" in api.model_decision(pipeline.model)


def test_model_decision_of_a_cv_run_gives_each_folds_t(pipeline: Pipeline) -> None:
    """A cross-validation run states the threshold rule and the range of the folds' thresholds."""
    config = pipeline.model.manifest.config | {
        "model": pipeline.model.manifest.config["model"] | {"decision": "threshold"}
    }
    with pipeline.store.create("model", parents=list(pipeline.model.manifest.parents), config=config) as writer:
        folds = [{"fold": k, "threshold": t} for k, t in enumerate((0.31, 0.18, 0.42))]
        writer.file(METRICS_FILE).write_text(json.dumps({"folds": folds}), encoding="utf-8")
        writer.summary = ModelSummary(cv=True, n_folds=3)
    assert writer.committed is not None
    assert api.model_decision(writer.committed) == (
        "threshold on P(death), chosen per fold on that fold's validation part (max F1): t = 0.180–0.420 over the folds"
    )


def test_holdout_only_tables_refuse_a_cv_run(pipeline: Pipeline) -> None:
    """Asking a holdout run for cross-validation fold metrics names the rule."""
    with pytest.raises(DataError) as info:
        api.cv_metrics(pipeline.model)
    assert str(info.value) == (
        f"model run {pipeline.model.id} is not a cross-validation run; train with --cv for fold metrics"
    )


@pytest.fixture(scope="module")
def rendered(pipeline: Pipeline) -> Run:
    """The model report of the run with curve points (offline engine)."""
    return render_report(pipeline.model, store=pipeline.store, home=pipeline.home, engine="offline")


@pytest.mark.slow
def test_model_report_is_self_contained_with_its_figures(rendered: Run) -> None:
    """The HTML embeds the four figures (curves, calibration, confusion, training) and fetches nothing."""
    html = report_files(rendered)[0].read_text(encoding="utf-8")
    assert external_references(html) == []
    assert embedded_images(html) == 4
    for label in ("fig-curves", "fig-calibration", "fig-confusion", "fig-training"):
        assert f'<figure id="{label}"' in html
    assert re.search(r'<a href="#tbl-metrics"[^>]*>Table 3</a>', html)
    assert "AUROC" in html
    assert "stores no curve points" not in html
    assert pdf_pages(rendered) >= 3
    assert f"by its decision rule, <strong>{api.model_decision(rendered_model(rendered))}</strong>" in html
    assert raw_column_names(html) == []
    assert layout_problems(rendered, "model") == []


def rendered_model(report: Run) -> Run:
    """The model run a report run reports."""
    return api.load_run(str(report.manifest.parents[0]), report.path.parent.parent)


@pytest.mark.slow
def test_model_report_shows_no_cohort_id_or_time(pipeline: Pipeline, rendered: Run) -> None:
    """No subject, admission or stay id, and no date of the cohort, appears in the HTML, notebook or PDF."""
    assert leaks(rendered, pipeline.query, "model") == []


@pytest.mark.parametrize("document", ["model", "attack", "pipeline", "robustness", "tuning"])
def test_report_documents_take_a_run_id(document: str) -> None:
    """Every report document has a parameters cell taking run_id."""
    text = (Path(__file__).resolve().parents[1] / "reports" / f"{document}.qmd").read_text(encoding="utf-8")
    assert "#| tags: [parameters]" in text
    assert "run_id = None" in text
