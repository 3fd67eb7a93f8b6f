"""A whole fixture pipeline for the report tests, without a database and with a tiny model.

query (written per the query-run contract) → features (the real preprocess) → model (the real
training, 2 epochs of an 8-unit BiLSTM) → tune-attack (manifest only) → attack (an AttackBatchResult
built by hand) → analysis (the real analysis stage); and tuning runs with real Optuna journals whose
trials are made by hand (:func:`make_tuning_runs`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import optuna
import torch

from lstm_adv import studies
from lstm_adv.analysis import run_analysis
from lstm_adv.config import Config, ModelConfig
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.models import Hyperparameters
from lstm_adv.preprocess import run_preprocess
from lstm_adv.results.config_file import config_as_dict, load_config
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import FeaturesSummary
from lstm_adv.targets import AttackTarget
from lstm_adv.train import run_training
from lstm_adv.tune_attack import PARETO_METRICS, tuning_summary
from lstm_adv.tune_model import study_summary
from tests.strategies import analysis_attack_result
from tests.summaries import attack_summary, tune_attack_summary
from tests.test_reports import make_query_run

PARAMS = Hyperparameters(
    hidden_size=8,
    num_layers=1,
    lstm_activation="tanh",
    dropout=0.0,
    fc_size=8,
    fc_activation="relu",
    optimizer="adam",
    learning_rate=0.02,
    batch_size=16,
)
FAST = ModelConfig(max_epochs=2, patience=2, device="cpu", bootstrap_samples=50)


@attrs.frozen
class Pipeline:
    """Every run of the fixture pipeline, by kind."""

    home: Path
    store: RunStore
    query: Run
    features: Run
    model: Run
    attack: Run | None = None
    analysis: Run | None = None


def make_model_pipeline(home: Path) -> Pipeline:
    """query → features → model (real training, tiny settings)."""
    store = RunStore(home / "runs")
    query = make_query_run(store)
    config = load_config()
    features = run_preprocess(store, str(query.id), config)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = run_training(store, features, PARAMS, attrs.evolve(config, model=FAST))
    finally:
        torch.set_num_threads(previous)
    return Pipeline(home=home, store=store, query=query, features=features, model=model)


def make_full_pipeline(home: Path) -> Pipeline:
    """The model pipeline, then tune-attack → attack → analysis."""
    base = make_model_pipeline(home)
    store = base.store
    with store.create("tune-attack", parents=[base.model.id]) as writer:
        writer.summary = tune_attack_summary(model_run=base.model.id, features_run=base.features.id)
    assert writer.committed is not None
    n = base.features.summary_as(FeaturesSummary).shape[0]
    result = analysis_attack_result(11, n)
    with store.create("attack", parents=[writer.committed.id]) as attack_writer:
        result.to_npz(attack_writer.file("results.npz"))
        params = {"method": "fista", "kappa": 0.0, "lam": 0.01, "step_size": 0.05, "max_iterations": result.iterations}
        attack_writer.file("params.json").write_text(json.dumps(params), encoding="utf-8")
        attack_writer.summary = attack_summary(
            result, features_run=base.features.id, model_run=base.model.id, tuned=writer.committed.id, split="all"
        )
    attack = attack_writer.committed
    assert attack is not None
    analysis = run_analysis(store, str(attack.id), load_config(overrides={"analysis.figure_dpi": 60}))
    return attrs.evolve(base, attack=attack, analysis=analysis)


def without_curves(pipeline: Pipeline) -> Run:
    """A copy of the model run without ``curves.parquet``, as a run of an older toolkit would be."""
    model = pipeline.model
    with pipeline.store.create("model", parents=list(model.manifest.parents), config=model.manifest.config) as writer:
        for path in model.path.iterdir():
            if path.name not in ("manifest.json", "curves.parquet"):
                target = writer.path / path.name
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)
        writer.summary = model.manifest.summary
    assert writer.committed is not None
    return writer.committed


def make_tuning_runs(base: Pipeline, *, trials: int = 12) -> tuple[Run, Run]:
    """A tune-model run (one objective, some pruned trials) and a two-objective (Pareto) tune-attack run.

    Each holds a real Optuna journal whose trials are added by hand from a seeded generator (no training,
    no attack); the summaries are made by the tuning stages' own summary functions.
    """
    config = load_config()
    rng = np.random.default_rng(7)
    with base.store.create("tune-model", parents=[base.features.id], config=config_as_dict(config)) as writer:
        place = studies.study_place(writer.path, str(writer.id), None, None, study_name=None)
        study = studies.open_study(place, timeout_s=5, seed=0)
        for number in range(trials):
            study.add_trial(_model_trial(rng, config, pruned=number % 4 == 3))
        writer.summary = study_summary(study, place, base.features)
    with base.store.create("tune-attack", parents=[base.model.id], config=config_as_dict(config)) as attack_writer:
        place = studies.study_place(attack_writer.path, str(attack_writer.id), None, None, study_name=None)
        study = studies.open_study(
            place, timeout_s=5, seed=0, directions=("maximize", "minimize"), metric_names=PARETO_METRICS
        )
        for _ in range(trials):
            study.add_trial(_attack_trial(rng, config))
        target = AttackTarget(base.model, None, base.features)
        attack_writer.summary = tuning_summary(study, place, target, config, 16, DecisionRule.argmax())
    assert writer.committed is not None
    assert attack_writer.committed is not None
    return writer.committed, attack_writer.committed


def _model_trial(rng: np.random.Generator, config: Config, *, pruned: bool) -> optuna.trial.FrozenTrial:
    """A tune-model trial over the shipped search space; validation AUROC rises with the learning rate."""
    tune = config.tune_model
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        "hidden_size_log2": optuna.distributions.IntDistribution(*tune.hidden_size_log2),
        "lstm_activation": optuna.distributions.CategoricalDistribution(list(tune.lstm_activations)),
        "dropout": optuna.distributions.FloatDistribution(*tune.dropout),
        "fc_size_log2": optuna.distributions.IntDistribution(*tune.fc_size_log2),
        "fc_activation": optuna.distributions.CategoricalDistribution(list(tune.fc_activations)),
        "optimizer": optuna.distributions.CategoricalDistribution(list(tune.optimizers)),
        "learning_rate": optuna.distributions.FloatDistribution(*tune.learning_rate, log=True),
        "batch_size_log2": optuna.distributions.IntDistribution(*tune.batch_size_log2),
    }
    params: dict[str, Any] = {
        "hidden_size_log2": int(rng.integers(tune.hidden_size_log2[0], tune.hidden_size_log2[1] + 1)),
        "lstm_activation": str(rng.choice(tune.lstm_activations)),
        "dropout": float(rng.uniform(*tune.dropout)),
        "fc_size_log2": int(rng.integers(tune.fc_size_log2[0], tune.fc_size_log2[1] + 1)),
        "fc_activation": str(rng.choice(tune.fc_activations)),
        "optimizer": str(rng.choice(tune.optimizers)),
        "learning_rate": float(10 ** rng.uniform(np.log10(tune.learning_rate[0]), np.log10(tune.learning_rate[1]))),
        "batch_size_log2": int(rng.integers(tune.batch_size_log2[0], tune.batch_size_log2[1] + 1)),
    }
    hyper = Hyperparameters(
        hidden_size=2 ** params["hidden_size_log2"],
        num_layers=1,
        lstm_activation=params["lstm_activation"],
        dropout=params["dropout"],
        fc_size=2 ** params["fc_size_log2"],
        fc_activation=params["fc_activation"],
        optimizer=params["optimizer"],
        learning_rate=params["learning_rate"],
        batch_size=2 ** params["batch_size_log2"],
    )
    auroc = float(np.clip(0.9 + 0.04 * np.log10(params["learning_rate"]) + rng.normal(0, 0.01), 0.5, 1.0))
    return optuna.trial.create_trial(
        params=params,
        distributions=distributions,
        value=None if pruned else auroc,
        state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
        user_attrs={"params": hyper.to_dict(), "best_epoch": 2, "epochs_run": 3, "worker": "host:1"},
        intermediate_values={1: auroc - 0.05, 2: auroc},
    )


def _attack_trial(rng: np.random.Generator, config: Config) -> optuna.trial.FrozenTrial:
    """A two-objective tune-attack trial: a larger λ succeeds less often with sparser examples."""
    tune = config.tune_attack
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        "kappa": optuna.distributions.FloatDistribution(*tune.kappa),
        "lam": optuna.distributions.FloatDistribution(*tune.lam, log=True),
        "step_size": optuna.distributions.FloatDistribution(*tune.step_size, log=True),
        "method": optuna.distributions.CategoricalDistribution(list(tune.methods)),
    }
    log_lam = rng.uniform(np.log10(tune.lam[0]), np.log10(tune.lam[1]))
    params: dict[str, Any] = {
        "kappa": float(rng.uniform(*tune.kappa)),
        "lam": float(10**log_lam),
        "step_size": float(10 ** rng.uniform(np.log10(tune.step_size[0]), np.log10(tune.step_size[1]))),
        "method": str(rng.choice(tune.methods)),
    }
    success = float(np.clip(0.55 - 0.15 * log_lam + rng.normal(0, 0.05), 0.0, 1.0))
    median_l0 = float(round(4 + 30 * success + rng.normal(0, 2)))
    return optuna.trial.create_trial(
        params=params,
        distributions=distributions,
        values=[success, median_l0],
        user_attrs={"settings": params, "successes": round(16 * success)}
        | {"success_rate": success, "median_l0": median_l0},
    )
