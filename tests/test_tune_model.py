"""Model tuning: pruning fires, trials keep their weights, Ctrl-C and --resume, shared PostgreSQL studies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from lstm_adv.config import Config
from lstm_adv.domain.errors import ConfigError, DatabaseError
from lstm_adv.results.artifacts import STUDY_FILE, load_model, trial_params
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import RunStore
from lstm_adv.studies import database_url
from lstm_adv.train import run_training
from lstm_adv.tune_model import run_model_tuning
from tests.full_disk import assert_one_full_disk_line, full_disk
from tests.strategies import tiny_feature_matrix
from tests.test_train import features_run

TINY = {
    "model.device": "cpu",
    "model.patience": 4,
    "model.bootstrap_samples": 20,
    "model.max_epochs": 2,
    "tune_model.epochs_per_trial": 4,
    "tune_model.pruner_startup_trials": 1,
    "tune_model.pruner_warmup_epochs": 0,
    "tune_model.hidden_size_log2": [2, 3],
    "tune_model.fc_size_log2": [2, 3],
    "tune_model.batch_size_log2": [3, 4],
}


def _config(**overrides: Any) -> Config:
    return load_config(None, {**TINY, **overrides})


def _runs(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir() if not path.name.startswith("."))


def test_pruning_fires_and_completed_trials_keep_their_weights(tmp_path: Path) -> None:
    """With a median pruner on per-epoch validation AUROC some trials are pruned; completed ones keep weights."""
    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))
    run = run_model_tuning(store, parent, _config(), trials=8)
    summary = run.manifest.summary
    assert run.manifest.status == "complete"
    assert summary.n_trials == 8
    assert summary.states.get("pruned", 0) >= 1
    assert summary.states.get("complete", 0) >= 1
    assert STUDY_FILE in run.manifest.checksums
    for trial in summary.trials:
        folder = run.path / "trials" / str(trial.number)
        assert folder.is_dir() == (trial.state == "complete")
    best_number, best_params = trial_params(run)
    assert load_model(run.path / "trials" / str(best_number)).params == best_params
    assert run.manifest.parents == (parent.id,)


def test_tuned_trial_feeds_training(tmp_path: Path) -> None:
    """`train --tuned-model` takes a trial's hyperparameters; the model run names the tuning run as a parent."""
    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))
    tuned = run_model_tuning(store, parent, _config(), trials=2)
    _number, params = trial_params(tuned)
    model = run_training(store, parent, params, _config(), extra_parents=[tuned.id])
    assert model.manifest.parents == (parent.id, tuned.id)
    with pytest.raises(ConfigError) as info:
        trial_params(tuned, 99)
    assert str(info.value).startswith(f"tuning run {tuned.id} has no completed trial 99; completed trials: ")


def test_interrupt_keeps_finished_trials_and_resume_continues_the_study(tmp_path: Path) -> None:
    """Ctrl-C publishes an interrupted run with its finished trials; --resume continues the same study."""
    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))

    def interrupt(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number == 1:
            raise KeyboardInterrupt

    first = run_model_tuning(store, parent, _config(), trials=5, on_trial=interrupt)
    assert first.manifest.status == "interrupted"
    assert [t.number for t in first.manifest.summary.trials] == [0, 1]
    resumed = run_model_tuning(store, None, _config(), trials=2, resume=first)
    summary = resumed.manifest.summary
    assert resumed.manifest.status == "complete"
    assert summary.study_name == first.manifest.summary.study_name == str(first.id)
    assert [t.number for t in summary.trials] == [0, 1, 2, 3]
    assert summary.trials[:2] == first.manifest.summary.trials
    assert resumed.manifest.parents == (parent.id, first.id)
    done = [t.number for t in summary.trials if t.state == "complete"]
    assert all((resumed.path / "trials" / str(n) / "model.pt").exists() for n in done)


def test_unreachable_storage_is_a_database_error_and_writes_no_run(tmp_path: Path) -> None:
    """A storage URL that cannot be reached fails before anything is written, naming the URL and the fix."""
    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))
    url = "postgresql://postgres:secret@127.0.0.1:1/optuna"
    with pytest.raises(DatabaseError) as info:
        run_model_tuning(store, parent, _config(**{"tune_model.storage_timeout_s": 2}), trials=1, storage=url)
    message = str(info.value)
    assert message.startswith("cannot use the Optuna storage postgresql+psycopg://postgres:***@127.0.0.1:1/optuna: ")
    assert message.endswith(
        "; check the URL and that the server is running, or leave out --storage to keep the study in a file inside "
        "the run"
    )
    assert "secret" not in message
    assert _runs(tmp_path) == [str(parent.id)]


def test_unknown_optimizer_in_search_space_is_a_config_error(tmp_path: Path) -> None:
    """An unknown optimizer in the search space names the options and writes no run."""
    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))
    with pytest.raises(ConfigError) as info:
        _config(**{"tune_model.optimizers": ["adam", "lbfgs"]})
    assert str(info.value) == (
        "configuration: key 'tune_model.optimizers[1]' must be one of adam, rmsprop, sgd; got 'lbfgs'"
    )
    assert _runs(tmp_path) == [str(parent.id)]


def test_tuning_never_touches_the_test_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials train on the train split and are scored on validation only."""
    features = tiny_feature_matrix(60)
    store = RunStore(tmp_path)
    parent = features_run(store, features)
    sizes: list[int] = []
    from lstm_adv import tune_model

    original = tune_model.fit_model

    def spy(train: Any, validation: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(train.y.shape[0] + validation.y.shape[0])
        return original(train, validation, *args, **kwargs)

    monkeypatch.setattr(tune_model, "fit_model", spy)
    run_model_tuning(store, parent, _config(), trials=1)
    assert sizes == [int((features.split != 2).sum())]


@pytest.mark.db
@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(tmp_path: Path, pg_server: Any) -> None:
    """Two worker processes work on one PostgreSQL study: both run trials, no trial number repeats."""
    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))
    config = _config(**{"tune_model.pruner_startup_trials": 100})
    run = run_model_tuning(store, parent, config, trials=6, storage=pg_server.dsn, workers=2)
    trials = run.manifest.summary.trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert sorted(numbers) == list(range(len(numbers)))
    assert 6 <= len(numbers) <= 7  # a worker may start one trial while the other reaches the target
    assert len({t.worker for t in trials}) == 2
    assert run.manifest.summary.storage == pg_server.dsn
    storage = optuna.storages.RDBStorage(database_url(pg_server.dsn))
    assert len(optuna.load_study(study_name=str(run.id), storage=storage).trials) == len(numbers)
    again = run_model_tuning(store, None, config, trials=1, resume=run)
    assert again.manifest.summary.n_trials == len(numbers) + 1


def test_cli_tune_model_then_train_from_its_best_trial(tmp_path: Path) -> None:
    """`tune-model` prints its run; `runs show` lists the best trial; `train --tuned-model` trains from it."""
    from typer.testing import CliRunner

    from lstm_adv.cli import app

    store = RunStore(tmp_path / "runs")
    parent = features_run(store, tiny_feature_matrix(60))
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(
        '[model]\ndevice = "cpu"\nmax_epochs = 2\nbootstrap_samples = 20\n'
        "[tune_model]\nepochs_per_trial = 2\nhidden_size_log2 = [2, 3]\nfc_size_log2 = [2, 3]\n"
    )
    base = ["--home", str(tmp_path), "--config", str(config_file)]
    tuned = CliRunner().invoke(app, [*base, "tune-model", "--data", str(parent.id), "--trials", "2"])
    assert tuned.exit_code == 0, tuned.output
    run = store.latest("tune-model")
    assert f"tune-model run {run.id}" in tuned.output
    shown = CliRunner().invoke(app, [*base, "runs", "show", str(run.id)])
    assert "best trial" in shown.output
    trained = CliRunner().invoke(app, [*base, "train", "--tuned-model", str(run.id)])
    assert trained.exit_code == 0, trained.output
    assert store.latest("model").manifest.parents == (parent.id, run.id)
    plain = CliRunner().invoke(app, [*base, "train"])  # no flag: the latest tuning of these features, said so
    assert plain.exit_code == 0, plain.output
    assert "(the latest tune-model run of these features; --defaults trains [model])" in " ".join(plain.output.split())
    assert store.latest("model").manifest.parents == (parent.id, run.id)
    defaults = CliRunner().invoke(app, [*base, "train", "--defaults"])
    assert defaults.exit_code == 0, defaults.output
    assert store.latest("model").manifest.parents == (parent.id,)
    both = CliRunner().invoke(app, [*base, "train", "--defaults", "--tuned-model", str(run.id)])
    assert both.exit_code == 1
    assert "give one of --params, --tuned-model and --defaults" in " ".join(both.output.split())


def test_a_fresh_study_starts_from_the_model_defaults_with_real_sizes(tmp_path: Path) -> None:
    """Trial 0 takes the [model] hyperparameters that lie inside the search space (the sampler draws the
    rest); the study records sizes by value (as optuna-dashboard shows them), not as exponents."""
    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))
    config = _config(**{"model.hidden_size": 8, "model.batch_size": 16, "model.learning_rate": 0.003})
    run = run_model_tuning(store, parent, config, trials=1)
    first = run.manifest.summary.trials[0].params
    assert (first.hidden_size, first.batch_size, first.learning_rate) == (8, 16, 0.003)
    assert (first.lstm_activation, first.optimizer, first.dropout) == ("tanh", "adam", 0.2)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(run.file(STUDY_FILE))))
    study = optuna.load_study(study_name=run.manifest.summary.study_name, storage=storage)
    assert {"hidden_size", "fc_size", "batch_size"} <= set(study.trials[0].params)
    assert study.trials[0].params["hidden_size"] == 8
    assert study.metric_names == ["validation AUROC"]


def _params(run: Any) -> list[Any]:
    return [t.params for t in run.manifest.summary.trials if t.state != "interrupted"]


def test_an_interrupted_and_resumed_study_proposes_what_an_uninterrupted_one_proposes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C inside trial 3, then --resume: the interrupted trial is re-run first and not counted, and the
    trials' parameters equal those of one uninterrupted study with the same seed."""
    from lstm_adv import tune_model

    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))
    whole = run_model_tuning(store, parent, _config(), trials=7)

    original, calls = tune_model.fit_model, []

    def interrupt_the_fourth(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(tune_model, "fit_model", interrupt_the_fourth)
    first = run_model_tuning(store, parent, _config(), trials=7)
    assert first.manifest.status == "interrupted"
    assert [t.state for t in first.manifest.summary.trials][3] == "interrupted"
    assert first.manifest.summary.states.get("interrupted") == 1
    resumed = run_model_tuning(store, None, _config(), trials=4, resume=first)
    trials = resumed.manifest.summary.trials
    assert [t.number for t in trials] == list(range(8))
    assert trials[4].params == trials[3].params  # the re-run of the interrupted trial
    assert _params(resumed) == _params(whole)


def test_cli_tune_model_on_a_full_disk_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while a trial saves its weights: one error line, exit 1, no tuning run and no temporary folder."""
    from typer.testing import CliRunner

    from lstm_adv.cli import app

    store = RunStore(tmp_path / "runs")
    parent = features_run(store, tiny_feature_matrix(40))
    config = tmp_path / "tiny.toml"
    config.write_text('[model]\ndevice = "cpu"\n[tune_model]\nepochs_per_trial = 1\nhidden_size_log2 = [2, 2]\n')
    monkeypatch.setattr(Path, "write_bytes", full_disk)
    base = ["--home", str(tmp_path), "--config", str(config)]
    result = CliRunner().invoke(app, [*base, "tune-model", "--data", str(parent.id), "--trials", "2"])
    assert result.exit_code == 1
    assert_one_full_disk_line(result.output, "tune-model", tmp_path)
    assert store.list("tune-model") == []


SLOW_TRIALS = {
    **TINY,
    "tune_model.epochs_per_trial": 10,
    "tune_model.pruner_startup_trials": 100,  # every trial trains to its end: about half a second
}


def _toml(settings: dict[str, Any]) -> str:
    sections: dict[str, list[str]] = {}
    for key, value in settings.items():
        section, name = key.split(".")
        sections.setdefault(section, []).append(f"{name} = {json.dumps(value)}")
    return "".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in sections.items())


def _wait_for(condition: Any, *, timeout_s: float, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_tune_model_with_one_line_and_exit_code_130_and_resume_continues(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A real Ctrl-C or SIGTERM to `lstm-adv tune-model` after its first trial: exit code 130, one line naming the
    run to resume, and resuming it proposes what one uninterrupted study with the same seed proposes."""
    store = RunStore(tmp_path / "runs")
    parent = features_run(store, tiny_feature_matrix(200))
    config_file = tmp_path / "slow.toml"
    config_file.write_text(_toml(SLOW_TRIALS))
    command = ["--home", str(tmp_path), "--config", str(config_file), "tune-model", "--data", str(parent.id)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from lstm_adv.cli import main; main()", *command, "--trials", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    first_weights = store.root / ".tmp"
    _wait_for(lambda: any(first_weights.glob("*/trials/0/model.pt")), timeout_s=120, process=process)
    time.sleep(0.2)  # into the second trial
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert len(store.list("tune-model")) == 1, output
    (run,) = store.list("tune-model")
    finished = run.manifest.summary.states.get("complete", 0)
    assert process.returncode == 130
    assert run.manifest.status == "interrupted"
    trials = "1 trial" if finished == 1 else f"{finished} trials"
    left = 100 - finished
    assert output == (
        f"interrupted after {trials}; resume with `lstm-adv tune-model --resume {run.id}` (runs the {left} trials "
        "left of 100)\n"
    )
    assert 1 <= finished <= 6
    assert run.manifest.summary.budget == 100
    config = load_config(config_file)
    resumed = run_model_tuning(store, None, config, trials=3, resume=run)
    whole = run_model_tuning(store, parent, config, trials=finished + 3)
    assert resumed.manifest.status == "complete"
    assert _params(resumed) == _params(whole)


def test_a_resume_without_trials_finishes_the_interrupted_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study of 5 trials interrupted in its fourth, resumed without --trials, runs the rest of its 5 (not
    tune_model.trials more) and equals the uninterrupted study trial for trial."""
    from lstm_adv import tune_model

    store = RunStore(tmp_path)
    parent = features_run(store, tiny_feature_matrix(60))
    config = _config(**{"tune_model.trials": 50})
    whole = run_model_tuning(store, parent, config, trials=5)
    original, calls = tune_model.fit_model, []

    def interrupt_the_fourth(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(tune_model, "fit_model", interrupt_the_fourth)
    first = run_model_tuning(store, parent, config, trials=5)
    monkeypatch.setattr(tune_model, "fit_model", original)
    assert first.manifest.summary.budget == 5
    resumed = run_model_tuning(store, None, config, resume=first)
    assert [t.state for t in resumed.manifest.summary.trials].count("interrupted") == 1
    assert _params(resumed) == _params(whole)
