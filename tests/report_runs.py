"""A whole fixture pipeline for the report tests, without a database and with a tiny model.

query (written per the query-run contract) → features (the real preprocess) → model (the real
training, 2 epochs of an 8-unit BiLSTM) → tune-attack (manifest only) → attack (an AttackBatchResult
built by hand) → analysis (the real analysis stage).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import attrs
import torch

from lstm_adv.analysis import run_analysis
from lstm_adv.config import ModelConfig
from lstm_adv.models import Hyperparameters
from lstm_adv.preprocess import run_preprocess
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import FeaturesSummary
from lstm_adv.train import run_training
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
