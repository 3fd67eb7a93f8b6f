"""Adversarial training: static generates once, adaptive regenerates against current weights, runs are model runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lstm_adv.attacks import L1Attack, L1Settings
from lstm_adv.attacks.pgd import PgdAttack
from lstm_adv.attacks.trades import TradesAttack
from lstm_adv.cli import app
from lstm_adv.config import AttackConfig, Config, DefendConfig, ModelConfig, PgdConfig
from lstm_adv.defend import SparseTraining, defend_model, run_defense
from lstm_adv.domain.errors import ConfigError, DataError, RunKindError
from lstm_adv.domain.feature_matrix import FeatureMatrix, ScalingStats
from lstm_adv.models import Hyperparameters
from lstm_adv.resources import load_feature_spec
from lstm_adv.results.artifacts import DEFENSE_FILE, load_features, load_trained_model
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import ModelSummary
from lstm_adv.targets import attack_surface
from lstm_adv.train import run_training
from lstm_adv.tune_attack import run_attack_tuning
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
    settings = {"epochs": 3, "eps": 0.05, "mix": 0.5, "monitor_samples": 0, **defend}
    return attrs.evolve(base, model=FAST, pgd=PgdConfig(iterations=3), defend=DefendConfig(**settings))


def scaled_features() -> FeatureMatrix:
    """The tiny FeatureMatrix with a different scale (p5, p95) per feature, as a real features run has."""
    base = tiny_feature_matrix(60)
    p5 = np.arange(19, dtype=np.float64)
    scaling = ScalingStats(base.feature_names, p5=p5, p95=p5 + np.linspace(0.5, 40.0, 19), median=p5 + 0.25)
    return attrs.evolve(base, scaling=scaling)


def trained_store(root: Path) -> tuple[RunStore, Run, Run]:
    """A store with a tiny features run and a model trained on it."""
    store = RunStore(root)
    with store.create("features") as writer:
        scaled_features().to_npz(writer.file("features.npz"))
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
        ({"method": "magic"}, "defend.method must be one of static, adaptive, l1; got 'magic'"),
        ({"mix": 1.5}, "defend.mix must be finite and in [0, 1], got 1.5"),
        (
            {"method": "static", "loss": "trades"},
            "defend.loss = trades needs defend.method = adaptive (TRADES makes its examples against the current "
            "weights); got method 'static'",
        ),
    ],
)
def test_bad_settings_write_nothing(tmp_path: Path, settings: dict[str, Any], message: str) -> None:
    """A negative ε, an unknown attack, method or mix, or TRADES without adaptive training is a ConfigError when
    the config is made; no run is written."""
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


# --- training against the sparse L1 attack ----------------------------------------------------------

SPARSE = L1Settings(lam=0.01, step_size=0.2, max_iterations=3, search_steps=1)


@pytest.fixture
def l1_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, torch.Tensor | None, torch.Tensor]]:
    """Every L1Attack.perturb call: the hash of the weights attacked, the cells allowed and the δ returned."""
    calls: list[tuple[str, torch.Tensor | None, torch.Tensor]] = []
    original = L1Attack.perturb

    def spy(self: L1Attack, x: torch.Tensor, y: torch.Tensor, cells: Any = None, **options: Any) -> torch.Tensor:
        delta = original(self, x, y, cells, **options)
        allowed = cells if cells is not None else options.get("record")
        calls.append((weights_hash(self.model), None if allowed is None else allowed.clone(), delta.clone()))
        return delta

    monkeypatch.setattr(L1Attack, "perturb", spy)
    return calls


@pytest.mark.parametrize("threat", ["observed", "record"])
def test_l1_training_makes_fresh_sparse_examples_every_batch_on_allowed_cells(
    trained: tuple[RunStore, Run, Run], l1_calls: list[Any], threat: str
) -> None:
    """Method l1 attacks the current weights once per batch with the sparse attack; its examples change only what
    each sample may change (its measured cells; for the record threat, the cells its measurements fill), and
    some of them are adversarial."""
    _store, features_run, model_run = trained
    features = load_features(features_run)
    surface = attack_surface(AttackConfig(cells=threat), features, load_feature_spec())  # type: ignore[arg-type]
    sparse = SparseTraining(SPARSE, surface)
    result = defend_model(
        load_trained_model(model_run), features, config(method="l1", epochs=2, mix=1.0), sparse=sparse
    )
    batches = -(-features.indices("train").size // PARAMS.batch_size)
    assert result.regenerations == 2 * batches == len(l1_calls)
    assert len({call[0] for call in l1_calls}) == len(l1_calls)  # every batch: other weights
    for _hash, allowed, delta in l1_calls:
        assert allowed is not None
        if threat == "observed":
            assert not bool((delta[~allowed] != 0).any())
        else:  # a series without any measurement (window or before) has nothing to alter: it stays the median
            never = torch.isnan(allowed).all(dim=1)  # (B, 19)
            assert not bool((delta.abs().sum(dim=1)[never] != 0).any())
    assert any(bool((call[2] != 0).any()) for call in l1_calls)
    assert result.settings == SPARSE


def test_l1_training_needs_the_sparse_attack_settings(trained: tuple[RunStore, Run, Run]) -> None:
    """defend_model with method l1 but no SparseTraining is one ConfigError naming --tuned."""
    _store, features_run, model_run = trained
    with pytest.raises(ConfigError) as info:
        defend_model(load_trained_model(model_run), load_features(features_run), config(method="l1"))
    assert str(info.value) == (
        "defend.method = l1 needs the sparse attack's settings (a tune-attack run); give --tuned"
    )


TUNE = {
    "tune_attack.subset_size": 8,
    "tune_attack.max_iterations": 10,
    "attack.search_steps": 2,
    "attack.device": "cpu",
}


def test_l1_defense_run_uses_the_tuned_attack_of_its_model(tmp_path: Path) -> None:
    """Without a tune-attack run of the model, `defend --method l1` stops naming tune-attack and --tuned and writes
    nothing; with one, the defended run lists it as a parent and records its bounded settings and cells."""
    store, features_run, model_run = trained_store(tmp_path)
    before = _runs(tmp_path)
    with pytest.raises(DataError) as info:
        run_defense(store, model_run, config(method="l1"))
    assert str(info.value) == (
        f"defend --method l1 makes its examples with the tuned sparse attack, but no tune-attack run was tuned "
        f"against model run {model_run.id}; run `lstm-adv tune-attack --model {model_run.id}` first or give "
        "one with --tuned"
    )
    assert _runs(tmp_path) == before
    tuned = run_attack_tuning(store, model_run, load_config(overrides=TUNE), trials=1)
    run = run_defense(store, model_run, config(method="l1", epochs=1, l1_iterations=4, l1_search_steps=2))
    assert run.manifest.parents == (model_run.id, features_run.id, tuned.id)
    defense = run.summary_as(ModelSummary).defense
    assert defense is not None
    assert (defense.method, defense.attack, defense.eps, defense.tuned, defense.cells) == (
        "l1",
        "l1",
        None,
        tuned.id,
        "record",
    )
    stored = json.loads(run.file(DEFENSE_FILE).read_text())
    assert (stored["l1"]["max_iterations"], stored["l1"]["search_steps"]) == (4, 2)
    assert stored["l1_example"] == "sparse"


# --- TRADES ----------------------------------------------------------------------------------------


def test_trades_makes_kl_examples_every_batch(trained: tuple[RunStore, Run, Run], perturb_calls: list[Any]) -> None:
    """TRADES attacks every training sample (mix and target unused) with the KL attack, every batch."""
    _store, features_run, model_run = trained
    features = load_features(features_run)
    result = defend_model(
        load_trained_model(model_run), features, config(method="adaptive", loss="trades", epochs=1, mix=0.1)
    )
    batches = -(-features.indices("train").size // PARAMS.batch_size)
    assert result.regenerations == batches == len(perturb_calls)
    assert sum(call[1].shape[0] for call in perturb_calls) == features.indices("train").size  # every sample
    assert result.examples_per_epoch == features.indices("train").size


def test_trades_with_beta_zero_is_clean_fine_tuning(
    trained: tuple[RunStore, Run, Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With β = 0 the TRADES loss is the clean cross-entropy: the weights equal those of fine-tuning on clean
    samples only (mix 0), up to float rounding."""
    _store, features_run, model_run = trained
    features = load_features(features_run)
    kl_attacks: list[int] = []
    original = TradesAttack.perturb
    monkeypatch.setattr(TradesAttack, "perturb", lambda self, x, y: kl_attacks.append(1) or original(self, x, y))
    trades = defend_model(load_trained_model(model_run), features, config(loss="trades", beta=0.0, epochs=2))
    clean = defend_model(load_trained_model(model_run), features, config(mix=0.0, epochs=2))
    assert kl_attacks
    for (name, a), (_, b) in zip(
        trades.trained.model.state_dict().items(), clean.trained.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_trades_defense_run_records_loss_and_beta(tmp_path: Path) -> None:
    """A TRADES run is an adaptive defense whose summary and defense.json name the loss and β."""
    store, _features_run, model_run = trained_store(tmp_path)
    run = run_defense(store, model_run, config(loss="trades", beta=2.5, epochs=1))
    defense = run.summary_as(ModelSummary).defense
    assert defense is not None
    assert (defense.method, defense.loss, defense.beta, defense.mix) == ("adaptive", "trades", 2.5, 1.0)
    stored = json.loads(run.file(DEFENSE_FILE).read_text())
    assert (stored["loss"], stored["beta"]) == ("trades", 2.5)


# --- monitoring: robust validation accuracy and TensorBoard -----------------------------------------


def test_defense_run_logs_clean_and_robust_validation_per_epoch(tmp_path: Path) -> None:
    """A defended model run writes per-epoch TensorBoard scalars (training loss, clean validation loss and AUROC,
    robust validation accuracy under the training attack) and an HPARAMS entry; defense.json and the summary hold
    the robust accuracies and the wall time."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    store, _features_run, model_run = trained_store(tmp_path)
    run = run_defense(store, model_run, config(method="static", epochs=2, monitor_samples=8))
    events = EventMultiplexer().AddRunsFromDirectory(str(run.path / "tensorboard")).Reload()
    scalars = {
        tag: [e.value for e in events.Scalars(name, tag)]
        for name, per_run in events.Runs().items()
        for tag in per_run["scalars"]
    }
    for tag in ("loss/train", "loss/validation", "auroc/validation", "robust_accuracy/validation"):
        assert len(scalars[tag]) == 2, tag
    stored = json.loads(run.file(DEFENSE_FILE).read_text())
    assert stored["robust_validation_accuracy"] == pytest.approx(scalars["robust_accuracy/validation"])
    assert all(0.0 <= value <= 1.0 for value in stored["robust_validation_accuracy"])
    defense = run.summary_as(ModelSummary).defense
    assert defense is not None
    assert defense.robust_validation == pytest.approx(stored["robust_validation_accuracy"][-1])
    assert defense.seconds is not None
    assert defense.seconds > 0
    assert scalars["test/auroc"] == [pytest.approx(run.summary_as(ModelSummary).test["auroc"].value)]
    blobs = b"".join(data for tags in events.PluginRunToTagToContent("hparams").values() for data in tags.values())
    for text in (b"defense/method", b"defense/eps", b"validation/final_robust_accuracy", b"test/auroc"):
        assert text in blobs


def test_monitoring_never_changes_the_training_examples(trained: tuple[RunStore, Run, Run]) -> None:
    """The robust monitor attacks with its own attack object: the defended weights are the same with it or without."""
    _store, features_run, model_run = trained
    features = load_features(features_run)
    runs = [defend_model(load_trained_model(model_run), features, config(epochs=2, monitor_samples=n)) for n in (0, 8)]
    assert weights_hash(runs[0].trained.model) == weights_hash(runs[1].trained.model)
    assert (runs[0].robust_accuracy, len(runs[1].robust_accuracy)) == ((), 2)


def test_cli_defend_l1_and_trades(tmp_path: Path) -> None:
    """`defend --method l1 --tuned <id> --cells all` and `defend --loss trades --beta 3` write defended model runs."""
    store, _features_run, model_run = trained_store(tmp_path / "runs")
    tuned = run_attack_tuning(store, model_run, load_config(overrides=TUNE), trials=1)
    runner = CliRunner()
    common = ["--home", str(tmp_path), "defend", "--model", str(model_run.id), "--device", "cpu", "--epochs", "1"]
    result = runner.invoke(app, [*common, "--method", "l1", "--tuned", str(tuned.id), "--cells", "all"])
    assert result.exit_code == 0, result.output
    defended = store.get(result.output.strip().splitlines()[-1].removeprefix("model run "), kind="model")
    assert (defended.manifest.summary.defense.method, defended.manifest.summary.defense.cells) == ("l1", "all")
    result = runner.invoke(app, [*common, "--loss", "trades", "--beta", "3"])
    assert result.exit_code == 0, result.output
    assert "TRADES β=3.0" in result.output


def test_a_defended_model_is_an_attack_target_like_any_model(tmp_path: Path) -> None:
    """tune-attack and attack take a defended model run: its features run is found through its original."""
    from lstm_adv.results.artifacts import load_decision
    from lstm_adv.targets import resolve_target

    store, features_run, model_run = trained_store(tmp_path)
    run = run_defense(store, model_run, config(epochs=1))
    target = resolve_target(store, run)
    assert target.features_run.id == features_run.id
    _model, decision = target.load(load_features(features_run), torch.device("cpu"))
    assert decision == load_decision(run)
