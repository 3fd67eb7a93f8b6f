"""Attack tuning: best settings stored, pruning fires, Ctrl-C and --resume, objectives, bad input writes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.domain.errors import ConfigError, RunKindError
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.results.artifacts import STUDY_FILE
from lstm_adv.results.converter import unstructure
from lstm_adv.results.store import RunStore
from lstm_adv.results.summaries import AttackTrial, TunedAttackSettings
from lstm_adv.tune_attack import choose_trial, objective_value, pareto_values, run_attack_tuning, tuning_subset
from tests.strategies import tiny_feature_matrix
from tests.test_attack_stage import World, config, model_run, runs_in
from tests.test_train import features_run


@pytest.fixture
def world(tmp_path: Path) -> World:
    store = RunStore(tmp_path / "runs")
    features = features_run(store, tiny_feature_matrix(60))
    model = model_run(store, features)
    return World(store, features, model, model)


# The shipped search space on a subset attacked in 4 chunks (single objectives report after each chunk).
WIDE = {
    "tune_attack.kappa": [0.0, 2.0],
    "tune_attack.lam": [1e-3, 1.0],
    "tune_attack.step_size": [5e-3, 0.5],
    "tune_attack.methods": ["ista", "fista", "adam"],
    "tune_attack.subset_size": 16,
    "tune_attack.chunks": 4,
    "tune_attack.pruner_startup_trials": 2,
}


def test_three_trials_write_a_run_with_the_chosen_pareto_settings(world: World) -> None:
    """Three trials of the default two-objective study give a complete run; best_params.json holds the
    Pareto trial with success ≥ min_success and the smallest median L0, as choose_trial picks it."""
    run = run_attack_tuning(world.store, world.model, config(**WIDE), trials=3)
    summary = run.manifest.summary
    assert run.manifest.status == "complete"
    assert run.manifest.parents == (world.model.id,)
    assert summary.n_trials == 3
    assert summary.objective == "pareto"
    assert (summary.subset_size, summary.subset_seed) == (16, 0)
    assert summary.model_run == world.model.id
    assert summary.features_run == world.features.id
    assert (summary.decision, summary.threshold, summary.cells) == ("argmax", 0.5, "all")
    complete = [t for t in summary.trials if t.state == "complete"]
    assert all(t.values == (t.success_rate, t.median_l0) for t in complete)
    assert {t.batch_size for t in summary.trials} == {3}
    assert set(summary.pareto) <= {t.number for t in complete}
    assert summary.pareto
    for number in summary.pareto:  # no completed trial dominates a Pareto trial
        p = next(t for t in complete if t.number == number)
        assert not any(
            t.success_rate >= p.success_rate and t.median_l0 <= p.median_l0 and t.values != p.values for t in complete
        )
    assert summary.best == choose_trial(list(summary.trials), summary.pareto, summary.min_success)
    best = json.loads(run.file("best_params.json").read_text())
    assert best == unstructure(summary.best.settings)
    assert set(best) == {"kappa", "lam", "step_size", "method"}
    assert STUDY_FILE in run.manifest.checksums


def _trial(number: int, success: float, median_l0: float) -> AttackTrial:
    settings = TunedAttackSettings(kappa=0.0, lam=0.01 * (number + 1), step_size=0.05, method="ista")
    return AttackTrial(number, "complete", (success, median_l0), settings, None, None, success, median_l0)


def test_choose_trial_takes_the_sparsest_pareto_trial_above_the_success_floor() -> None:
    """Among Pareto trials with success ≥ the floor, the smallest median L0 wins; with none above the floor,
    the most successful Pareto trial; trials off the front are never chosen."""
    trials = [_trial(0, 1.0, 40.0), _trial(1, 0.92, 12.0), _trial(2, 0.8, 5.0), _trial(3, 0.95, 30.0)]
    front = (0, 1, 2)
    assert choose_trial(trials, front, 0.9) == trials[1]
    assert choose_trial(trials, front, 0.95) == trials[0]
    assert choose_trial(trials, front, 0.5) == trials[2]
    assert choose_trial(trials, (1, 2), 0.99) == trials[1]
    assert choose_trial(trials, (), 0.9) is None


def test_a_fresh_study_starts_from_the_attack_defaults(world: World) -> None:
    """Trial 0 of a new study uses the attack's default settings; switching that off leaves it to the sampler."""
    run = run_attack_tuning(world.store, world.model, config(**WIDE), trials=1)
    first = run.manifest.summary.trials[0].settings
    assert (first.kappa, first.lam, first.step_size, first.method) == (0.0, 0.05, 0.05, "ista")
    off = run_attack_tuning(
        world.store, world.model, config(**WIDE, **{"tune_attack.start_from_defaults": False}), trials=1
    )
    assert off.manifest.summary.trials[0].settings != first


def test_pruning_fires_on_trials_that_fall_behind(world: World) -> None:
    """With the median pruner fed the running objective after each chunk, trials that find less are pruned."""
    wide = {**WIDE, "tune_attack.objective": "sparsity", "tune_attack.step_size": [1e-5, 0.5]}
    run = run_attack_tuning(world.store, world.model, config(**wide), trials=12)
    summary = run.manifest.summary
    assert summary.n_pruned >= 1, summary.states
    pruned = [t for t in summary.trials if t.state == "pruned"]
    assert all(t.last_step < 3 for t in pruned)  # stopped before the last of the 4 chunks


def test_interrupt_keeps_finished_trials_and_resume_continues_the_study(world: World) -> None:
    """Ctrl-C publishes an interrupted run with its finished trials; --resume continues the same study."""

    def interrupt(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number == 1:
            raise KeyboardInterrupt

    first = run_attack_tuning(world.store, world.model, config(), trials=4, on_trial=interrupt)
    assert first.manifest.status == "interrupted"
    assert [t.number for t in first.manifest.summary.trials] == [0, 1]
    resumed = run_attack_tuning(world.store, None, config(), trials=2, resume=first)
    summary = resumed.manifest.summary
    assert resumed.manifest.status == "complete"
    assert summary.study_name == first.manifest.summary.study_name == str(first.id)
    assert [t.number for t in summary.trials] == [0, 1, 2, 3]
    assert resumed.manifest.parents == (world.model.id, first.id)
    finished = run_attack_tuning(world.store, None, config(), resume=first)  # no --trials: the rest of the 4
    assert first.manifest.summary.budget == 4
    assert [t.number for t in finished.manifest.summary.trials] == [0, 1, 2, 3]
    with pytest.raises(ConfigError) as info:
        run_attack_tuning(world.store, None, config(), objective="sparse_small", resume=resumed)
    assert str(info.value) == (
        f"tune-attack run {resumed.id} optimizes 'pareto'; a resumed study cannot change its objective to "
        "'sparse_small'"
    )


def _result(deltas: list[np.ndarray], sparse: list[np.ndarray] | None = None) -> AttackBatchResult:
    n = len(deltas)
    stacked = np.stack(deltas).astype(np.float32)
    found = np.abs(stacked).sum(axis=(1, 2)) > 0
    logits = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (n, 1))
    flipped = np.where(found[:, None], logits[:, ::-1], 0).astype(np.float32)
    return AttackBatchResult(
        10,
        0.5,
        sample_index=np.arange(n),
        label=np.zeros(n, dtype=np.int64),
        logits_before=logits,
        predicted=np.zeros(n, dtype=np.int64),
        skip=np.zeros(n, dtype=np.int8),
        found=found,
        first_iteration=np.where(found, 1, 0),
        first_delta=stacked,
        first_logits=flipped,
        best_iteration=np.where(found, 1, 0),
        best_delta=stacked,
        best_logits=flipped,
        sparse_delta=stacked if sparse is None else np.stack(sparse).astype(np.float32),
        sparse_logits=flipped,
    )


def test_objectives_follow_their_definitions() -> None:
    """Each objective sums its formula over successful samples' best δ; failures add nothing."""
    a = np.zeros((48, 19))
    a[0, 0], a[1, 1] = 0.5, -0.25
    b = np.zeros((48, 19))
    b[3, :4] = 0.1
    result = _result([a, b, np.zeros((48, 19))])
    sa, sb = 1 - 2 / 912, 1 - 4 / 912
    assert objective_value(result, "sparsity", max_nonzero=3) == pytest.approx(sa + sb)
    assert objective_value(result, "sparse_small", max_nonzero=3) == pytest.approx(sa / 0.75 + sb / 0.4, rel=1e-6)
    assert objective_value(result, "sparse_small_max", max_nonzero=3) == pytest.approx(sa / 0.5 + sb / 0.1, rel=1e-6)
    assert objective_value(result, "max_num_nonzero_perts", max_nonzero=3) == 1.0
    assert objective_value(result, "max_num_nonzero_perts", max_nonzero=4) == 2.0


def test_pareto_values_are_success_rate_and_median_sparse_l0() -> None:
    """The two objectives of the default study: success rate over attacked samples and the median L0 of the
    sparse examples of the successes (912 when nothing succeeded)."""
    dense = [np.full((48, 19), 0.1), np.full((48, 19), 0.1), np.zeros((48, 19))]
    sparse = [np.zeros((48, 19)) for _ in range(3)]
    sparse[0][0, :2], sparse[1][0, :6] = 0.3, 0.3
    result = _result(dense, sparse)
    assert pareto_values(result) == (pytest.approx(2 / 3), 4.0)
    assert pareto_values(_result([np.zeros((48, 19))])) == (0.0, 912.0)


def test_tuning_subset_is_seeded_and_drawn_from_the_given_rows() -> None:
    """The same seed draws the same rows, another seed others; all rows come from the training split."""
    rows = np.arange(100, 300, dtype=np.int64)
    first = tuning_subset(rows, 20, seed=3)
    assert np.array_equal(first, tuning_subset(rows, 20, seed=3))
    assert not np.array_equal(first, tuning_subset(rows, 20, seed=4))
    assert np.isin(first, rows).all()
    assert np.all(np.diff(first) > 0)
    assert np.array_equal(tuning_subset(rows[:5], 20, seed=3), rows[:5])


def test_bad_inputs_are_clear_errors_and_write_nothing(world: World) -> None:
    """A run of the wrong kind, --trial on a model run, an unknown objective or an empty mask write no run."""
    before = runs_in(world.store)
    with pytest.raises(RunKindError) as kind:
        run_attack_tuning(world.store, world.features, config(), trials=1)
    assert str(kind.value) == (
        f"run {world.features.id} is a features run; --model needs a model run (or a tune-model run with --trial)"
    )
    with pytest.raises(ConfigError) as trial:
        run_attack_tuning(world.store, world.model, config(), trial=2, trials=1)
    assert str(trial.value) == f"--trial selects a trial of a tune-model run; run {world.model.id} is a model run"
    with pytest.raises(ConfigError) as objective:
        run_attack_tuning(world.store, world.model, config(), objective="smallest", trials=1)
    assert str(objective.value) == (
        "tune_attack.objective must be one of pareto, sparsity, sparse_small, sparse_small_max, "
        "max_num_nonzero_perts; got 'smallest'"
    )
    with pytest.raises(ConfigError) as mask:
        run_attack_tuning(world.store, world.model, config(**{"attack.features": ["pulse"]}), trials=1)
    assert str(mask.value) == (
        "attack.features: unknown feature or source ['pulse']; use names from the feature definitions or one of "
        "bloodgas, lab, vital"
    )
    assert runs_in(world.store) == before


def test_cli_tune_attack_then_attack(world: World) -> None:
    """`tune-attack --model` prints its run id, `attack --tuned` uses it; a wrong kind is one red line."""
    runner = CliRunner(env={"COLUMNS": "200"})
    home = world.store.root.parent
    settings = home / "small.toml"
    settings.write_text(
        "[tune_attack]\nsubset_size = 8\nchunks = 2\nmax_iterations = 10\n[attack]\nmax_iterations = 10\n"
    )
    base = ["--home", str(home), "--config", str(settings)]
    tuned = runner.invoke(
        app,
        [
            *base,
            "tune-attack",
            "--model",
            str(world.model.id),
            "--trials",
            "2",
            "--objective",
            "max_num_nonzero_perts",
            "--device",
            "cpu",
        ],
    )
    assert tuned.exit_code == 0, tuned.output
    tuned_id = tuned.output.split("tune-attack run ")[-1].split()[0]
    assert "objective max_num_nonzero_perts on 8 training samples" in tuned.output
    attacked = runner.invoke(app, [*base, "attack", "--tuned", tuned_id, "--split", "all", "--device", "cpu"])
    assert attacked.exit_code == 0, attacked.output
    assert "all split: " in attacked.output
    assert "attack run attack-" in attacked.output
    wrong = runner.invoke(app, [*base, "tune-attack", "--model", str(world.features.id)])
    assert wrong.exit_code == 1
    assert f"run {world.features.id} is a features run; --model needs a model run" in wrong.output


def test_an_interrupted_and_resumed_attack_study_proposes_what_an_uninterrupted_one_proposes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C inside trial 2, then --resume: the trials' settings equal one uninterrupted study's (same seed)."""
    from lstm_adv import tune_attack

    whole = run_attack_tuning(world.store, world.model, config(**WIDE), trials=5)
    original = tune_attack.suggest_settings

    def interrupt_trial_2(trial: optuna.Trial, tune: Any) -> Any:
        settings = original(trial, tune)
        if trial.number == 2:
            raise KeyboardInterrupt
        return settings

    monkeypatch.setattr(tune_attack, "suggest_settings", interrupt_trial_2)
    first = run_attack_tuning(world.store, world.model, config(**WIDE), trials=5)
    assert first.manifest.summary.states.get("interrupted") == 1
    monkeypatch.setattr(tune_attack, "suggest_settings", original)
    resumed = run_attack_tuning(world.store, None, config(**WIDE), trials=3, resume=first)

    def settings(run: Any) -> list[Any]:
        return [t.settings for t in run.manifest.summary.trials if t.state != "interrupted"]

    assert settings(resumed) == settings(whole)
