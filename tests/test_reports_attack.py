"""The attack report and the pipeline report: results API over attack and analysis runs, and their renders.

The pipeline: query → features → model (tiny training) → tune-attack → attack (a hand-built
AttackBatchResult) → analysis (the real analysis stage).
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from lstm_adv.domain.errors import DataError, RunKindError
from lstm_adv.reports import PIPELINE, document_for, render_pipeline_report, render_report, report_files
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
from tests.report_runs import Pipeline, make_full_pipeline
from tests.strategies import analysis_attack_result
from tests.summaries import attack_summary


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The whole fixture pipeline up to an analysis run."""
    return make_full_pipeline(tmp_path_factory.mktemp("attack-report") / "home")


def test_attack_and_analysis_kinds_share_the_attack_document() -> None:
    """Attack and analysis runs are both rendered with reports/attack.qmd."""
    assert document_for("attack") == document_for("analysis") == "attack"


def test_attack_and_analysis_are_found_from_either_run(pipeline: Pipeline) -> None:
    """From the attack run the report finds its analysis, and from the analysis its attack."""
    assert pipeline.attack is not None
    assert pipeline.analysis is not None
    expected = (pipeline.attack.id, pipeline.analysis.id)
    for run in (pipeline.attack, pipeline.analysis):
        attack, analysis = api.attack_and_analysis(run)
        assert (attack.id, analysis.id) == expected


def test_an_attack_without_analysis_names_the_command(pipeline: Pipeline) -> None:
    """An attack run that was never analysed is refused with the command that analyses it."""
    with pipeline.store.create("attack", parents=[pipeline.model.id]) as writer:
        writer.summary = attack_summary(
            analysis_attack_result(3, 5), features_run=pipeline.features.id, model_run=pipeline.model.id
        )
    attack = writer.committed
    assert attack is not None
    with pytest.raises(DataError) as info:
        api.attack_and_analysis(attack)
    assert str(info.value) == (
        f"attack run {attack.id} has no analysis run yet; run `lstm-adv analyze --attack {attack.id}` first"
    )
    with pytest.raises(RunKindError):
        api.attack_and_analysis(pipeline.model)


def test_success_table_adds_up(pipeline: Pipeline) -> None:
    """Per-direction attacked and successful counts sum to the overall row, which matches the summary."""
    assert pipeline.analysis is not None
    success = api.attack_success(pipeline.analysis)
    directions, overall = success.iloc[:-1], success.iloc[-1]
    assert overall["direction"] == "all"
    assert directions["attacked"].sum() == overall["attacked"]
    assert directions["successful"].sum() == overall["successful"] == pipeline.analysis.manifest.summary.n_successful


def test_norms_compare_first_best_and_sparse_per_direction(pipeline: Pipeline) -> None:
    """The norm table has first, best and sparse rows per direction; best L1 never exceeds first L1 on average,
    sparse L0 never exceeds best L0; every changed cell's measured share lies in [0, 1]."""
    assert pipeline.analysis is not None
    norms = api.perturbation_norms(pipeline.analysis).set_index(["example", "direction"])
    assert set(norms.index) == {(w, d) for w in ("first", "best", "sparse") for d in ("0→1", "1→0")}
    for direction in ("0→1", "1→0"):
        assert norms.loc[("best", direction), "l1_mean"] <= norms.loc[("first", direction), "l1_mean"] + 1e-12
        assert norms.loc[("sparse", direction), "l0_mean"] <= norms.loc[("best", direction), "l0_mean"]
        assert norms.loc[("best", direction), "n"] == norms.loc[("first", direction), "n"]
        assert norms.loc[("sparse", direction), "n"] == norms.loc[("best", direction), "n"]
    assert norms["measured_share"].between(0.0, 1.0).all()


def test_feature_ranking_starts_with_the_summary_top_features(pipeline: Pipeline) -> None:
    """The ranked features per direction start with the analysis summary's top features, with clinical units."""
    assert pipeline.analysis is not None
    ranking = api.feature_ranking(pipeline.analysis, "best", top=5)
    top = pipeline.analysis.manifest.summary.top_features["best"]
    assert ranking.loc[ranking["direction"] == "0→1", "feature"].tolist() == list(top["0to1"])
    assert ranking.loc[ranking["direction"] == "1→0", "feature"].tolist() == list(top["1to0"])
    assert (ranking["max_abs_delta"] >= ranking["median_abs_delta"]).all()


def test_pipeline_runs_follow_lineage_and_summary_references(pipeline: Pipeline) -> None:
    """From the analysis run the pipeline finds every stage's run, in pipeline order."""
    assert pipeline.analysis is not None
    runs = api.pipeline_runs(pipeline.analysis)
    assert list(runs) == ["query", "features", "model", "tune-attack", "attack", "analysis"]
    assert runs["model"].id == pipeline.model.id
    assert runs["query"].id == pipeline.query.id


def dense_copy(pipeline: Pipeline, *, dense_l0_share: float = 0.25) -> Run:
    """A copy of the analysis run (not a child of the attack) whose best examples are the first ones and change
    800 of the 912 cells, as an attack that stops improving after its first, dense success."""
    assert pipeline.analysis is not None
    source = pipeline.analysis
    config = source.manifest.config | {
        "analysis": source.manifest.config["analysis"] | {"dense_l0_share": dense_l0_share}
    }
    with pipeline.store.create("analysis", config=config) as writer:
        for path in source.path.iterdir():
            if path.name not in ("manifest.json", "examples.parquet"):
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, writer.path / path.name)
        examples = pd.read_parquet(source.file("examples.parquet"))
        first = examples[examples["which"] == "first"]
        best = examples["which"] == "best"
        examples.loc[best, ["l0", "l1", "linf", "iteration"]] = first[["l0", "l1", "linf", "iteration"]].to_numpy()
        examples.loc[examples["which"] != "sparse", "l0"] = 800
        examples.to_parquet(writer.file("examples.parquet"))
        writer.summary = source.manifest.summary
    assert writer.committed is not None
    return writer.committed


def test_dense_warning_is_quiet_for_sparse_examples(pipeline: Pipeline) -> None:
    """The fixture's examples change a few dozen cells and the best improves on the first: no caution."""
    assert pipeline.analysis is not None
    assert api.dense_warning(pipeline.analysis) is None
    density = api.example_density(pipeline.analysis).set_index(["example", "direction"])
    assert density.loc[("best", "all"), "first_is_best"] < 0.5


def test_dense_warning_fires_when_first_is_best_and_l0_is_large(pipeline: Pipeline) -> None:
    """When the best example is the first for every sample and changes 800 cells, the caution names both; the
    pipeline report, which shows only sparse examples, stays quiet about them."""
    warning = api.dense_warning(dense_copy(pipeline))
    assert warning is not None
    assert warning.startswith("**Caution — dense perturbations:** the median L0 of the shown examples exceeds 25% of")
    assert "first 800 (88%), best 800 (88%)" in warning
    assert "for 100% of the successful samples the best example is the first successful iterate" in warning
    assert api.dense_warning(dense_copy(pipeline), ("sparse",)) is None


def test_dense_share_setting_moves_the_limit(pipeline: Pipeline) -> None:
    """With analysis.dense_l0_share = 0.95 an L0 of 800 cells is not dense; first = best still is."""
    warning = api.dense_warning(dense_copy(pipeline, dense_l0_share=0.95))
    assert warning is not None
    assert "median L0" not in warning
    assert "best example is the first successful iterate" in warning


@pytest.fixture(scope="module")
def rendered(pipeline: Pipeline) -> dict[str, Run]:
    """The attack report (from the attack run) and the pipeline report (from the analysis run)."""
    assert pipeline.attack is not None
    assert pipeline.analysis is not None
    store, home = pipeline.store, pipeline.home
    return {
        "attack": render_report(pipeline.attack, store=store, home=home, engine="offline"),
        PIPELINE: render_pipeline_report(pipeline.analysis, store=store, home=home, engine="offline"),
    }


@pytest.mark.slow
def test_attack_report_is_self_contained_with_the_stored_figures(rendered: dict[str, Run]) -> None:
    """The attack HTML embeds the eleven stored analysis figures and fetches nothing, states the decision rule
    and the measured share; the PDF has pages."""
    report = rendered["attack"]
    html = report_files(report)[0].read_text(encoding="utf-8")
    assert external_references(html) == []
    assert embedded_images(html) == 11
    assert "threshold t = 0.500 on P(death), chosen on the validation split (max F1)" in html
    assert "held a real measurement" in html
    assert "Caution — dense" not in html
    assert raw_column_names(html) == []
    assert layout_problems(report, "attack") == []
    for label in (
        "fig-l0",
        "fig-l1",
        "fig-discovery",
        "fig-gpp",
        "fig-gmp",
        "fig-ranking",
        "fig-hours",
        "fig-gpp-best",
    ):
        assert f'<figure id="{label}"' in html
    assert "holds no figure" not in html
    assert pdf_pages(report) >= 4


@pytest.mark.slow
def test_pipeline_report_has_a_section_per_stage(rendered: dict[str, Run]) -> None:
    """The pipeline report has the cohort, model, attack and feature sections, one figure, and no missing stage."""
    report = rendered[PIPELINE]
    assert report.manifest.summary.document == PIPELINE
    html = report_files(report)[0].read_text(encoding="utf-8")
    assert external_references(html) == []
    for heading in ("Cohort", "Model", "Attack", "Most susceptible features"):
        assert f">{heading}</h2>" in html
    assert "This pipeline has no" not in html
    assert embedded_images(html) == 1
    assert pdf_pages(report) >= 2
    assert "It predicts death by its decision rule, <strong>threshold t = " in html
    assert raw_column_names(html) == []
    assert layout_problems(report, PIPELINE) == []


@pytest.mark.slow
@pytest.mark.parametrize("document", ["attack", PIPELINE])
def test_attack_and_pipeline_reports_show_no_cohort_id_or_time(
    pipeline: Pipeline, rendered: dict[str, Run], document: str
) -> None:
    """No subject, admission or stay id, and no date of the cohort, appears in the HTML, notebook or PDF."""
    assert leaks(rendered[document], pipeline.query, document) == []
