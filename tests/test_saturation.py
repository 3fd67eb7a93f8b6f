"""The saturation guard: train says so and marks the run, tune-model prunes, tune-attack refuses at once."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lstm_adv import metrics
from lstm_adv.cli import app
from lstm_adv.domain.errors import DataError
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import RunStore
from lstm_adv.train import run_training
from lstm_adv.tune_attack import run_attack_tuning
from lstm_adv.tune_model import run_model_tuning
from tests.strategies import tiny_feature_matrix
from tests.test_train import FAST, PARAMS, features_run
from tests.test_tune_model import TINY

# A learning rate of 3 with ReLU and RMSprop drives the tiny model's outputs to P(death) = 1 for everyone.
SATURATING = attrs.evolve(PARAMS, learning_rate=3.0, lstm_activation="relu", fc_activation="relu", optimizer="rmsprop")


@pytest.mark.parametrize(
    ("p", "threshold", "reason"),
    [
        (np.linspace(0.05, 0.9, 50), 0.4, None),
        (np.linspace(0.05, 0.9, 50), 5e-4, "its decision threshold t = 0.0005 lies within 0.001 of 0 or 1"),
        (np.r_[np.full(97, 1e-5), np.linspace(0.2, 0.8, 3)], 0.5, "97% of its validation probabilities lie within"),
        (np.full(40, 0.73), 0.73, "its validation probabilities collapse to one value (0.73–0.73"),
        (np.r_[np.full(90, 1e-5), np.linspace(0.2, 0.8, 10)], 0.5, None),  # 10 % away from the edges: usable
    ],
)
def test_saturation_names_the_reason(p: np.ndarray, threshold: float, reason: str | None) -> None:
    """Edge thresholds, probabilities piled at 0 or 1, and collapsed outputs are named; a spread is not."""
    found = metrics.saturation(p, threshold)
    if reason is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(reason)


def test_saturated_model_is_marked_and_attack_tuning_refuses_it(tmp_path: Path) -> None:
    """A model trained with a huge learning rate is marked saturated (and `train` says so in one line);
    tune-attack on it stops at once with the reason and writes nothing; a healthy model is not marked."""
    torch.manual_seed(0)
    store = RunStore(tmp_path / "runs")
    parent = features_run(store, tiny_feature_matrix(60))
    config = attrs.evolve(load_config(), model=FAST)
    saturated = run_training(store, parent, SATURATING, config)
    reason = saturated.manifest.summary.saturated
    assert reason is not None
    healthy = run_training(store, parent, PARAMS, config)
    assert healthy.manifest.summary.saturated is None
    before = sorted(p.name for p in store.root.iterdir())
    with pytest.raises(DataError) as info:
        run_attack_tuning(store, saturated, load_config(overrides={"attack.device": "cpu"}), trials=1)
    assert str(info.value) == (
        f"model run {saturated.id} is saturated ({reason}), so an attack cannot flip it; train a model with a "
        "bounded activation (tanh) or a lower learning rate"
    )
    assert sorted(p.name for p in store.root.iterdir()) == before
    shown = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["--home", str(tmp_path), "runs", "show", str(saturated.id)])
    assert shown.exit_code == 0, shown.output
    assert f"warning: this model is saturated: {reason}" in " ".join(shown.output.split())


def test_tune_model_prunes_saturated_trials(tmp_path: Path) -> None:
    """Trials whose model saturates are pruned (never the best trial), with the reason kept on the trial."""
    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))
    overrides = {
        **TINY,
        "tune_model.learning_rate": [3.0, 3.0],
        "tune_model.lstm_activations": ["relu"],
        "tune_model.fc_activations": ["relu"],
        "tune_model.optimizers": ["rmsprop"],
        "tune_model.pruner_startup_trials": 10,
    }
    run = run_model_tuning(store, parent, load_config(overrides=overrides), trials=2)
    summary = run.manifest.summary
    assert summary.states == {"pruned": 2}
    assert summary.best is None
