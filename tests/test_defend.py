"""Adversarial training: static generates once, adaptive regenerates against current weights, runs are model runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from typer.testing import CliRunner

from lstm_adv.attacks.pgd import PgdAttack
from lstm_adv.cli import app
from lstm_adv.config import Config, DefendConfig, ModelConfig, PgdConfig
from lstm_adv.defend import defend_model, run_defense
from lstm_adv.domain.errors import ConfigError, RunKindError
from lstm_adv.models import Hyperparameters
from lstm_adv.results.artifacts import DEFENSE_FILE, load_features, load_trained_model
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import ModelSummary
from lstm_adv.train import run_training
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
FAST = ModelConfig(max_epochs=3, patience=3, device="cpu", bootstrap_samples=20)


def config(**defend: Any) -> Config:
    """The default config with a fast model section, few PGD steps and the given [defend] settings."""
    base = load_config()
    settings = {"epochs": 3, "eps": 0.05, "mix": 0.5, **defend}
    return attrs.evolve(base, model=FAST, pgd=PgdConfig(iterations=3), defend=DefendConfig(**settings))


def trained_store(root: Path) -> tuple[RunStore, Run, Run]:
    """A store with a tiny features run and a model trained on it."""
    store = RunStore(root)
    with store.create("features") as writer:
        tiny_feature_matrix(60).to_npz(writer.file("features.npz"))
    assert writer.committed is not None
    model_run = run_training(store, writer.committed, PARAMS, attrs.evolve(load_config(), model=FAST))
    return store, writer.committed, model_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunStore, Run, Run]:
    """One trained model for the module (tests that write runs use their own store)."""
    return trained_store(tmp_path_factory.mktemp("defend"))


def weights_hash(model: torch.nn.Module) -> str:
    """A digest of every parameter and buffer."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture
def perturb_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Every PgdAttack.perturb call: the hash of the weights attacked, the input and the δ returned."""
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    original = PgdAttack.perturb

    def spy(self: PgdAttack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = original(self, x, y)
        calls.append((weights_hash(self.model), x.clone(), delta.clone()))
        return delta

    monkeypatch.setattr(PgdAttack, "perturb", spy)
    return calls


def test_static_training_generates_examples_once(trained: tuple[RunStore, Run, Run], perturb_calls: list[Any]) -> None:
    """Static training attacks the given model once, for the whole training split, and never again."""
    _store, features_run, model_run = trained
    features = load_features(features_run)
    original = load_trained_model(model_run)
    result = defend_model(original, features, config(method="static", epochs=3))
    assert result.regenerations == 1
    assert len(perturb_calls) == 1
    assert perturb_calls[0][0] == weights_hash(original)
    assert perturb_calls[0][1].shape[0] == features.indices("train").size
    assert weights_hash(result.trained.model) != weights_hash(original)


def test_adaptive_training_regenerates_each_epoch_against_current_weights(
    trained: tuple[RunStore, Run, Run], perturb_calls: list[Any]
) -> None:
    """Adaptive training attacks once per epoch, each time other weights, and the examples change."""
    _store, features_run, model_run = trained
    original = load_trained_model(model_run)
    result = defend_model(
        original, load_features(features_run), config(method="adaptive", epochs=3, mix=1.0, regenerate="epoch")
    )
    assert result.regenerations == 3 == len(perturb_calls)
    hashes = [call[0] for call in perturb_calls]
    assert hashes[0] == weights_hash(original)
    assert len(set(hashes)) == 3
    first, second = perturb_calls[0], perturb_calls[1]
    assert torch.equal(first[1], second[1])  # the same clean samples (mix = 1) ...
    assert not torch.equal(first[2], second[2])  # ... get new examples


def test_adaptive_by_batch_regenerates_every_batch(
    trained: tuple[RunStore, Run, Run], perturb_calls: list[Any]
) -> None:
    """With regenerate = batch, examples are made once per training batch, against the weights of that step."""
    _store, features_run, model_run = trained
    features = load_features(features_run)
    result = defend_model(
        load_trained_model(model_run), features, config(method="adaptive", epochs=2, mix=1.0, regenerate="batch")
    )
    batches = -(-features.indices("train").size // PARAMS.batch_size)
    assert result.regenerations == 2 * batches == len(perturb_calls)
    assert len({call[0] for call in perturb_calls}) == len(perturb_calls)


def test_given_model_is_not_changed(trained: tuple[RunStore, Run, Run]) -> None:
    """Fine-tuning works on a copy: the model passed in keeps its weights."""
    _store, features_run, model_run = trained
    original = load_trained_model(model_run)
    before = weights_hash(original)
    defend_model(original, load_features(features_run), config(epochs=1))
    assert weights_hash(original) == before


def test_defense_run_is_a_model_run_with_lineage(tmp_path: Path) -> None:
    """A defense writes a model run (parents: original model, features) that later stages load like any model."""
    store, features_run, model_run = trained_store(tmp_path)
    run = run_defense(store, model_run, config(method="adaptive", epochs=2, regenerate="epoch"))
    assert run.kind == "model"
    assert run.manifest.parents == (model_run.id, features_run.id)
    assert {"model.pt", "params.json", "metrics.json", "history.json", DEFENSE_FILE} <= set(run.manifest.checksums)
    defense = json.loads(run.file(DEFENSE_FILE).read_text())
    assert defense["method"] == "adaptive"
    assert defense["regenerations"] == 2
    assert defense["original_model"] == str(model_run.id)
    assert defense["pgd"]["eps"] == 0.05
    assert defense["pgd"]["iterations"] == 3
    summary = run.manifest.summary
    assert summary.defense.method == "adaptive"
    assert summary.defense.batch_size == 1024
    assert summary.test is not None
    assert set(summary.test) == set(model_run.summary_as(ModelSummary).test or {})
    assert load_trained_model(run).params == PARAMS


def _runs(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir() if not path.name.startswith("."))


def test_wrong_run_kind_writes_nothing(tmp_path: Path) -> None:
    """Giving a features run instead of a model run is a RunKindError and no run is written."""
    store, features_run, _model_run = trained_store(tmp_path)
    before = _runs(tmp_path)
    with pytest.raises(RunKindError) as info:
        run_defense(store, features_run, config())
    assert str(info.value) == f"run {features_run.id} is a features run; give a model run (lstm-adv train)"
    assert _runs(tmp_path) == before


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"eps": -0.1}, "defend.eps must be finite and ≥ 0, got -0.1"),
        ({"attack": "pgd-l3"}, "defend.attack must be one of pgd-linf, pgd-l2; got 'pgd-l3'"),
        ({"method": "magic"}, "defend.method must be one of static, adaptive; got 'magic'"),
        ({"mix": 1.5}, "defend.mix must be finite and in [0, 1], got 1.5"),
    ],
)
def test_bad_settings_write_nothing(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    """A negative ε, an unknown attack, method or mix is a ConfigError when the config is made; no run is written."""
    _store, _features_run, _model_run = trained_store(tmp_path)
    before = _runs(tmp_path)
    with pytest.raises(ConfigError) as info:
        config(**settings)
    assert str(info.value) == message
    assert _runs(tmp_path) == before


def test_cli_defend_prints_the_new_model_run(tmp_path: Path) -> None:
    """`lstm-adv defend` writes a defended model run and prints its id; a negative --eps is one red line."""
    store, _features_run, model_run = trained_store(tmp_path / "runs")
    runner = CliRunner()
    common = ["--home", str(tmp_path), "defend", "--model", str(model_run.id), "--device", "cpu", "--epochs", "1"]
    result = runner.invoke(app, [*common, "--method", "static", "--eps", "0.02", "--mix", "0.5"])
    assert result.exit_code == 0, result.output
    defended = store.get(result.output.strip().splitlines()[-1].removeprefix("model run "), kind="model")
    assert defended.manifest.summary.defense.method == "static"
    bad = runner.invoke(app, [*common, "--eps", "-1"])
    assert bad.exit_code == 1
    assert "defend.eps must be finite and ≥ 0, got -1.0" in bad.output
