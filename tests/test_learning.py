"""Has the model learned? The validation check at train time, the recalibration, and the warnings and notes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from typer.testing import CliRunner

from lstm_adv import metrics
from lstm_adv.cli import app
from lstm_adv.results import api
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import RunStore
from lstm_adv.train import run_training
from tests.strategies import tiny_feature_matrix
from tests.test_train import FAST, PARAMS, features_run


def _evaluation(y: np.ndarray, p: np.ndarray) -> metrics.Evaluation:
    return metrics.evaluate_predictions(
        y, p, threshold=0.5, bootstrap_samples=200, confidence=0.95, calibration_bins=5, seed=0
    )


def test_a_chance_model_is_weak_and_a_learned_one_is_not() -> None:
    """Random scores: the AUROC interval holds 0.5, so the model is weak; scores that rank the classes apart
    and spread: not weak."""
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(np.int64)
    chance = rng.random(200)
    check = metrics.learning_check(_evaluation(y, chance), chance)
    assert check.weak is not None
    assert "does not exclude chance (0.5)" in check.weak
    learned = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.1, 200), 0, 1)
    assert metrics.learning_check(_evaluation(y, learned), learned).weak is None


def test_predictions_that_barely_spread_are_weak_even_when_they_rank_well() -> None:
    """The demo's failure: every P(death) within ±0.01 of t, ranked perfectly by chance of a tiny split."""
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1] * 10)
    p = 0.45 + 0.01 * y + np.linspace(0, 0.001, y.size)
    check = metrics.learning_check(_evaluation(y, p), p)
    assert check.weak is not None
    assert "barely spreads (interquartile range" in check.weak


def test_platt_scaling_undoes_a_shifted_prior() -> None:
    """Probabilities trained towards a balanced prior (log-odds shifted by +2) overstate risk; Platt's
    recalibration fitted on them brings the mean to the prevalence and lowers the Brier score."""
    rng = np.random.default_rng(1)
    risk = rng.normal(-2.5, 1.0, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-risk))).astype(np.int64)
    shifted = 1 / (1 + np.exp(-(risk + 2.0)))
    a, b = metrics.platt_scaling(y, shifted)
    fixed = metrics.recalibrate(shifted, a, b)
    assert abs(fixed.mean() - y.mean()) < 0.01 < abs(shifted.mean() - y.mean())
    assert metrics.brier(y, fixed) < metrics.brier(y, shifted)
    assert a == pytest.approx(1.0, abs=0.15)
    assert b == pytest.approx(-2.0, abs=0.3)


def test_a_model_trained_on_noise_is_marked_weak_warned_about_and_noted_in_its_report(tmp_path: Path) -> None:
    """A model of labels without signal is marked weak in its summary with the reason; `runs show` prints one
    warning line; the report API opens with the note."""
    store = RunStore(tmp_path / "runs")
    features = features_run(store, tiny_feature_matrix(80, signal=0.0, seed=3))
    config = attrs.evolve(load_config(), model=attrs.evolve(FAST, max_epochs=2))
    run = run_training(store, features, PARAMS, config)
    summary = run.manifest.summary
    assert summary.learned is not None
    assert summary.weak is not None
    shown = CliRunner().invoke(app, ["--home", str(tmp_path), "runs", "show", str(run.id)])
    assert shown.exit_code == 0, shown.output
    warnings = [line for line in shown.output.splitlines() if "warning: this model has not learned" in line]
    assert len(warnings) == 1
    note = api.weak_model_note(run)
    assert note is not None
    assert summary.weak in note


def test_the_defense_monitor_judges_each_epoch_at_the_rule_it_would_store(tmp_path: Path, monkeypatch: Any) -> None:
    """The monitor's last epoch uses the rule the defended model is stored with (made on clean validation), not
    the original model's."""
    from lstm_adv import defend
    from tests.test_defend import config as defend_config
    from tests.test_defend import trained_store

    _store, features_run_, model_run = trained_store(tmp_path)
    rules: list[Any] = []
    original = defend._Monitor.robust_accuracy

    def spy(self: Any, model: Any, rule: Any) -> float:
        rules.append(rule)
        return float(original(self, model, rule))

    monkeypatch.setattr(defend._Monitor, "robust_accuracy", spy)
    from lstm_adv.results.artifacts import load_decision, load_features, load_trained_model

    result = defend.defend_model(
        load_trained_model(model_run),
        load_features(features_run_),
        defend_config(method="adaptive", epochs=2, monitor_samples=8),
        decision=load_decision(model_run),
    )
    assert len(rules) == 2
    assert rules[-1] == result.trained.decision
