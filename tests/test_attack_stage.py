"""Attack stage: stored successes flip the model, misclassified samples, Ctrl-C and --resume, shards, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import optuna
import pytest
import torch
from typer.testing import CliRunner

from lstm_adv import metrics
from lstm_adv.attack import Shard, merge_attack_shards, run_attack
from lstm_adv.cli import app
from lstm_adv.config import Config
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import ConfigError, DataError, RunKindError
from lstm_adv.domain.feature_matrix import FeatureMatrix
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.models import BiLSTM, Hyperparameters
from lstm_adv.results.artifacts import (
    PREDICTIONS_FILE,
    RESULTS_FILE,
    Predictions,
    load_features,
    load_predictions,
    load_trained_model,
    save_model,
    save_predictions,
)
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import Batches, ModelSummary
from lstm_adv.tune_attack import run_attack_tuning
from tests.strategies import tiny_feature_matrix
from tests.test_train import features_run

PARAMS = Hyperparameters(
    hidden_size=8,
    num_layers=1,
    lstm_activation="tanh",
    dropout=0.0,
    fc_size=8,
    fc_activation="relu",
    optimizer="adam",
    learning_rate=0.01,
    batch_size=16,
)
# A search space of one point, so the tuned settings are known to flip this model quickly.
FIXED = {
    "attack.device": "cpu",
    "attack.max_iterations": 20,
    "attack.search_steps": 2,
    "attack.batch_size": 3,
    "attack.block_size": 4,
    "attack.cells": "all",
    "tune_attack.subset_size": 8,
    "tune_attack.chunks": 2,
    "tune_attack.max_iterations": 10,
    "tune_attack.kappa": [0.1, 0.1],
    "tune_attack.lam": [0.01, 0.01],
    "tune_attack.step_size": [0.1, 0.1],
    "tune_attack.methods": ["ista"],
}


def config(**overrides: Any) -> Config:
    """The test configuration: tiny, CPU, and a fixed attack search space."""
    return load_config(None, {**FIXED, **overrides})


def model_run(
    store: RunStore, features_parent: Run, *, seed: int = 0, decision: str = "argmax", threshold: float | None = None
) -> Run:
    """A model run holding a seeded untrained BiLSTM whose output bias splits the samples' predictions in half,
    with its stored probabilities and decision rule (``threshold``: t chosen on validation, max F1, or the
    given ``threshold``)."""
    features = load_features(features_parent)
    torch.manual_seed(seed)
    model = BiLSTM(PARAMS).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(features.values))
        model.head[-1].bias[1] -= float(torch.median(logits[:, 1] - logits[:, 0]))
        p = torch.softmax(model(torch.from_numpy(features.values)).double(), dim=1)[:, 1].numpy()
    val, test = features.indices("validation"), features.indices("test")
    rule = metrics.decision_rule(decision, features.labels[val], p[val])
    if threshold is not None:
        rule = DecisionRule("threshold", threshold)
    with store.create("model", parents=[features_parent.id]) as writer:
        save_model(writer.path, model)
        save_predictions(writer.path, Predictions(val, p[val], test, p[test]))
        writer.summary = ModelSummary(cv=False, threshold=rule.threshold, decision=rule.rule)
    assert writer.committed is not None
    return writer.committed


@attrs.frozen
class World:
    """A store with a features run, a model run and a tune-attack run (one trial of the fixed space)."""

    store: RunStore
    features: Run
    model: Run
    tuned: Run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = RunStore(tmp_path_factory.mktemp("attack-stage") / "runs")
    features = features_run(store, tiny_feature_matrix(60))
    model = model_run(store, features)
    tuned = run_attack_tuning(store, model, config(), trials=1)
    return World(store, features, model, tuned)


def runs_in(store: RunStore) -> list[str]:
    """Every published or temporary run folder under the store."""
    tmp = store.root / ".tmp"
    names = [p.name for p in store.root.iterdir() if not p.name.startswith(".")]
    return sorted(names + ([f".tmp/{p.name}" for p in tmp.iterdir()] if tmp.is_dir() else []))


def _assert_same_rows(merged: AttackBatchResult, whole: AttackBatchResult) -> None:
    """The same rows, successes and iterations; deltas equal to float32 rounding (shards batch other samples
    together), the sparse values to the minimal-support bisection's resolution."""
    from lstm_adv.attacks.l1 import _SHRINK_ROUNDS

    for name in ("sample_index", "label", "predicted", "skip", "found", "first_iteration", "best_iteration"):
        assert np.array_equal(getattr(merged, name), getattr(whole, name)), name
    for name in ("first_delta", "best_delta", "logits_before", "first_logits", "best_logits"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=0, atol=1e-5, err_msg=name)
    assert np.array_equal(merged.sparse_delta != 0, whole.sparse_delta != 0)
    np.testing.assert_allclose(merged.sparse_delta, whole.sparse_delta, rtol=0, atol=2.0**-_SHRINK_ROUNDS)


def stored(run: Run) -> AttackBatchResult:
    """The attack result as read back from the run folder."""
    return AttackBatchResult.from_npz(run.file(RESULTS_FILE))


def test_stored_successes_flip_the_model_when_delta_is_reapplied(world: World) -> None:
    """Every stored success, first and best, flips the model's prediction when δ from results.npz is added again."""
    run = run_attack(world.store, world.tuned, config())
    result = stored(run)
    features = load_features(world.features)
    model = load_trained_model(world.model)
    assert result.found.sum() >= 3
    assert np.array_equal(result.sample_index, features.indices("test"))
    x = torch.from_numpy(features.values[result.sample_index])
    with torch.no_grad():
        before = model(x).argmax(1).numpy()
        for which in ("first", "best"):
            delta = torch.from_numpy(getattr(result, f"{which}_delta"))
            after = model(x + delta).argmax(1).numpy()
            assert np.array_equal(after[result.found] != before[result.found], np.ones(result.found.sum(), bool))
            assert float((x + delta).min()) >= 0.0
            assert float((x + delta).max()) <= 1.0
    summary = run.manifest.summary
    assert run.manifest.parents == (world.tuned.id,)
    assert (summary.model_run, summary.features_run, summary.split) == (world.model.id, world.features.id, "test")
    assert summary.batch_size == 3
    assert summary.n_samples == result.n
    assert summary.n_attacked == int(result.attacked.sum())
    directions = summary.directions
    assert directions["0to1"].successful + directions["1to0"].successful == int(result.found.sum())
    assert json.loads(run.file("params.json").read_text())["step_size"] == pytest.approx(0.1)


def test_an_automatic_batch_size_is_recorded_and_never_exceeds_a_block(world: World) -> None:
    """attack.batch_size = "auto" on a CPU is 256 samples, at most one block (every call attacks one block);
    the summary and params.json say the size used."""
    run = run_attack(world.store, world.tuned, config(**{"attack.batch_size": "auto"}))
    assert run.manifest.summary.batch_size == 4
    assert json.loads(run.file("params.json").read_text())["batch_size"] == 4


def test_misclassified_samples_are_skipped_unless_included(world: World) -> None:
    """By default only correctly classified samples are attacked; include_misclassified attacks every sample."""
    default = stored(run_attack(world.store, world.tuned, config(), split="all"))
    included = stored(
        run_attack(world.store, world.tuned, config(**{"attack.include_misclassified": True}), split="all")
    )
    correct = default.predicted == default.label
    assert 0 < correct.sum() < default.n
    assert np.array_equal(default.attacked, correct)
    assert included.attacked.all()


def test_mask_keeps_delta_inside_the_allowed_features_and_hours(world: World) -> None:
    """With attack.features = ["vital"] and hours [0, 24) every stored δ is zero outside those cells."""
    from lstm_adv.resources import load_feature_spec

    masked = config(**{"attack.features": ["vital"], "attack.hours": [0, 24], "attack.include_misclassified": True})
    run = run_attack(world.store, world.tuned, masked, split="all")
    result = stored(run)
    vital = np.array([f.source == "vital" for f in load_feature_spec().features])
    assert result.found.any()
    for deltas in (result.first_delta, result.best_delta):
        assert not deltas[:, 24:, :].any()
        assert not deltas[:, :, ~vital].any()


def test_shards_merge_into_the_unsharded_result(world: World) -> None:
    """Three shards of the whole cohort merge into one run whose rows equal the unsharded attack's."""
    cfg = config(**{"attack.include_misclassified": True})
    whole = run_attack(world.store, world.tuned, cfg, split="all")
    shards = []
    for index in (1, 2, 3):
        assert merge_attack_shards(world.store, world.tuned, split="all", count=3) is None
        shards.append(run_attack(world.store, world.tuned, cfg, split="all", shard=Shard(index, 3)))
        assert shards[-1].manifest.summary.shard == f"{index}/3"
    merged = merge_attack_shards(world.store, world.tuned, split="all", count=3)
    assert merged is not None
    _assert_same_rows(stored(merged), stored(whole))
    assert merged.manifest.parents == (world.tuned.id, *(s.id for s in shards))
    keys = ("n_samples", "n_attacked", "n_successful", "success_rate", "split", "median_l0_sparse")
    assert {k: getattr(merged.manifest.summary, k) for k in keys} == {
        k: getattr(whole.manifest.summary, k) for k in keys
    }
    for name, entry in whole.manifest.summary.directions.items():
        other = merged.manifest.summary.directions[name]
        assert (other.attacked, other.successful) == (entry.attacked, entry.successful)
        assert other.sparse.mean_l1 == pytest.approx(entry.sparse.mean_l1, rel=1e-4)


def test_shards_with_other_block_sizes_partition_the_split_and_merge_into_the_unsharded_result(world: World) -> None:
    """A shard owns rows, not blocks: shards run with block sizes 2 and 5 (as a CPU and a GPU shard would be)
    merge into the unsharded attack's rows, each sample once."""
    cfg = config(**{"attack.include_misclassified": True})
    whole = run_attack(world.store, world.tuned, cfg, split="validation")
    first = run_attack(
        world.store,
        world.tuned,
        config(**{"attack.block_size": 2, "attack.include_misclassified": True}),
        split="validation",
        shard=Shard(1, 2),
    )
    second = run_attack(
        world.store,
        world.tuned,
        config(**{"attack.block_size": 5, "attack.include_misclassified": True}),
        split="validation",
        shard=Shard(2, 2),
    )
    merged = merge_attack_shards(world.store, world.tuned, split="validation", count=2, reference=second)
    assert merged is not None
    assert merged.manifest.parents == (world.tuned.id, first.id, second.id)
    _assert_same_rows(stored(merged), stored(whole))


def test_a_merge_leaves_out_shards_of_other_settings(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """An older shard made with other result settings is neither merged nor an error: the merge takes the shards
    of the finishing shard's settings and names the one it left out."""
    odd = run_attack(world.store, world.tuned, config(**{"attack.max_iterations": 7}), split="test", shard=Shard(1, 2))
    cfg = config()
    first = run_attack(world.store, world.tuned, cfg, split="test", shard=Shard(1, 2))
    assert merge_attack_shards(world.store, world.tuned, split="test", count=2, reference=first) is None
    second = run_attack(world.store, world.tuned, cfg, split="test", shard=Shard(2, 2))
    with caplog.at_level("WARNING"):
        merged = merge_attack_shards(world.store, world.tuned, split="test", count=2, reference=second)
    assert merged is not None
    assert odd.id not in merged.manifest.parents
    assert str(odd.id) in caplog.text


def test_more_shards_than_samples_is_one_line(world: World) -> None:
    """--shard 1/99999 on a split of fewer samples is refused before anything is written."""
    before = len(world.store.list())
    with pytest.raises(ConfigError, match=r"--shard 1/99999: the test split has \d+ samples, so at most"):
        run_attack(world.store, world.tuned, config(), split="test", shard=Shard(1, 99999))
    assert len(world.store.list()) == before


def test_a_merge_refuses_shards_that_do_not_partition_the_split(world: World) -> None:
    """Rows twice or missing are one line naming the shards and the counts."""
    from lstm_adv.attack import _check_partition

    features = load_features(world.features)
    rows = features.indices("test")
    result = stored(run_attack(world.store, world.tuned, config(), split="test"))
    doubled = AttackBatchResult.concatenate([result, result.take(np.arange(1))])
    with pytest.raises(DataError, match=r"do not partition the test split \(\d+ rows\): 1 duplicated, 0 missing"):
        _check_partition(doubled, features, "test", [world.tuned])
    with pytest.raises(DataError, match=r"0 duplicated, 1 missing"):
        _check_partition(result.take(np.arange(1, result.n)), features, "test", [world.tuned])
    assert rows.size == result.n


def test_ctrl_c_keeps_finished_batches_and_resume_completes_the_run(world: World) -> None:
    """Ctrl-C after two blocks publishes them as an interrupted run; --resume (even with another batch size)
    writes the full, identical result."""
    cfg = config(**{"attack.include_misclassified": True})
    whole = stored(run_attack(world.store, world.tuned, cfg, split="all"))
    seen: list[int] = []

    def interrupt(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    first = run_attack(world.store, world.tuned, cfg, split="all", progress=interrupt)
    assert first.manifest.status == "interrupted"
    assert first.manifest.summary.batches == Batches(done=8, total=60)
    assert np.array_equal(stored(first).sample_index, np.arange(8))
    resumed = run_attack(world.store, None, config(**{"attack.batch_size": 3}), resume=first)
    assert resumed.manifest.status == "complete"
    assert resumed.manifest.parents == (world.tuned.id, first.id)
    assert stored(resumed) == whole
    with pytest.raises(ConfigError) as info:
        run_attack(world.store, None, config(), resume=resumed)
    assert str(info.value) == (f"--resume needs an interrupted attack run; run {resumed.id} is a complete attack run")


def test_interrupt_before_any_batch_writes_nothing(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C inside the first batch leaves no run behind and propagates."""
    before = runs_in(world.store)

    def interrupt(*args: Any, **kwargs: Any) -> AttackBatchResult:
        raise KeyboardInterrupt

    monkeypatch.setattr("lstm_adv.attack.L1Attack.run", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_attack(world.store, world.tuned, config())
    assert runs_in(world.store) == before


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("3/2", "--shard i/n needs 1 <= i <= n; got '3/2'"),
        ("0/2", "--shard i/n needs 1 <= i <= n; got '0/2'"),
        ("a/b", "--shard must look like i/n with whole numbers, e.g. 1/4; got 'a/b'"),
    ],
)
def test_bad_shard_specs_are_clear_errors(spec: str, message: str) -> None:
    """Shard specs outside 1 <= i <= n or not of the form i/n are rejected with the exact rule."""
    with pytest.raises(ConfigError) as info:
        Shard.parse(spec)
    assert str(info.value) == message


def test_bad_inputs_are_clear_errors_and_write_nothing(world: World) -> None:
    """A run of the wrong kind, a mask excluding every cell and a shard without batches write no run."""
    before = runs_in(world.store)
    with pytest.raises(RunKindError) as kind:
        run_attack(world.store, world.model, config())
    assert str(kind.value) == f"run {world.model.id} is a model run; --tuned needs a tune-attack run"
    with pytest.raises(ConfigError) as mask:
        config(**{"attack.hours": [5, 5]})
    assert str(mask.value) == "attack.hours must be [first, last) with 0 <= first < last <= 48; got [5, 5]"
    with pytest.raises(ConfigError) as shard:
        run_attack(world.store, world.tuned, config(), shard=Shard(14, 14))
    assert str(shard.value) == (
        "--shard 14/14: the test split has 13 samples, so at most 13 shards each own one; use --shard i/n with n <= 13"
    )
    with pytest.raises(ConfigError) as split:
        run_attack(world.store, world.tuned, config(), split="holdout")
    assert str(split.value) == "unknown split 'holdout'; choose one of train, validation (or val), test, all"
    assert runs_in(world.store) == before


def test_empty_split_is_a_data_error_and_writes_nothing(tmp_path: Path) -> None:
    """A features run whose test split is empty cannot be attacked on it; no run is written."""
    store = RunStore(tmp_path)
    matrix: FeatureMatrix = tiny_feature_matrix(40)
    no_test = attrs.evolve(
        matrix,
        split=np.where(matrix.split == 2, 1, matrix.split).astype(np.int8),
        fold=np.where(matrix.fold < 0, 0, matrix.fold).astype(np.int8),
    )
    parent = features_run(store, no_test)
    tuned = run_attack_tuning(store, model_run(store, parent), config(), trials=1)
    before = runs_in(store)
    with pytest.raises(DataError) as info:
        run_attack(store, tuned, config(), split="test")
    assert str(info.value) == (
        f"features run {parent.id}: the test split is empty; there is nothing to attack; choose another --split"
    )
    assert runs_in(store) == before


def test_cli_attack_shards_merge_and_runs_show(world: World) -> None:
    """`attack --shard i/2` twice merges automatically; `runs show` prints the attack summary; bad shards fail."""
    runner = CliRunner(env={"COLUMNS": "200"})
    base = ["--home", str(world.store.root.parent)]
    args = ["attack", "--tuned", str(world.tuned.id), "--split", "val", "--device", "cpu"]
    overrides = world.store.root.parent / "attack.toml"
    overrides.write_text("[attack]\nmax_iterations = 20\n")
    base += ["--config", str(overrides)]
    first = runner.invoke(app, [*base, *args, "--shard", "1/2"])
    assert first.exit_code == 0, first.output
    assert "shard 1/2 done; the shards are merged once all 2 have finished" in first.output
    second = runner.invoke(app, [*base, *args, "--shard", "2/2"])
    assert second.exit_code == 0, second.output
    merged_id = second.output.split("all 2 shards finished: merged attack run ")[1].split()[0]
    shown = runner.invoke(app, [*base, "runs", "show", merged_id])
    assert shown.exit_code == 0, shown.output
    assert "validation split" in shown.output
    assert "median L0 first / best / sparse" in shown.output
    bad = runner.invoke(app, [*base, *args, "--shard", "3/2"])
    assert bad.exit_code == 1
    assert "--shard i/n needs 1 <= i <= n; got '3/2'" in bad.output


def test_targets_and_successes_follow_the_stored_rule_not_argmax(world: World) -> None:
    """For a model whose rule is t ≠ 0.5, the attacked samples are those correct at t by its stored
    probabilities, and every stored example moves P(death) across t, not across 0.5."""
    stored_p = load_predictions(world.model)
    t = float(np.quantile(stored_p.test, 0.3))
    labels = load_features(world.features).labels[stored_p.test_index]
    at_t, at_half = (stored_p.test >= t).astype(int), (stored_p.test >= 0.5).astype(int)
    assert (at_t == labels).tolist() != (at_half == labels).tolist()  # the two rules pick different targets
    model = model_run(world.store, world.features, threshold=t)
    tuned = run_attack_tuning(world.store, model, config(), trials=1)
    assert tuned.manifest.summary.threshold == pytest.approx(t)
    run = run_attack(world.store, tuned, config())
    result = stored(run)
    assert run.manifest.summary.decision == "threshold"
    assert run.manifest.summary.threshold == pytest.approx(t)
    assert np.array_equal(result.sample_index, stored_p.test_index)
    assert np.array_equal(result.predicted, at_t)
    assert np.array_equal(result.attacked, at_t == labels)
    assert result.found.sum() >= 3
    features, net = load_features(world.features), load_trained_model(model)
    x = features.values[result.sample_index[result.found]]
    for which in ("first", "best", "sparse"):
        with torch.no_grad():
            p = torch.softmax(net(torch.from_numpy(x + result.deltas(which)[result.found])).double(), dim=1)[:, 1]
        assert np.array_equal((p.numpy() >= t).astype(int), 1 - at_t[result.found]), which


def test_model_run_without_stored_probabilities_is_one_line_and_writes_nothing(world: World) -> None:
    """An attack on a model run from before the rule was stored names the fix (re-run training)."""
    model = model_run(world.store, world.features, seed=3)
    model.file(PREDICTIONS_FILE).unlink()
    before = runs_in(world.store)
    with pytest.raises(DataError) as info:
        run_attack_tuning(world.store, model, config(), trials=1)
    assert str(info.value) == (
        f"model run {model.id} stores no probabilities (it was made before the toolkit recorded its decision rule); "
        "re-run `lstm-adv train` (or `lstm-adv defend`) to make one that does"
    )
    assert runs_in(world.store) == before


def test_cells_observed_without_a_mask_names_preprocess_and_writes_nothing(tmp_path: Path) -> None:
    """--cells observed on a features run written without an observation mask (an older run) fails before
    any run is written, naming the fix."""
    store = RunStore(tmp_path / "runs")
    features = features_run(store, attrs.evolve(tiny_feature_matrix(60), observed=None))
    model = model_run(store, features)
    tuned = run_attack_tuning(store, model, config(), trials=1)
    before = runs_in(store)
    with pytest.raises(DataError) as tune:
        run_attack_tuning(store, model, config(**{"attack.cells": "observed"}), trials=1)
    with pytest.raises(DataError) as attack:
        run_attack(store, tuned, config(**{"attack.cells": "observed"}))
    for info in (tune, attack):
        assert "re-run `lstm-adv preprocess`, or use --cells all" in str(info.value)
        assert "\n" not in str(info.value)
    assert runs_in(store) == before


def _interrupt_second_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the attack's second batch raise KeyboardInterrupt, as Ctrl-C would."""
    from lstm_adv.attacks import L1Attack

    original, calls = L1Attack.run, []

    def run(self: Any, *args: Any, **kwargs: Any) -> AttackBatchResult:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(L1Attack, "run", run)


def test_cli_interrupted_attack_is_one_line_and_exit_code_130(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the first batch: the CLI prints only how to resume and exits with 130, not 0."""
    _interrupt_second_batch(monkeypatch)
    runner = CliRunner(env={"COLUMNS": "200"})
    blocks = world.store.root.parent / "blocks.toml"
    blocks.write_text("[attack]\nblock_size = 4\nmax_iterations = 10\n")
    base = ["--home", str(world.store.root.parent), "--config", str(blocks)]
    before = runs_in(world.store)
    result = runner.invoke(app, [*base, "attack", "--tuned", str(world.tuned.id), "--device", "cpu"])
    (new,) = set(runs_in(world.store)) - set(before)
    interrupted = world.store.get(new)
    assert result.exit_code == 130
    assert interrupted.manifest.status == "interrupted"
    assert result.output == (
        f"interrupted after 4 of 13 samples; resume with `lstm-adv attack --resume {interrupted.id}`\n"
    )


def test_an_interrupted_run_is_never_a_default_and_naming_it_says_to_resume(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`analyze` without --attack skips an interrupted attack; naming it (as --attack or to report) is one line."""
    run_attack(world.store, world.tuned, config())
    _interrupt_second_batch(monkeypatch)
    interrupted = run_attack(world.store, world.tuned, config())
    assert interrupted.manifest.status == "interrupted"
    complete = max(run.id for run in world.store.list("attack") if run.complete)
    assert world.store.latest("attack").id == complete
    runner = CliRunner(env={"COLUMNS": "200"})
    base = ["--home", str(world.store.root.parent)]
    expected = (
        f"error: run {interrupted.id} is an interrupted attack run; only `--resume` takes it: finish it with "
        f"`lstm-adv attack --resume {interrupted.id}` and use the new run\n"
    )
    for args in (["analyze", "--attack", str(interrupted.id)], ["report", str(interrupted.id)]):
        named = runner.invoke(app, [*base, *args])
        assert named.exit_code == 1
        assert named.output == expected
    analysed = runner.invoke(app, [*base, "analyze"])
    assert analysed.exit_code == 0, analysed.output
    assert world.store.latest("analysis").manifest.parents[0] == complete


def test_re_running_a_shard_does_not_merge_the_shards_again(world: World) -> None:
    """Merging is idempotent: after shard 2/2 is re-run, the shards of that attack still have one merged run."""
    cfg = config(**{"attack.include_misclassified": True})
    for index in (1, 2):
        run_attack(world.store, world.tuned, cfg, split="train", shard=Shard(index, 2))
    merged = merge_attack_shards(world.store, world.tuned, split="train", count=2)
    assert merged is not None
    run_attack(world.store, world.tuned, cfg, split="train", shard=Shard(2, 2))
    again = merge_attack_shards(world.store, world.tuned, split="train", count=2)
    assert again is not None
    assert again.id == merged.id
    merges = [r for r in world.store.list("attack") if r.manifest.summary.merged_shards]
    assert [r.id for r in merges if r.manifest.summary.split == "train"] == [merged.id]
