"""Robustness curves: ε = 0 is the clean evaluation, attacks are fresh on final weights, bad input writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from lstm_adv.attacks import L1Attack, L1Settings
from lstm_adv.attacks.pgd import PgdAttack, PgdSettings
from lstm_adv.cli import app
from lstm_adv.config import Config, PgdConfig, RobustnessConfig
from lstm_adv.defend import run_defense
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import ConfigError, DataError, RunKindError
from lstm_adv.resources import load_feature_spec
from lstm_adv.results import api
from lstm_adv.results.artifacts import (
    CONFUSION_FILE,
    L1_FILE,
    feature_definitions,
    load_features,
    load_trained_model,
)
from lstm_adv.results.artifacts import ROBUSTNESS_CURVES_FILE as CURVES_FILE
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import RobustnessSummary
from lstm_adv.robustness import EvaluatedModel, attack_pool, l1_attack, obfuscation_check, run_robustness
from lstm_adv.targets import attack_surface
from lstm_adv.train import run_training
from lstm_adv.tune_attack import run_attack_tuning
from tests.test_defend import config as defend_config
from tests.test_defend import trained_store, weights_hash
from tests.test_train import FAST, PARAMS


def config(**robustness: Any) -> Config:
    """Fast settings: few PGD and L1 iterations, a short ε sweep."""
    settings = {"eps": (0.0, 0.05, 0.2), "l1_max_iterations": 20, **robustness}
    return attrs.evolve(defend_config(epochs=2), pgd=PgdConfig(iterations=3), robustness=RobustnessConfig(**settings))


TUNE = {
    "tune_attack.subset_size": 8,
    "tune_attack.max_iterations": 10,
    "attack.search_steps": 2,
    "attack.device": "cpu",
}


def tune_attack(store: RunStore, model: Run) -> Run:
    """A one-trial tune-attack run against ``model`` (the robustness stage's L1 attack reads its settings)."""
    return run_attack_tuning(store, model, load_config(overrides=TUNE), trials=1)


@pytest.fixture(scope="module")
def defended(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunStore, Run, Run, Run]:
    """A store with features, a baseline model (with a tuned attack) and its adaptive defense."""
    store, features_run, model_run = trained_store(tmp_path_factory.mktemp("robust") / "runs")
    tune_attack(store, model_run)
    return store, features_run, model_run, run_defense(store, model_run, defend_config(method="adaptive", epochs=2))


@pytest.fixture(scope="module")
def robustness_run(defended: tuple[RunStore, Run, Run, Run]) -> Run:
    """One robustness run over the defended model (its original is added automatically)."""
    store, _features, _model, defense = defended
    return run_robustness(store, [defense], config())


def _curve(run: Run) -> pd.DataFrame:
    return pd.read_parquet(run.file(CURVES_FILE))


def test_zero_budget_gives_exactly_the_clean_metrics(
    defended: tuple[RunStore, Run, Run, Run], robustness_run: Run
) -> None:
    """At ε = 0 robust accuracy equals clean accuracy, AUROC and confusion matrix equal the model run's test ones."""
    curves = _curve(robustness_run).set_index(["model", "eps", "metric"])["value"]
    confusion = pd.read_parquet(robustness_run.file(CONFUSION_FILE))
    for run in defended[2:]:
        at_zero = curves.loc[(str(run.id), 0.0)]
        assert at_zero["robust_accuracy"] == at_zero["clean_accuracy"]
        assert at_zero["robust_recall"] == at_zero["clean_recall"]
        assert at_zero["success_rate"] == 0.0
        assert at_zero["mean_linf"] == 0.0
        assert at_zero["robust_auroc"] == run.manifest.summary.test["auroc"].value
        cells = confusion[(confusion["model"] == str(run.id)) & (confusion["eps"] == 0.0)]
        matrix = [
            [int(cells[(cells.true_label == t) & (cells.predicted_label == p)]["count"].iloc[0]) for p in (0, 1)]
            for t in (0, 1)
        ]
        assert tuple(map(tuple, matrix)) == run.manifest.summary.confusion_matrix


def test_run_compares_original_and_defense(defended: tuple[RunStore, Run, Run, Run], robustness_run: Run) -> None:
    """The run's parents are the original, the defended model and the tune-attack run its L1 attack used;
    tables cover every model, ε and metric."""
    _store, _features, model_run, defense = defended
    assert robustness_run.kind == "robustness"
    tuned = robustness_run.manifest.summary.l1.tuned
    assert tuned is not None
    assert tuned.kind == "tune-attack"
    assert robustness_run.manifest.parents == (model_run.id, defense.id, tuned)
    curves = _curve(robustness_run)
    assert set(curves["model"]) == {str(model_run.id), str(defense.id)}
    assert sorted(set(curves["eps"])) == [0.0, 0.05, 0.2]
    assert set(curves["defense"]) == {"baseline", "adaptive"}
    by = curves.set_index(["model", "eps", "metric"])["value"]
    for run in (model_run, defense):
        assert by[(str(run.id), 0.2, "robust_accuracy")] <= by[(str(run.id), 0.0, "robust_accuracy")]
        assert by[(str(run.id), 0.2, "mean_linf")] <= 0.2 + 1e-6
    l1 = pd.read_parquet(robustness_run.file(L1_FILE))
    assert set(l1["metric"]) == {"attacked", "success_rate", "median_l0_sparse", "mean_l0", "mean_l1"}
    summary = robustness_run.manifest.summary
    assert set(summary.l1.by_model) == {str(model_run.id), str(defense.id)}
    attacked = l1[l1["metric"] == "attacked"].set_index("model")["value"]
    assert {m: float(n) for m, n in summary.pool.items()} == attacked.to_dict()  # PGD's pool is the L1 attack's
    assert set(summary.decisions) == {str(model_run.id), str(defense.id)}
    assert summary.cells == "record"
    assert summary.pgd.batch_size == 1024
    assert summary.l1.batch_size == {str(model_run.id): min(256, summary.n), str(defense.id): min(256, summary.n)}


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(t=st.floats(0.05, 0.95), seed=st.integers(0, 2**16), threat=st.sampled_from(("observed", "record")))
def test_pgd_and_l1_attack_the_same_pool(
    defended: tuple[RunStore, Run, Run, Run], t: float, seed: int, threat: str
) -> None:
    """For any decision threshold and either threat, the pool both attacks target (correct at the rule, with
    something the threat may change) is exactly the set of samples the L1 attack attacks."""
    _store, features_run, model_run, _defense = defended
    features = load_features(features_run)
    rows = features.indices("test")
    x, y = torch.from_numpy(features.values[rows]), torch.from_numpy(features.labels[rows])
    entry = attrs.evolve(EvaluatedModel.from_run(model_run, device="cpu"), decision=DecisionRule("threshold", t))
    rng = np.random.default_rng(seed)
    if threat == "observed":  # some samples get no cell at all
        sparse = attrs.evolve(features, observed=rng.random(features.values.shape) < 0.002, record=None)
    else:
        record = features.record_values().copy()
        record[rng.random(record.shape) < 0.995] = np.nan
        sparse = attrs.evolve(features, observed=None, record=record)
    config = load_config(None, {"attack.cells": threat, "attack.batch_size": 16})
    surface = attack_surface(config.attack, sparse, load_feature_spec())
    editable = surface.editable(rows)
    assert editable is not None
    pool = attack_pool(entry, x, y, editable, eval_batch_size=64)
    result, batch_size = l1_attack(
        entry, surface, rows, L1Settings(max_iterations=1, search_steps=1), config, torch.device("cpu")
    )
    assert batch_size == 16
    assert np.array_equal(result.attacked, pool)
    assert np.array_equal(
        pool, (entry.decision.predict_probability(_p_death(entry, x)) == y.numpy()) & editable.any((1, 2))
    )


def _p_death(entry: EvaluatedModel, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(entry.model(x).double(), dim=1)[:, 1].numpy()


@pytest.fixture(scope="module")
def defenses(defended: tuple[RunStore, Run, Run, Run]) -> dict[str, Run]:
    """Every defense method of the same baseline: static, adaptive, l1 (its tuned attack) and TRADES."""
    store, _features, model_run, adaptive = defended
    return {
        "static": run_defense(store, model_run, defend_config(method="static", epochs=1)),
        "adaptive": adaptive,
        "l1": run_defense(store, model_run, defend_config(method="l1", epochs=1, l1_iterations=3)),
        "trades": run_defense(store, model_run, defend_config(loss="trades", epochs=1)),
    }


@pytest.mark.parametrize("method", ["static", "adaptive", "l1", "trades"])
def test_each_defense_is_judged_by_fresh_attacks_on_its_final_weights(
    defended: tuple[RunStore, Run, Run, Run], defenses: dict[str, Run], method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever examples a defense trained on, the robustness stage attacks anew: every ε > 0 and the obfuscation
    check run a new PGD, and the L1 attack a new sparse attack, against exactly the stored final weights of the
    defended model and of its original."""
    store, _features, model_run, _adaptive = defended
    defense = defenses[method]
    pgd_seen: list[str] = []
    l1_seen: list[str] = []
    pgd, l1 = PgdAttack.perturb, L1Attack.run

    def pgd_spy(self: PgdAttack, x: torch.Tensor, y: torch.Tensor, cells: Any = None) -> torch.Tensor:
        pgd_seen.append(weights_hash(self.model))
        return pgd(self, x, y, cells)

    def l1_spy(self: L1Attack, x: Any, y: Any, **options: Any) -> Any:
        l1_seen.append(weights_hash(self.model))
        return l1(self, x, y, **options)

    monkeypatch.setattr(PgdAttack, "perturb", pgd_spy)
    monkeypatch.setattr(L1Attack, "run", l1_spy)
    run = run_robustness(store, [defense], config(eps=(0.0, 0.05, 0.2), l1_max_iterations=2))
    final = [weights_hash(load_trained_model(r)) for r in (model_run, defense)]
    assert final[0] != final[1]
    assert sorted(pgd_seen) == sorted(h for h in final for _ in range(3))  # two ε > 0 and the obfuscation check
    assert sorted(l1_seen) == sorted(final)
    models = {str(m.model): m.defense for m in run.summary_as(RobustnessSummary).models}
    assert models == {str(model_run.id): "baseline", str(defense.id): method}


class _Rounding(nn.Module):
    """A model that rounds its input to quarters first: its input gradient is 0 almost everywhere (masked)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(torch.round(x * 4) / 4)
        return out


def _test_split(features_run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    features = load_features(features_run)
    rows = features.indices("test")
    return torch.from_numpy(features.values[rows]), torch.from_numpy(features.labels[rows])


@pytest.mark.parametrize("random_start", [True, False])
def test_obfuscation_check_fires_on_masked_gradients_and_stays_quiet_on_a_normal_model(
    defended: tuple[RunStore, Run, Run, Run], random_start: bool
) -> None:
    """Unbounded PGD with many steps drives a normal model's robust accuracy to 0 (the check passes); behind an
    input-rounding wrapper its gradients are masked, PGD stalls and the check fails."""
    _store, features_run, model_run, _defense = defended
    x, y = _test_split(features_run)
    normal = EvaluatedModel.from_run(model_run, device="cpu")
    masked = attrs.evolve(normal, model=_Rounding(normal.model))
    settings = PgdSettings(eps=0.05, iterations=10, random_start=random_start)
    options = {"iterations": 100, "tolerance": 0.02, "batch_size": 64, "eval_batch_size": 64}
    quiet = obfuscation_check(normal, x, y, settings, **options)
    fired = obfuscation_check(masked, x, y, settings, **options)
    assert (quiet.reliable, quiet.robust_accuracy, quiet.eps) == (True, 0.0, 1.0)
    assert not fired.reliable
    assert fired.robust_accuracy > 0.02


def test_robustness_stage_says_which_model_may_be_unreliable(
    defended: tuple[RunStore, Run, Run, Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage runs the check on every model; a model with masked gradients is named in the summary, the results
    API and `runs show`, the others pass."""
    store, _features, model_run, defense = defended
    loaded = EvaluatedModel.from_run

    def masking(cls: type[EvaluatedModel], run: Run, *, device: Any) -> EvaluatedModel:
        entry = loaded(run, device=device)
        return attrs.evolve(entry, model=_Rounding(entry.model)) if run.id == defense.id else entry

    monkeypatch.setattr(EvaluatedModel, "from_run", classmethod(masking))
    run = run_robustness(store, [defense], config(l1_max_iterations=0))
    summary = run.summary_as(RobustnessSummary)
    assert set(summary.obfuscation) == {str(model_run.id), str(defense.id)}
    assert summary.unreliable() == (str(defense.id),)
    verdicts = api.robustness_obfuscation(run).set_index("label")["verdict"].to_dict()
    assert verdicts == {f"baseline ({model_run.id.token})": "ok", f"adaptive ({defense.id.token})": "may be unreliable"}
    shown = CliRunner().invoke(app, ["--home", str(store.root.parent), "runs", "show", str(run.id)])
    assert "the evaluation may be unreliable" in " ".join(shown.output.split())  # rich wraps lines
    skipped = run_robustness(store, [model_run], config(l1_max_iterations=0, obfuscation_iterations=0))
    assert skipped.summary_as(RobustnessSummary).obfuscation == {}


def test_clinical_eps_is_eps_times_the_features_runs_scale(
    defended: tuple[RunStore, Run, Run, Run], robustness_run: Run
) -> None:
    """Beside each ε > 0 of the sweep the report's table gives ε · (p95 − p5) per feature, from the features run's
    stored statistics, in the unit of its feature definitions."""
    _store, features_run, _model, _defense = defended
    table = api.robustness_clinical_eps(robustness_run)
    scaling = load_features(features_run).scaling
    assert table["feature"].tolist() == list(scaling.feature_names)
    assert list(table.columns) == ["feature", "unit", "span", "ε = 0.05", "ε = 0.2"]
    np.testing.assert_allclose(table["span"], scaling.p95 - scaling.p5)
    for eps in (0.05, 0.2):
        np.testing.assert_allclose(table[f"ε = {eps:g}"], eps * (scaling.p95 - scaling.p5))
        np.testing.assert_allclose(table[f"ε = {eps:g}"], scaling.to_clinical(np.full(19, eps)))
    units = {f.name: f.unit for f in feature_definitions(features_run).to_spec().features}
    assert table["unit"].tolist() == [units[name] for name in scaling.feature_names]
    assert table.set_index("feature").loc["sysbp", "unit"] == "mmHg"


def _runs(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir() if not path.name.startswith("."))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"eps": (0.0, -0.01)}, "robustness.eps values must be finite numbers ≥ 0, got -0.01"),
        ({"attack": "pgd-l1"}, "robustness.attack must be one of pgd-linf, pgd-l2; got 'pgd-l1'"),
        ({"eps": ()}, "robustness.eps is empty; give at least one budget, e.g. --eps 0,0.01,0.02"),
    ],
)
def test_bad_settings_write_nothing(
    defended: tuple[RunStore, Run, Run, Run], settings: dict[str, Any], message: str
) -> None:
    """A negative ε, an unknown attack norm or an empty sweep is a ConfigError and no run is written."""
    store, _features, model_run, _defense = defended
    before = _runs(store.root)
    with pytest.raises(ConfigError) as info:
        run_robustness(store, [model_run], config(**settings))
    assert str(info.value) == message
    assert _runs(store.root) == before


def test_l1_attack_without_a_tuned_attack_names_the_fix(tmp_path: Path) -> None:
    """The L1 row never falls back to untuned defaults: without a tune-attack run the stage stops, naming
    tune-attack, --tuned and --l1-iterations 0, and writes nothing; with --l1-iterations 0 it runs."""
    store, _features, model_run = trained_store(tmp_path / "runs")
    before = _runs(store.root)
    with pytest.raises(DataError) as info:
        run_robustness(store, [model_run], config())
    assert str(info.value) == (
        f"no tune-attack run was tuned against model run {model_run.id}; run `lstm-adv tune-attack --model "
        f"{model_run.id}` first, give one with --tuned, or skip the L1 attack with --l1-iterations 0"
    )
    assert _runs(store.root) == before
    assert run_robustness(store, [model_run], config(l1_max_iterations=0)).manifest.summary.l1.by_model == {}


def test_wrong_run_kind_writes_nothing(defended: tuple[RunStore, Run, Run, Run]) -> None:
    """A features run in place of a model run is a RunKindError and no run is written."""
    store, features_run, _model, _defense = defended
    before = _runs(store.root)
    with pytest.raises(RunKindError) as info:
        run_robustness(store, [features_run], config())
    assert str(info.value) == f"run {features_run.id} is a features run; give a model run (lstm-adv train)"
    assert _runs(store.root) == before


def test_results_api_gives_curves_and_confusion(defended: tuple[RunStore, Run, Run, Run], robustness_run: Run) -> None:
    """The results API returns the curves, confusion matrices and L1 table as aggregates, labelled per model."""
    store, *_ = defended
    run = api.load_run(str(robustness_run.id), store.root.parent, kinds=("robustness",))
    curves = api.robustness_curves(run)
    assert {"label", "eps", "metric", "value"} <= set(curves.columns)
    assert len(api.robustness_confusion(run)) == 2 * 3 * 4
    assert set(api.robustness_l1(run)["label"]) == set(curves["label"])


def with_robust_accuracy(store: RunStore, run: Run, defended: float, original: float) -> Run:
    """A copy of ``run`` whose defended model's robust accuracy at every ε > 0 is ``defended`` and its
    original's is ``original``."""
    curves = _curve(run)
    baseline = {str(m.model) for m in run.manifest.summary.models if m.defense == "baseline"}
    at = (curves["metric"] == "robust_accuracy") & (curves["eps"] > 0)
    curves.loc[at, "value"] = np.where(curves.loc[at, "model"].isin(baseline), original, defended)
    with store.create("robustness", parents=list(run.manifest.parents), config=run.manifest.config) as writer:
        for name in (CONFUSION_FILE, L1_FILE):
            writer.file(name).write_bytes(run.file(name).read_bytes())
        curves.to_parquet(writer.file(CURVES_FILE))
        writer.summary = run.manifest.summary
    assert writer.committed is not None
    return writer.committed


def test_defense_made_worse_lists_each_eps_where_the_defense_lost(
    defended: tuple[RunStore, Run, Run, Run], robustness_run: Run
) -> None:
    """A defended model below its original at every ε > 0 is listed at each of them; one at or above is not."""
    store, _features, model, defense = defended
    worse = api.defense_made_worse(with_robust_accuracy(store, robustness_run, defended=0.4, original=0.7))
    assert worse["eps"].tolist() == [0.05, 0.2]
    assert worse["defended"].tolist() == [f"adaptive ({defense.id.token})"] * 2
    assert worse["original"].tolist() == [f"baseline ({model.id.token})"] * 2
    assert worse[["defended_value", "original_value"]].to_numpy().tolist() == [[0.4, 0.7]] * 2
    assert api.defense_made_worse(with_robust_accuracy(store, robustness_run, defended=0.7, original=0.7)).empty


def test_cli_robustness_prints_the_run_and_shows_it(defended: tuple[RunStore, Run, Run, Run]) -> None:
    """`lstm-adv robustness` prints the table and the run id; `runs show` renders the same table."""
    store, _features, model_run, _defense = defended
    home = store.root.parent
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "--home",
            str(home),
            "robustness",
            "--model",
            str(model_run.id),
            "--eps",
            "0,0.1",
            "--device",
            "cpu",
            "--l1-iterations",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    run_id = result.output.strip().splitlines()[-1].removeprefix("robustness run ")
    assert store.get(run_id).kind == "robustness"
    shown = runner.invoke(app, ["--home", str(home), "runs", "show", run_id])
    assert "sparse L1 attack" in shown.output
    assert "baseline" in shown.output
    bad = runner.invoke(app, ["--home", str(home), "robustness", "--eps", "0,x"])
    assert bad.exit_code == 1
    assert "--eps must be a comma-separated list of numbers" in bad.output


def test_the_one_line_description_names_each_defense_with_its_intervals(robustness_run: Run) -> None:
    """The demo's robustness line: per model its defense, robust accuracy and robust recall of deaths, each with
    its 95 % interval, at the sweep's largest ε."""
    from lstm_adv.results.describe import describe_run

    summary = robustness_run.summary_as(RobustnessSummary)
    line = describe_run(robustness_run)
    for row in summary.table:
        if row.eps != max(summary.eps):
            continue
        defense = next(m.defense for m in summary.models if m.model == row.model)
        assert f"{defense} {str(row.model)[-4:]}: robust accuracy {row.text('robust_accuracy')}" in line
        assert "[" in row.text("robust_accuracy")
        assert f"robust recall of deaths {row.text('robust_recall')}" in line


def test_runs_show_of_a_robustness_run_fits_80_columns_with_every_figure_whole(
    defended: tuple[RunStore, Run, Run, Run], robustness_run: Run
) -> None:
    """At 80 columns the sweep names models by number and puts each interval under its value: no figure is cut."""
    home = defended[0].root.parent
    shown = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["--home", str(home), "runs", "show", str(robustness_run.id)])
    assert shown.exit_code == 0, shown.output
    assert max(len(line) for line in shown.output.splitlines()) <= 80
    assert "…" not in shown.output
    summary = robustness_run.summary_as(RobustnessSummary)
    for number, model in enumerate(summary.models, start=1):
        assert f"{number} {model.defense}" in shown.output
    for row in summary.table:
        assert row.robust_accuracy is not None
        assert f"{row.robust_accuracy:.3f}" in shown.output
        low, high = row.intervals["robust_accuracy"]
        assert f"{low:.2f}–{high:.2f}" in shown.output


@pytest.mark.slow
def test_robustness_report_renders_self_contained_without_ids(tmp_path: Path) -> None:
    """robustness.qmd renders offline to HTML (figures embedded, nothing fetched) and a PDF, with no sample id,
    and shows the sweep's ε in clinical units and the gradient-obfuscation check."""
    from lstm_adv.reports import render_report, report_files
    from tests.report_checks import embedded_images, external_references, layout_problems, pdf_pages, raw_column_names
    from tests.strategies import tiny_feature_matrix
    from tests.test_reports import leaked, visible_text

    base = tiny_feature_matrix(60)
    ids = np.arange(700_001, 700_061, dtype=np.int64)  # distinctive, so a leak cannot hide among small numbers
    features = attrs.evolve(base, subject_ids=ids, hadm_ids=ids + 100_000, icustay_ids=ids + 200_000)
    store = RunStore(tmp_path / "runs")
    with store.create("features") as writer:
        features.to_npz(writer.file("features.npz"))
    assert writer.committed is not None
    model = run_training(store, writer.committed, PARAMS, attrs.evolve(load_config(), model=FAST))
    tune_attack(store, model)
    defense = run_defense(store, model, defend_config(method="static", epochs=1))
    robustness = run_robustness(store, [defense], config())
    report = render_report(robustness, store=store, home=tmp_path, engine="offline")
    html = report_files(report)[0].read_text(encoding="utf-8")
    assert external_references(html) == []
    assert embedded_images(html) >= 2  # the metric-vs-ε curves and the confusion matrices
    assert pdf_pages(report) >= 1
    needles = {str(i) for i in np.concatenate([features.subject_ids, features.hadm_ids, features.icustay_ids])}
    text = visible_text(html)
    assert leaked(text, needles) == []
    assert raw_column_names(html) == []
    assert layout_problems(report, "robustness") == []
    assert f"threshold, t = {model.manifest.summary.threshold:.3f}" in html
    assert "ε (normalized units, 0–1 = p5–p95 of the training split)" in html
    worse = api.defense_made_worse(robustness)
    assert ("less robust than its original" in html) == (not worse.empty)
    for section in ("ε in clinical units", "ε · (p95 − p5)", "Gradient-obfuscation check", "unbounded budget"):
        assert section in text, section


def test_cli_robustness_refuses_a_model_whose_weights_changed(tmp_path: Path) -> None:
    """A model.pt that no longer matches its manifest is named in one line; no robustness run is written."""
    store, _features, model_run = trained_store(tmp_path / "runs")
    weights = model_run.path / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = CliRunner().invoke(
        app, ["--home", str(tmp_path), "robustness", "--model", str(model_run.id), "--l1-iterations", "0"]
    )
    assert result.exit_code == 1
    assert result.output == (
        f"error: run {model_run.id}: model.pt no longer matches the checksum in its manifest (it changed after the "
        "run was written); restore the file or re-run the stage that wrote it\n"
    )
    assert store.list("robustness") == []
