"""Training: it really trains, evaluation is honest, runs are complete, bad input writes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from lstm_adv import metrics, training_loop
from lstm_adv.cli import app
from lstm_adv.config import ModelConfig
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.feature_matrix import SPLITS
from lstm_adv.models import Hyperparameters
from lstm_adv.results.artifacts import load_trained_model
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import ModelSummary
from lstm_adv.train import SplitIndices, run_training, train_model
from tests.full_disk import assert_one_full_disk_line, full_disk
from tests.strategies import tiny_feature_matrix

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
FAST = ModelConfig(max_epochs=3, patience=3, device="cpu", bootstrap_samples=50)


def features_run(store: RunStore, features: Any) -> Run:
    """A features run holding ``features``."""
    with store.create("features") as writer:
        features.to_npz(writer.file("features.npz"))
    assert writer.committed is not None
    return writer.committed


@pytest.mark.slow
def test_tiny_model_overfits_separable_data() -> None:
    """On separable data the training loss falls and validation and test AUROC reach 1."""
    config = attrs.evolve(FAST, max_epochs=30, patience=30)
    trained = train_model(tiny_feature_matrix(60, signal=0.5), attrs.evolve(PARAMS, learning_rate=0.01), config)
    losses = [record.train_loss for record in trained.history]
    assert np.mean(losses[-3:]) < 0.25 * losses[0]
    assert max(record.val_auroc for record in trained.history) == 1.0
    assert trained.evaluation.auroc.value == 1.0


def test_evaluation_never_sees_resampled_or_training_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every metric is computed on the validation or test split as it is, while training batches are resampled."""
    features = tiny_feature_matrix(80, prevalence=0.2)
    seen: list[np.ndarray] = []
    drawn: list[np.ndarray] = []
    for name in ("auroc", "choose_threshold", "evaluate_predictions"):
        original = getattr(metrics, name)

        def spy(y: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            seen.append(np.asarray(y).copy())
            return _original(y, *args, **kwargs)

        monkeypatch.setattr(metrics, name, spy)
    original_order = training_loop.epoch_order

    def order_spy(labels: torch.Tensor, imbalance: str, generator: torch.Generator) -> torch.Tensor:
        order = original_order(labels, imbalance, generator)
        drawn.append(labels[order].numpy())
        return order

    monkeypatch.setattr(training_loop, "epoch_order", order_spy)
    train_model(features, PARAMS, attrs.evolve(FAST, imbalance="weighted_sampling"))
    natural = {split: features.labels[features.indices(split)] for split in ("validation", "test")}
    assert seen
    assert all(any(np.array_equal(y, ref) for ref in natural.values()) for y in seen)
    assert any(np.array_equal(y, natural["test"]) for y in seen)
    train_prevalence = features.labels[features.indices("train")].mean()
    assert abs(np.concatenate(drawn).mean() - 0.5) < abs(train_prevalence - 0.5)  # the sampler did rebalance


def test_class_weighted_loss_weights_the_minority() -> None:
    """The class-weighted loss weighs each class by n / (2 n_k); the other settings do not weigh."""
    labels = torch.tensor([0, 0, 0, 1])
    weighted = training_loop.loss_function(labels, "class_weighted_loss")
    assert torch.allclose(weighted.weight, torch.tensor([4 / 6, 2.0]))  # type: ignore[arg-type]
    assert training_loop.loss_function(labels, "weighted_sampling").weight is None


def test_loss_is_cross_entropy_on_logits() -> None:
    """The training loss is cross-entropy of the model's raw logits (no softmax before it)."""
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([0, 1])
    expected = -torch.log_softmax(logits, dim=1)[torch.arange(2), labels].mean()
    assert torch.allclose(training_loop.loss_function(labels, "none")(logits, labels), expected)


def test_training_is_deterministic_on_cpu() -> None:
    """Two runs with the same seed give identical weights, history and metrics."""
    features = tiny_feature_matrix(60)
    first, second = (train_model(features, PARAMS, FAST) for _ in range(2))

    def values(trained: Any) -> list[tuple[float, float, float]]:
        return [(r.train_loss, r.val_loss, r.val_auroc) for r in trained.history]

    assert values(first) == values(second)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key
    assert first.evaluation == second.evaluation


def test_best_checkpoint_is_kept() -> None:
    """The returned model has the best epoch's weights: its validation AUROC is the best in the history."""
    features = tiny_feature_matrix(60, signal=0.2)
    trained = train_model(features, attrs.evolve(PARAMS, learning_rate=0.05), attrs.evolve(FAST, max_epochs=6))
    best = trained.history[trained.best_epoch - 1]
    assert best.val_auroc == max(record.val_auroc for record in trained.history)
    val = features.indices("validation")
    x = torch.from_numpy(features.values[val])
    _, val_auroc = training_loop.validation_scores(
        trained.model, training_loop.SplitTensors(x, torch.from_numpy(features.labels[val])), 64
    )
    assert val_auroc == pytest.approx(best.val_auroc)


def test_early_stopping_stops_after_patience() -> None:
    """Training stops once the validation value has not improved for `patience` epochs."""
    trained = train_model(tiny_feature_matrix(60, signal=0.6), PARAMS, attrs.evolve(FAST, max_epochs=40, patience=2))
    assert len(trained.history) == trained.best_epoch + 2 < 40


def test_model_run_holds_weights_params_metrics_and_lineage(tmp_path: Path) -> None:
    """A model run stores weights, params, metrics, history, TensorBoard events and the features parent."""
    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))
    config = attrs.evolve(load_config(), model=FAST)
    run = run_training(store, parent, PARAMS, config)
    assert run.kind == "model"
    assert run.manifest.parents == (parent.id,)
    assert {"model.pt", "params.json", "metrics.json", "history.json"} <= set(run.manifest.checksums)
    assert any(name.startswith("tensorboard/") for name in run.manifest.checksums)
    assert json.loads(run.file("params.json").read_text()) == PARAMS.to_dict()
    summary = run.manifest.summary
    features = tiny_feature_matrix(60)
    assert summary.n == {name: int((features.split == code).sum()) for code, name in enumerate(SPLITS)}
    auroc = summary.test["auroc"]
    assert auroc.low <= auroc.value <= auroc.high
    reloaded = load_trained_model(run)
    assert reloaded.params == PARAMS
    test = torch.from_numpy(tiny_feature_matrix(60).values[:4])
    assert reloaded(test).shape == (4, 2)


def test_stored_roc_curve_integrates_to_the_test_auroc(tmp_path: Path) -> None:
    """curves.parquet holds ROC/PR points whose ROC area equals the reported test AUROC (no ids stored)."""
    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))
    run = run_training(store, parent, PARAMS, attrs.evolve(load_config(), model=FAST))
    curves = pd.read_parquet(run.file("curves.parquet"))
    assert list(curves.columns) == ["split", "curve", "x", "y", "threshold"]
    assert set(curves["split"]) == {"validation", "test"}
    roc = curves[(curves["split"] == "test") & (curves["curve"] == "roc")]
    area = float(np.sum(np.diff(roc["x"]) * (roc["y"].to_numpy()[1:] + roc["y"].to_numpy()[:-1]) / 2))
    assert area == pytest.approx(run.manifest.summary.test["auroc"].value, abs=1e-9)


def test_cross_validation_scores_each_fold_on_its_own_part(tmp_path: Path) -> None:
    """--cv trains K models; fold k is evaluated on fold k only, never trained on, and mean ± sd is reported."""
    features = tiny_feature_matrix(90, n_folds=3)
    for k in range(3):
        split = SplitIndices.fold(features, k)
        assert np.intersect1d(split.evaluation, np.r_[split.train, split.validation]).size == 0
        assert (features.fold[split.evaluation] == k).all()
        assert (features.split[split.train] != 2).all()
    store = RunStore(tmp_path)
    run = run_training(store, features_run(store, features), PARAMS, attrs.evolve(load_config(), model=FAST), cv=True)
    summary = run.manifest.summary
    assert summary.cv
    assert len(summary.folds["auroc"]) == 3
    assert summary.mean["auroc"] == pytest.approx(np.mean(summary.folds["auroc"]))
    assert {f"folds/{k}/model.pt" for k in range(3)} <= set(run.manifest.checksums)


def _runs(tmp_path: Path) -> list[str]:
    return [path.name for path in tmp_path.iterdir() if not path.name.startswith(".")]


def test_empty_split_is_refused_without_a_run(tmp_path: Path) -> None:
    """A features run without validation samples is a clear DataError and no model run is written."""
    features = tiny_feature_matrix(60)
    keep = np.flatnonzero(features.split != 1)
    store = RunStore(tmp_path)
    parent = features_run(store, features.subset(keep))
    with pytest.raises(DataError) as info:
        run_training(store, parent, PARAMS, attrs.evolve(load_config(), model=FAST))
    assert str(info.value) == (
        f"features run {parent.id}: the validation split is empty; rebuild the features with more admissions"
    )
    assert _runs(tmp_path) == [str(parent.id)]


def test_single_class_validation_is_refused_without_a_run(tmp_path: Path) -> None:
    """A validation split with one class is a clear DataError and no model run is written."""
    features = tiny_feature_matrix(60)
    keep = np.flatnonzero((features.split != 1) | (features.labels == 0))
    store = RunStore(tmp_path)
    parent = features_run(store, features.subset(keep))
    with pytest.raises(DataError) as info:
        run_training(store, parent, PARAMS, attrs.evolve(load_config(), model=FAST))
    n_val = int((features.subset(keep).split == 1).sum())
    assert str(info.value) == (
        f"features run {parent.id}: the validation split holds only class 0 ({n_val} samples); AUROC and the "
        "threshold need both classes; rebuild the features with more admissions or another split seed"
    )
    assert _runs(tmp_path) == [str(parent.id)]


def test_unknown_imbalance_setting_is_a_config_error() -> None:
    """An unknown imbalance setting names the options."""
    with pytest.raises(ConfigError) as info:
        train_model(tiny_feature_matrix(60), PARAMS, attrs.evolve(FAST, imbalance="smote"))
    assert str(info.value) == (
        "model.imbalance must be one of weighted_sampling, class_weighted_loss, none; got 'smote'"
    )


def test_cli_train_with_params_file_and_runs_show(tmp_path: Path) -> None:
    """`train --params` writes a model run; `runs show` prints its metrics table; a bad optimizer writes nothing."""
    store = RunStore(tmp_path / "runs")
    parent = features_run(store, tiny_feature_matrix(60))
    config_file = tmp_path / "fast.toml"
    config_file.write_text('[model]\nmax_epochs = 2\nbootstrap_samples = 20\ndevice = "cpu"\n')
    params = tmp_path / "params.json"
    params.write_text(json.dumps(PARAMS.to_dict()))
    base = ["--home", str(tmp_path), "--config", str(config_file)]
    result = CliRunner().invoke(app, [*base, "train", "--data", str(parent.id), "--params", str(params)])
    assert result.exit_code == 0, result.output
    run = store.latest("model")
    assert f"model run {run.id}" in result.output
    shown = CliRunner().invoke(app, [*base, "runs", "show", str(run.id)])
    assert "held-out test split" in shown.output
    assert "auroc" in shown.output
    params.write_text(json.dumps({**PARAMS.to_dict(), "optimizer": "adamw"}))
    bad = CliRunner().invoke(app, [*base, "train", "--params", str(params)])
    assert bad.exit_code == 1
    assert "Hyperparameters.optimizer must be one of adam, rmsprop, sgd; got 'adamw'" in bad.output
    assert len(store.list("model")) == 1


def test_synthetic_data_reports_the_oracle_auroc_of_the_same_test_split(tmp_path: Path) -> None:
    """On synthetic data the model run's summary holds the generator's oracle AUROC on the same test split."""
    import pandas as pd

    from lstm_adv.metrics import oracle_auroc
    from lstm_adv.results.artifacts import TRUTH_FILE
    from lstm_adv.results.summaries import QuerySummary, SynthSeconds, SynthSummary

    features = tiny_feature_matrix(60)
    store = RunStore(tmp_path)
    truth = pd.DataFrame(
        {
            "hadm_id": features.hadm_ids,
            "death_probability": np.linspace(0.0, 1.0, features.n_samples),
            "label": features.labels,
            "severity": np.zeros(features.n_samples),
        }
    )
    with store.create("synth") as writer:
        truth.to_parquet(writer.file(TRUTH_FILE))
        writer.summary = SynthSummary(
            admissions=features.n_samples,
            seed=0,
            schema="synth_a",
            source="embedded",
            tables={},
            deaths=0,
            prevalence=0.1,
            mean_death_probability=0.1,
            oracle_auroc_all=None,
            seconds=SynthSeconds(0, 0, 0),
        )
    with store.create("query") as writer:
        writer.summary = QuerySummary(flow=(), tables={}, schema="synth_a", source="embedded")
    assert writer.committed is not None
    with store.create("features", parents=[writer.committed.id]) as writer:
        features.to_npz(writer.file("features.npz"))
    assert writer.committed is not None
    run = run_training(store, writer.committed, PARAMS, attrs.evolve(load_config(), model=FAST))
    test = features.indices("test")
    expected = oracle_auroc(truth, features.hadm_ids[test], features.labels[test])
    assert run.summary_as(ModelSummary).oracle_test_auroc == pytest.approx(expected)


def test_tensorboard_holds_hparams_and_test_metrics(tmp_path: Path) -> None:
    """A model run's TensorBoard folder has per-epoch scalars, the test metrics as scalars, and an
    HPARAMS entry with the hyperparameters, the decision rule and the test metrics."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    store = RunStore(tmp_path)
    run = run_training(
        store, features_run(store, tiny_feature_matrix(60)), PARAMS, attrs.evolve(load_config(), model=FAST)
    )
    events = EventMultiplexer().AddRunsFromDirectory(str(run.path / "tensorboard")).Reload()
    tags = {tag for per_run in events.Runs().values() for tag in per_run["scalars"]}
    assert {"test/auroc", "test/auprc", "test/brier", "validation/best_auroc"} <= tags
    values = [
        e.value
        for name, per_run in events.Runs().items()
        if "test/auroc" in per_run["scalars"]
        for e in events.Scalars(name, "test/auroc")
    ]
    assert values == [pytest.approx(run.manifest.summary.test["auroc"].value)]
    content = events.PluginRunToTagToContent("hparams")
    assert content, "no hparams entry"
    blobs = b"".join(data for tags_ in content.values() for data in tags_.values())
    for text in (b"hidden_size", b"learning_rate", b"decision", b"test/auroc"):
        assert text in blobs


def test_cli_train_on_a_full_disk_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while `train` writes its weights: one error line, exit 1, no model run and no temporary folder."""
    store = RunStore(tmp_path / "runs")
    parent = features_run(store, tiny_feature_matrix(40))
    config = tmp_path / "tiny.toml"
    config.write_text('[model]\ndevice = "cpu"\nmax_epochs = 1\nbootstrap_samples = 5\n')
    monkeypatch.setattr(Path, "write_bytes", full_disk)
    result = CliRunner().invoke(
        app, ["--home", str(tmp_path), "--config", str(config), "train", "--data", str(parent.id)]
    )
    assert result.exit_code == 1
    assert_one_full_disk_line(result.output, "model", tmp_path)
    assert store.list("model") == []


def test_unknown_decision_rule_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """`train --decision <unknown>` names the choices in one line (exit 1) before anything is trained."""
    from lstm_adv.cli import app

    store = RunStore(tmp_path / "runs")
    parent = features_run(store, tiny_feature_matrix(60))
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "train", "--data", str(parent.id), "--decision", "f1"])
    assert result.exit_code == 1
    assert result.output == "error: configuration: key 'model.decision' must be one of threshold, argmax; got 'f1'\n"
    assert [run.kind for run in store.list()] == ["features"]
