"""The analysis stage: per-example norms, per-cell GMP/GPP/GANZP/GAP, susceptibility, rankings, the run."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_adv.analysis import (
    RECORD_TABLES,
    TABLES,
    analyse_attack,
    cell_stats,
    clinical_stats,
    example_stats,
    rank_descending,
    run_analysis,
    split_groups,
)
from lstm_adv.cli import app
from lstm_adv.config import AnalysisConfig
from lstm_adv.domain.errors import ConfigError, DataError, RunKindError
from lstm_adv.domain.feature_matrix import FeatureMatrix, ScalingStats
from lstm_adv.domain.perturbation import AttackBatchResult, Perturbation
from lstm_adv.figures import (
    feature_ranking,
    heatmaps,
    hour_susceptibility,
    norm_histograms,
    save_figure,
    write_figures,
)
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore
from tests.full_disk import assert_one_full_disk_line, full_disk
from tests.strategies import analysis_attack_result, analysis_attack_results, analysis_deltas, tiny_feature_matrix
from tests.summaries import attack_summary

runner = CliRunner(env={"COLUMNS": "200"})
N_SAMPLES = 60


# --- naive reference: one example, one cell at a time ---------------------------------------------


def naive_cells(deltas: np.ndarray) -> dict[str, np.ndarray]:
    """GMP, GPP, GANZP, GAP, sensitivity by looping over cells and examples (the definitions read literally)."""
    n = deltas.shape[0]
    out = {name: np.zeros((48, 19)) for name in ("gmp", "gpp", "ganzp", "gap", "sensitivity")}
    for i in range(48):
        for j in range(19):
            values = [abs(float(deltas[k, i, j])) for k in range(n)]
            nonzero = [v for v in values if v != 0]
            out["gmp"][i, j] = max(values)
            out["gpp"][i, j] = len(nonzero) / n
            out["ganzp"][i, j] = sum(nonzero) / len(nonzero) if nonzero else 0.0
            out["gap"][i, j] = sum(values) / n
            ganzp = out["ganzp"][i, j]
            out["sensitivity"][i, j] = out["gpp"][i, j] / ganzp if ganzp else 0.0
    return out


@given(analysis_deltas)
def test_cell_statistics_match_a_naive_per_cell_reference(deltas: np.ndarray) -> None:
    """GMP, GPP, GANZP (0 without non-zero), GAP, sensitivity (0 where GANZP = 0) and both susceptibilities
    equal a per-example, per-cell Python loop."""
    stats = cell_stats(deltas)
    naive = naive_cells(deltas)
    for name in ("gmp", "gpp", "ganzp", "gap"):
        np.testing.assert_allclose(getattr(stats, name), naive[name], rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(stats.sensitivity, naive["sensitivity"], rtol=1e-12)
    s_j = [sum(naive["gmp"][i, j] * naive["gpp"][i, j] for i in range(48)) for j in range(19)]
    s_i = [sum(naive["gmp"][i, j] * naive["gpp"][i, j] for j in range(19)) for i in range(48)]
    np.testing.assert_allclose(stats.feature_susceptibility, s_j, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(stats.hour_susceptibility, s_i, rtol=1e-12, atol=1e-15)
    assert stats.n_examples == deltas.shape[0]
    assert (stats.n_nonzero == np.count_nonzero(deltas, axis=0)).all()


def test_gap_is_a_48_by_19_matrix_not_a_scalar() -> None:
    """GAP keeps one mean |δ| per hour and feature (a single scalar would hide where perturbations fall)."""
    deltas = np.zeros((2, 48, 19), dtype=np.float32)
    deltas[0, 3, 5], deltas[1, 3, 5], deltas[1, 40, 18] = 0.5, -0.25, 1.0
    gap = cell_stats(deltas).gap
    assert gap.shape == (48, 19)
    assert gap[3, 5] == 0.375
    assert gap[40, 18] == 0.5
    assert np.count_nonzero(gap) == 2


def test_cell_statistics_of_no_examples_is_an_error() -> None:
    """Statistics over zero examples are undefined and refused with a clear message."""
    with pytest.raises(DataError) as info:
        cell_stats(np.zeros((0, 48, 19), dtype=np.float32))
    assert str(info.value) == "cell statistics need at least one example; got an empty (0, 48, 19) array"


@given(analysis_deltas)
def test_example_norms_match_perturbation(deltas: np.ndarray) -> None:
    """Per-example L0, L1, L∞ equal Perturbation's; mean non-zero |δ| is L1 / L0 (0 for δ = 0)."""
    stats = example_stats(deltas)
    for k, delta in enumerate(deltas):
        p = Perturbation(delta)
        assert stats.l0[k] == p.l0
        assert stats.l1[k] == pytest.approx(p.l1, rel=1e-12)
        assert stats.linf[k] == (p.linf if p.l0 else 0.0)
        assert stats.mean_nonzero[k] == pytest.approx(p.l1 / p.l0 if p.l0 else 0.0, rel=1e-12)


def _scaling(span: np.ndarray) -> ScalingStats:
    names = tiny_feature_matrix(6).feature_names
    p5 = np.linspace(-5, 5, 19)
    return ScalingStats(feature_names=names, p5=p5, p95=p5 + span, median=p5 + span / 2)


@given(analysis_deltas)
def test_clinical_units_are_delta_times_the_p5_p95_span(deltas: np.ndarray) -> None:
    """|δ| in clinical units is |δ|·(p95 − p5) per feature; median/mean/max run over non-zero cells only."""
    span = np.arange(1.0, 20.0) * 3.5
    stats = clinical_stats(deltas, _scaling(span))
    for j in range(19):
        values = [abs(float(v)) * span[j] for v in deltas[:, :, j].ravel() if v != 0]
        assert stats.n_nonzero[j] == len(values)
        assert stats.mean[j] == pytest.approx(float(np.mean(values)) if values else 0.0, rel=1e-9)
        assert stats.median[j] == pytest.approx(float(np.median(values)) if values else 0.0, rel=1e-9)
        assert stats.max[j] == pytest.approx(max(values, default=0.0), rel=1e-9)
    one = clinical_stats(deltas[:1], _scaling(span))
    np.testing.assert_allclose(one.max, np.abs(Perturbation(deltas[0]).clinical(span)).max(axis=0), rtol=1e-12)


def test_rank_descending_breaks_ties_by_position() -> None:
    """Ranks start at 1 for the largest score; equal scores keep their input order."""
    assert rank_descending([0.5, 2.0, 0.5, 3.0, 0.0, 2.0]).tolist() == [4, 2, 5, 1, 6, 3]
    assert rank_descending([0.0, 0.0, 0.0]).tolist() == [1, 2, 3]


@given(analysis_attack_results)
def test_groups_split_successes_by_predicted_class_and_example_kind(result: AttackBatchResult) -> None:
    """0to1 holds successes predicted 0 at δ = 0 (by the attack's rule), 1to0 those predicted 1; first, best
    and sparse take their own δ (sparse examples were pruned from the best iterate)."""
    groups = {(g.which, g.direction): g for g in split_groups(result)}
    assert list(groups) == [(w, d) for w in ("first", "best", "sparse") for d in ("0to1", "1to0")]
    for which, deltas, iterations in (
        ("first", result.first_delta, result.first_iteration),
        ("best", result.best_delta, result.best_iteration),
        ("sparse", result.sparse_delta, result.best_iteration),
    ):
        for direction, predicted in (("0to1", 0), ("1to0", 1)):
            rows = [k for k in range(result.n) if result.found[k] and result.predicted[k] == predicted]
            group = groups[which, direction]
            assert group.n == len(rows)
            np.testing.assert_array_equal(group.deltas, deltas[rows])
            np.testing.assert_array_equal(group.iterations, iterations[rows])


def test_direction_follows_the_prediction_not_the_label() -> None:
    """An attacked misclassified sample (label 1, predicted 0) counts as a 0→1 flip."""
    result = analysis_attack_result(3, 6)
    flipped = attrs.evolve(result, label=1 - result.predicted)
    assert [g.n for g in split_groups(flipped)] == [g.n for g in split_groups(result)]


@given(analysis_attack_results)
def test_tables_agree_with_the_pure_statistics(result: AttackBatchResult) -> None:
    """Each table holds, per group with examples, exactly what the pure functions compute; rankings descend."""
    scaling = _scaling(np.full(19, 2.0))
    tables = analyse_attack(result, scaling)
    for group in split_groups(result):
        keys = {"which": group.which, "direction": group.direction}
        cells = _select(tables.cells, keys)
        examples = _select(tables.examples, keys)
        assert len(examples) == group.n
        if group.n == 0:
            assert cells.empty
            assert _select(tables.features, keys).empty
            assert _select(tables.hours, keys).empty
            continue
        stats = cell_stats(group.deltas)
        np.testing.assert_array_equal(cells["gap"].to_numpy().reshape(48, 19), stats.gap)
        np.testing.assert_array_equal(cells["gpp"].to_numpy().reshape(48, 19), stats.gpp)
        features = _select(tables.features, keys)
        np.testing.assert_array_equal(features["susceptibility"], stats.feature_susceptibility)
        ordered = features.sort_values("rank")
        assert ordered["susceptibility"].is_monotonic_decreasing
        assert sorted(_select(tables.hours, keys)["rank"]) == list(range(1, 49))


@given(analysis_attack_results)
def test_discovery_curve_ends_at_the_success_rate(result: AttackBatchResult) -> None:
    """The cumulative first-success fraction is non-decreasing and ends at the direction's success rate."""
    discovery = analyse_attack(result, _scaling(np.ones(19))).discovery
    for direction, predicted in (("0to1", 0), ("1to0", 1)):
        rows = discovery[discovery["direction"] == direction]
        assert len(rows) == result.iterations
        assert rows["cumulative_first_fraction"].is_monotonic_increasing
        mine = result.predicted == predicted
        attacked = int((result.attacked & mine).sum())
        rate = (result.found & mine).sum() / attacked if attacked else 0.0
        assert rows["cumulative_first_fraction"].iloc[-1] == pytest.approx(rate)
        assert rows["best_found"].sum() == (result.found & mine).sum()


def _select(table: pd.DataFrame, keys: dict[str, str]) -> pd.DataFrame:
    return table[(table["which"] == keys["which"]) & (table["direction"] == keys["direction"])]


# --- the run ----------------------------------------------------------------------------------------


def _features_matrix() -> FeatureMatrix:
    matrix = tiny_feature_matrix(N_SAMPLES)
    return attrs.evolve(matrix, scaling=_scaling(np.arange(1.0, 20.0)))


def make_runs(store: RunStore, result: AttackBatchResult, *, summary: bool = True) -> tuple[Run, Run]:
    """A features run and an attack run (whose parent is the features run here; the tuning run is not needed).

    ``summary`` false: the attack run records no summary (as if written by another tool)."""
    with store.create("features") as writer:
        _features_matrix().to_npz(writer.file("features.npz"))
    features = writer.committed
    assert features is not None
    with store.create("attack", parents=[features.id]) as writer:
        result.to_npz(writer.file("results.npz"))
        if summary:
            writer.summary = attack_summary(result, features_run=features.id, model_run=features.id)
    assert writer.committed is not None
    return features, writer.committed


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunStore, Run, Run, AttackBatchResult]:
    """One analysis run over a 60-sample attack (figures are drawn once for the whole module)."""
    store = RunStore(tmp_path_factory.mktemp("home") / "runs")
    result = analysis_attack_result(7, N_SAMPLES)
    _, attack = make_runs(store, result)
    config = load_config(overrides={"analysis.figure_dpi": 50})  # the figures' content, not their resolution, is tested
    return store, attack, run_analysis(store, str(attack.id), config), result


def test_analysis_run_writes_every_table_and_figure(analysed: tuple[RunStore, Run, Run, AttackBatchResult]) -> None:
    """The run is an analysis child of the attack with every table and each figure as non-empty PNG and SVG."""
    _, attack, run, _ = analysed
    assert run.kind == "analysis"
    assert run.manifest.parents == (attack.id,)
    for name in TABLES:  # the record threat's tables are empty for a cell threat's attack
        assert pd.read_parquet(run.file(f"{name}.parquet")).empty == (name in RECORD_TABLES)
    figures = run.manifest.summary.figures
    stems = {Path(name).stem for name in figures}
    assert {
        "l0_histogram",
        "l1_histogram",
        "discovery",
        "heatmap_gpp_best",
        "heatmap_gmp_best",
        "feature_ranking_best",
        "heatmap_gpp_first",
        "feature_ranking_first",
        "heatmap_gpp_sparse",
        "heatmap_gmp_sparse",
        "feature_ranking_sparse",
        "hour_susceptibility_sparse",
    } <= stems
    for stem in stems:
        png, svg = run.file(f"figures/{stem}.png").read_bytes(), run.file(f"figures/{stem}.svg").read_bytes()
        assert png.startswith(b"\x89PNG")
        assert len(png) > 1000
        assert svg.lstrip().startswith(b"<?xml")
        assert b"</svg>" in svg
    assert run.verify() == []


def test_analysis_tables_carry_no_ids(analysed: tuple[RunStore, Run, Run, AttackBatchResult]) -> None:
    """No table has a sample, subject, admission or stay id column (reports show aggregates only)."""
    _, _, run, _ = analysed
    for name in TABLES:
        columns = pd.read_parquet(run.file(f"{name}.parquet")).columns
        assert not [c for c in columns if "id" in c.split("_") or "index" in c], (name, list(columns))


def test_analysis_tables_have_the_documented_columns(analysed: tuple[RunStore, Run, Run, AttackBatchResult]) -> None:
    """examples, cells, features and hours hold the columns other stages and reports read."""
    _, _, run, result = analysed
    examples = pd.read_parquet(run.file("examples.parquet"))
    assert list(examples.columns) == [
        "which",
        "direction",
        "l0",
        "l1",
        "linf",
        "mean_nonzero",
        "input_l0",
        "iteration",
        "measured",
    ]
    assert len(examples) == 3 * int(result.found.sum())
    assert set(examples["direction"]) == {"0to1", "1to0"}
    cells = pd.read_parquet(run.file("cells.parquet"))
    assert {"hour", "feature", "gmp", "gpp", "ganzp", "gap", "sensitivity", "n_nonzero", "n_examples"} <= set(cells)
    assert len(cells) == 6 * 48 * 19
    features = pd.read_parquet(run.file("features.parquet"))
    assert {"feature", "unit", "susceptibility", "rank", "mean_clinical_abs_delta"} <= set(features)
    assert features.loc[features["feature"] == "heartrate", "unit"].iloc[0] != ""


def test_analysis_summary_names_counts_and_top_features(analysed: tuple[RunStore, Run, Run, AttackBatchResult]) -> None:
    """The summary has counts per direction, the success rate, mean L0/L1 and the top-5 features per group."""
    _, attack, run, result = analysed
    summary = run.manifest.summary
    assert summary.attack_run == attack.id
    assert summary.n_successful == int(result.found.sum())
    assert summary.success_rate == pytest.approx(result.success_rate)
    found_0 = int((result.found & (result.predicted == 0)).sum())
    assert summary.directions["0to1"].successful == found_0
    assert summary.mean_l0["best"]["all"] == pytest.approx(result.l0("best")[result.found].mean())
    features = pd.read_parquet(run.file("features.parquet"))
    best = features[(features["which"] == "best") & (features["direction"] == "1to0")].sort_values("rank")
    assert summary.top_features["best"]["1to0"] == tuple(best["feature"].head(5).tolist())
    observed = _features_matrix().observed
    assert observed is not None
    for which in ("first", "best", "sparse"):
        changed = result.deltas(which)[result.found] != 0
        share = (changed & observed[result.sample_index[result.found]]).sum() / changed.sum()
        assert summary.measured_fraction[which]["all"] == pytest.approx(share)
        assert summary.median_l0[which]["all"] == pytest.approx(np.median(result.l0(which)[result.found]))
    assert (summary.decision, summary.threshold, summary.cells) == ("threshold", 0.5, "all")
    assert len(summary.top_hours["first"]["0to1"]) == 5


def test_figures_are_deterministic(tmp_path: Path) -> None:
    """Drawing the same tables twice gives byte-identical PNG and SVG files."""
    tables = analyse_attack(analysis_attack_result(1, 8), _scaling(np.ones(19)))
    for folder in ("a", "b"):
        save_figure(heatmaps(tables.cells, "gpp", "best", "GPP"), tmp_path / folder, "heatmap", dpi=40)
        save_figure(feature_ranking(tables.features, "first"), tmp_path / folder, "ranking", dpi=40)
    for name in ("heatmap.png", "heatmap.svg", "ranking.png", "ranking.svg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_heatmaps_leave_never_changed_cells_white_and_histograms_name_the_unit() -> None:
    """A heatmap masks exactly the cells at zero (drawn white) and scales the rest from zero; the L0 histogram's
    axis names what L0 counts for the threat."""
    from lstm_adv.figures import _figures

    tables = analyse_attack(analysis_attack_result(1, 8), _scaling(np.ones(19)))
    figure = heatmaps(tables.cells, "gpp", "best", "GPP")
    rows = tables.cells[(tables.cells["which"] == "best") & (tables.cells["direction"] == "0to1")]
    matrix = rows["gpp"].to_numpy().reshape(48, 19).T
    shown = figure.axes[0].images[0].get_array()
    assert np.array_equal(np.ma.getmaskarray(shown), matrix == 0)
    assert 0 < (matrix == 0).sum() < matrix.size
    assert figure.axes[0].images[0].norm.vmin == 0.0
    config = AnalysisConfig(figure_dpi=30)
    for unit, label in (("measurement", "altered measurements"), ("cell", "changed cells of 912")):
        name, histogram = next(iter(_figures(tables.as_dict(), config, unit)))
        assert name == "l0_histogram"
        assert label in histogram.axes[0].get_xlabel()


def test_figures_cope_with_a_direction_without_successes(tmp_path: Path) -> None:
    """With no 1→0 success, tables have no 1to0 rows and every figure is still drawn as PNG and SVG."""
    result = analysis_attack_result(5, 10)
    found = result.found & (result.predicted == 0)
    result = attrs.evolve(result, found=found, **_zero_unfound(result, found))
    tables = analyse_attack(result, _scaling(np.ones(19)))
    assert set(tables.cells["direction"]) == {"0to1"}
    names = write_figures(tables.as_dict(), tmp_path / "figures", AnalysisConfig(figure_dpi=30))
    assert len(names) == 2 * 15  # 3 norm and discovery figures, 4 maps for each of first, best, sparse
    assert all((tmp_path / name).stat().st_size > 0 for name in names)


def test_a_direction_without_successes_gets_no_empty_panel() -> None:
    """With no 1→0 success, each figure draws only the 0→1 panel and its title says 1→0 had no successful example."""
    result = analysis_attack_result(5, 10)
    found = result.found & (result.predicted == 0)
    result = attrs.evolve(result, found=found, **_zero_unfound(result, found))
    tables = analyse_attack(result, _scaling(np.ones(19)))
    config = AnalysisConfig(figure_dpi=30)
    drawn = {
        "ranking": feature_ranking(tables.features, "sparse"),
        "hours": hour_susceptibility(tables.hours, "best"),
        "l0": norm_histograms(tables.examples, "l0", "L0", config),
    }
    for name, figure in drawn.items():
        assert len(figure.axes) == 1, name
        assert figure.get_suptitle().endswith("\n(1→0: no successful examples)"), name
    heatmap = heatmaps(tables.cells, "gpp", "first", "GPP")
    titles = [ax.get_title() for ax in heatmap.axes if ax.get_title()]
    assert titles == [f"0→1 flips (n = {int(found.sum())}; white: never changed)"]


def _zero_unfound(result: AttackBatchResult, found: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of ``result`` with zeros wherever ``found`` is false (the AttackBatchResult invariant)."""
    out = {}
    for name in (
        "first_delta",
        "best_delta",
        "sparse_delta",
        "first_logits",
        "best_logits",
        "sparse_logits",
        "first_iteration",
        "best_iteration",
    ):
        column = getattr(result, name)
        mask = found.reshape((-1,) + (1,) * (column.ndim - 1))
        out[name] = np.where(mask, column, 0).astype(column.dtype)
    return out


def test_wrong_kind_is_refused_and_writes_no_run(tmp_path: Path) -> None:
    """Analysing a features run is a RunKindError naming both kinds; no analysis run is written."""
    store = RunStore(tmp_path / "runs")
    features, _ = make_runs(store, analysis_attack_result(2, N_SAMPLES))
    with pytest.raises(RunKindError) as info:
        run_analysis(store, str(features.id), load_config())
    assert str(info.value) == f"run {features.id} is a features run; this needs an attack run"
    assert store.list("analysis") == []


def test_attack_without_successes_is_refused_and_writes_no_run(tmp_path: Path) -> None:
    """An attack with no successful example is a DataError saying there is nothing to analyse."""
    store = RunStore(tmp_path / "runs")
    result = analysis_attack_result(2, N_SAMPLES)
    none_found = np.zeros(N_SAMPLES, dtype=bool)
    result = attrs.evolve(result, found=none_found, **_zero_unfound(result, none_found))
    _, attack = make_runs(store, result)
    with pytest.raises(DataError) as info:
        run_analysis(store, str(attack.id), load_config())
    assert str(info.value) == (
        f"attack run {attack.id} has no successful examples ({int(result.attacked.sum())} attacked); "
        "nothing to analyse. Attack more samples or with a larger budget"
    )
    assert store.list("analysis") == []
    assert not list((tmp_path / "runs" / ".tmp").iterdir())


def test_attack_without_features_run_is_refused(tmp_path: Path) -> None:
    """An attack whose summary does not name its features run cannot be put in clinical units."""
    store = RunStore(tmp_path / "runs")
    _, attack = make_runs(store, analysis_attack_result(2, N_SAMPLES), summary=False)
    with pytest.raises(DataError) as info:
        run_analysis(store, str(attack.id), load_config())
    assert str(info.value) == (
        f"attack run {attack.id} does not name its features run (it has no attack summary); re-run `lstm-adv attack`"
    )


def test_attack_of_another_feature_matrix_is_refused(tmp_path: Path) -> None:
    """Sample indices beyond the features run's samples mean the runs do not belong together."""
    store = RunStore(tmp_path / "runs")
    result = analysis_attack_result(2, N_SAMPLES)
    result = attrs.evolve(result, sample_index=result.sample_index + 1)
    features, attack = make_runs(store, result)
    with pytest.raises(DataError) as info:
        run_analysis(store, str(attack.id), load_config())
    assert str(info.value) == (
        f"attack run {attack.id} refers to sample {N_SAMPLES}, but features run {features.id} has only "
        f"{N_SAMPLES} samples; the runs do not belong together"
    )


def test_bad_top_k_is_a_config_error(tmp_path: Path) -> None:
    """analysis.top_k below 1 is refused when the configuration is loaded, before anything is read."""
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"analysis.top_k": 0})
    assert str(info.value) == "analysis.top_k must be an integer ≥ 1, got 0"


# --- command line ---------------------------------------------------------------------------------------


def test_cli_analyze_prints_the_run_id_and_runs_show_renders_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lstm-adv analyze --attack <id>` prints its summary and the new run id; `runs show` prints counts and
    rankings."""
    monkeypatch.setattr("lstm_adv.figures.write_figures", lambda *args, **kwargs: [])  # drawn and checked above
    store = RunStore(tmp_path / "runs")
    _, attack = make_runs(store, analysis_attack_result(4, 12))
    result = runner.invoke(app, ["--home", str(tmp_path), "analyze", "--attack", str(attack.id), "--top", "3"])
    assert result.exit_code == 0, result.output
    (run,) = store.list("analysis")
    assert str(run.id) in result.output
    assert len(run.manifest.summary.top_features["best"]["0to1"]) == 3
    assert result.output.rstrip().endswith(f"analysis run {run.id}")
    assert "decision rule: threshold t = 0.500" in result.output
    assert "size of the successful examples" in result.output
    shown = runner.invoke(app, ["--home", str(tmp_path), "runs", "show", str(run.id)])
    assert shown.exit_code == 0, shown.output
    assert "0→1" in shown.output
    assert "most susceptible features" in shown.output


def test_cli_analyze_reports_a_wrong_kind_in_one_line(tmp_path: Path) -> None:
    """A features run given as --attack is one error line and exit code 1."""
    store = RunStore(tmp_path / "runs")
    features, _ = make_runs(store, analysis_attack_result(4, 12))
    result = runner.invoke(app, ["--home", str(tmp_path), "analyze", "--attack", str(features.id)])
    assert result.exit_code == 1
    assert f"run {features.id} is a features run; this needs an attack run" in result.output


def test_cli_analyze_on_a_full_disk_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while `analyze` writes its tables: one error line, exit 1, no analysis run and no temporary folder."""
    store = RunStore(tmp_path / "runs")
    _, attack = make_runs(store, analysis_attack_result(4, 12))
    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    result = runner.invoke(app, ["--home", str(tmp_path), "analyze", "--attack", str(attack.id)])
    assert result.exit_code == 1
    assert_one_full_disk_line(result.output, "analysis", tmp_path)
    assert store.list("analysis") == []


# --- the record threat ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def record_analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, AttackBatchResult, FeatureMatrix]:
    """An analysis of a real record-threat attack on the tiny features matrix."""
    from lstm_adv.attacks import L1Attack, L1Settings, RecordThreat
    from tests.attack_models import TinyLSTM

    matrix = _features_matrix()
    threat = RecordThreat(matrix.scaling.scaled_median)
    attack = L1Attack(TinyLSTM(hidden=8, seed=3), L1Settings(max_iterations=30, search_steps=2), threat=threat)
    rows = np.arange(N_SAMPLES)
    result = attack.run(matrix.values, matrix.labels, sample_index=rows, record=matrix.record_values())
    store = RunStore(tmp_path_factory.mktemp("record") / "runs")
    _, attack_run = make_runs(store, result)
    config = load_config(overrides={"analysis.figure_dpi": 50, "analysis.bootstrap_samples": 200})
    return run_analysis(store, str(attack_run.id), config), result, matrix


def test_record_measurements_agree_with_an_independent_count(
    record_analysed: tuple[Run, AttackBatchResult, FeatureMatrix],
) -> None:
    """Per feature: altered and available measurements, share, per-opportunity rate, leverage and the median
    clinical change equal a direct count over the sparse examples; intervals are ordered and in [0, 1]."""
    run, result, matrix = record_analysed
    table = pd.read_parquet(run.file("measurements.parquet"))
    direction = "0to1" if (result.found & (result.predicted == 0)).any() else "1to0"
    rows = result.found & (result.predicted == (0 if direction == "0to1" else 1))
    change = result.sparse_record_delta[rows]
    moved = result.sparse_delta[rows] != 0
    present = ~np.isnan(matrix.record_values()[result.sample_index[rows]])
    got = table[(table["which"] == "sparse") & (table["direction"] == direction)].set_index("feature")
    altered = np.count_nonzero(change, axis=1)  # (n, 19)
    for j, name in enumerate(matrix.feature_names):
        assert got.loc[name, "altered"] == altered[:, j].sum()
        assert got.loc[name, "available"] == present[:, :, j].sum()
        assert got.loc[name, "per_opportunity"] == pytest.approx(altered[:, j].sum() / present[:, :, j].sum())
        assert got.loc[name, "share"] == pytest.approx(altered[:, j].sum() / altered.sum())
        some = altered[:, j] > 0
        if some.any():
            expected = np.median(moved[some, :, j].sum(axis=1) / altered[some, j])
            assert got.loc[name, "leverage"] == pytest.approx(expected)
            clinical = change[:, :, j][change[:, :, j] != 0] * matrix.scaling.span[j]
            assert got.loc[name, "median_change"] == pytest.approx(np.median(clinical))
    for score in ("share", "per_opportunity"):
        assert (got[f"{score}_low"] <= got[f"{score}_high"] + 1e-12).all()
        assert ((got[f"{score}_low"] >= 0) & (got[f"{score}_high"] <= 1)).all()
    hours = pd.read_parquet(run.file("measurement_hours.parquet"))
    sparse_hours = hours[(hours["which"] == "sparse") & (hours["direction"] == direction)]
    assert sparse_hours["altered"].sum() == altered.sum()
    assert sparse_hours["hour"].tolist() == list(range(-1, 48))


def test_record_summary_counts_altered_measurements_with_intervals(
    record_analysed: tuple[Run, AttackBatchResult, FeatureMatrix],
) -> None:
    """The summary's unit is the altered measurement, L0 counts them, the leverage is the median input cells per
    altered measurement, and success and median L0 carry intervals around their values."""
    run, result, _ = record_analysed
    summary = run.manifest.summary
    found = result.found
    assert summary.unit == "measurement"
    assert summary.median_l0["sparse"]["all"] == pytest.approx(np.median(result.l0("sparse")[found]))
    examples = pd.read_parquet(run.file("examples.parquet"))
    sparse = examples[examples["which"] == "sparse"]
    assert sorted(sparse["l0"]) == sorted(np.count_nonzero(result.sparse_record_delta[found], axis=(1, 2)))
    assert sorted(sparse["input_l0"]) == sorted(np.count_nonzero(result.sparse_delta[found], axis=(1, 2)))
    assert summary.leverage == pytest.approx(float(np.median(sparse["input_l0"] / sparse["l0"])))
    for estimate in (summary.success, summary.median_l0_sparse):
        assert estimate.low <= estimate.value <= estimate.high
    features = pd.read_parquet(run.file("features.parquet"))
    assert (features["susceptibility_low"] <= features["susceptibility_high"]).all()
    assert set(summary.top_per_opportunity) == {"0to1", "1to0"}


@given(st.integers(0, 2**16), st.integers(2, 40))
@settings(max_examples=20, deadline=None)
def test_resampled_susceptibility_equals_recomputing_each_resample(seed: int, n: int) -> None:
    """S_j of each bootstrap resample (the vectorized form over non-zero entries) equals S_j recomputed from the
    resampled examples themselves."""
    from lstm_adv.measurements import susceptibility_resamples
    from lstm_adv.uncertainty import resample_counts

    rng = np.random.default_rng(seed)
    deltas = np.where(rng.random((n, 48, 19)) < 0.05, rng.normal(0, 0.3, (n, 48, 19)), 0).astype(np.float32)
    counts = resample_counts(n, 5, seed)
    fast = susceptibility_resamples(deltas, counts)
    for b in range(5):
        resampled = deltas[np.repeat(np.arange(n), counts[b])]
        np.testing.assert_allclose(fast[b], cell_stats(resampled).feature_susceptibility, atol=1e-12)
