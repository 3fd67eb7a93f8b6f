"""Studies: proposals depend only on the seed and the finished history; interrupted trials are re-run, not counted."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from lstm_adv import studies


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0) + trial.suggest_int("n", 1, 8)


def _study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(direction="maximize", sampler=studies.HistorySeededSampler(seed))


def test_a_new_sampler_continues_where_the_old_one_stopped() -> None:
    """Four trials in one go propose what two trials, then two more with a fresh sampler of the same seed, propose."""
    whole = _study()
    whole.optimize(_objective, n_trials=4)
    split = _study()
    split.optimize(_objective, n_trials=2)
    split.sampler = studies.HistorySeededSampler(0)
    split.optimize(_objective, n_trials=2)
    assert [t.params for t in split.trials] == [t.params for t in whole.trials]
    assert len({tuple(t.params.items()) for t in whole.trials}) == 4


def test_a_trial_left_running_is_marked_interrupted_and_queued_once_more() -> None:
    """A RUNNING trial (its process stopped) becomes an interrupted failure; its parameters are queued once."""
    study = _study()
    study.optimize(_objective, n_trials=1)
    left = study.ask()
    params = {"x": left.suggest_float("x", 0.0, 1.0), "n": left.suggest_int("n", 1, 8)}
    assert studies.requeue_interrupted(study) == [1]
    assert studies.requeue_interrupted(study) == []  # already queued: not twice
    trials = study.get_trials(deepcopy=False)
    assert [studies.trial_state(t) for t in trials] == ["complete", "interrupted", "waiting"]
    assert trials[2].user_attrs == {studies.REPLAYS: 1}
    assert studies.counted(study) == 1
    study.optimize(_objective, n_trials=1)
    assert study.trials[2].params == params
    assert study.trials[2].state == TrialState.COMPLETE
    assert studies.state_counts(study.trials) == {"complete": 2, "interrupted": 1}


def test_a_trial_stopped_while_drawing_its_parameters_is_drawn_again_in_full() -> None:
    """A stop between two suggestions leaves a trial with some of its parameters; its re-run draws all of them as
    the uninterrupted study drew them (fixing the ones it had would shift the draws of the rest)."""
    whole = _study()
    whole.optimize(_objective, n_trials=3)
    split = _study()
    split.optimize(_objective, n_trials=1)
    left = split.ask()
    left.suggest_float("x", 0.0, 1.0)  # stopped before "n"
    assert studies.requeue_interrupted(split) == [1]
    split.sampler = studies.HistorySeededSampler(0)
    split.optimize(_objective, n_trials=2)
    done = [t.params for t in split.trials if t.state == TrialState.COMPLETE]
    assert done == [t.params for t in whole.trials]


def test_a_queued_trial_is_queued_again_with_what_was_queued() -> None:
    """An interrupted queued trial (e.g. the defaults) is re-run with its queued values, and does not count as a
    proposal: the trials after it propose what an uninterrupted study proposes."""
    whole = _study()
    whole.enqueue_trial({"n": 3})
    whole.optimize(_objective, n_trials=3)
    split = _study()
    split.enqueue_trial({"n": 3})
    left = split.ask()
    left.suggest_float("x", 0.0, 1.0)
    assert studies.requeue_interrupted(split) == [0]
    split.sampler = studies.HistorySeededSampler(0)
    split.optimize(_objective, n_trials=3)
    done = [t.params for t in split.trials if t.state == TrialState.COMPLETE]
    assert done[0]["n"] == 3
    assert done == [t.params for t in whole.trials]


def test_ctrl_c_inside_a_trial_marks_it_interrupted_and_stops_quietly() -> None:
    """optimize() returns "interrupted" after Ctrl-C in a trial; that trial is marked and not counted."""
    study = _study()

    def objective(trial: optuna.Trial) -> float:
        value = _objective(trial)
        if trial.number == 2:
            raise KeyboardInterrupt
        return value

    assert studies.optimize(study, objective, n_trials=5) == "interrupted"
    assert [studies.trial_state(t) for t in study.trials] == ["complete", "complete", "interrupted"]
    assert studies.counted(study) == 2


def test_a_signal_outside_the_objective_waits_until_the_next_trial_starts() -> None:
    """SIGINT while Optuna is between trials (here: in a callback) is held back and stops the next trial instead."""
    import signal

    study = optuna.create_study(
        direction="maximize",
        sampler=studies.HistorySeededSampler(0),
        storage=studies.ShieldedStorage(optuna.storages.InMemoryStorage()),  # type: ignore[arg-type]
    )
    signalled: list[int] = []

    def signal_once(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not signalled:
            signalled.append(trial.number)
            signal.raise_signal(signal.SIGINT)  # Python would raise KeyboardInterrupt right here

    assert studies.optimize(study, _objective, n_trials=5, callbacks=[signal_once]) == "interrupted"
    assert [studies.trial_state(t) for t in study.trials] == ["complete", "interrupted"]
    assert "x" not in study.trials[1].params  # stopped before it suggested anything
