"""Model tuning stage: an Optuna study (TPE sampler, median pruner on per-epoch validation AUROC).

Design of a tuning run (kind ``tune-model``):

- The study is named by the run id and lives in ``study.journal`` (an Optuna journal file) inside
  the run folder, or in a database given by ``--storage`` (``postgresql://…``), where any number of
  processes on any number of machines can work on it.
- While tuning, the run's folder is the run store's temporary folder; it is published when the
  trials finish. Ctrl-C publishes it too, with status ``interrupted``: finished trials are kept.
- ``--resume <id>`` copies the old run's journal and trial weights into a new run (parent: the old
  run) and continues the same study; with a database storage it reconnects to the same study.
- Every completed trial's weights and hyperparameters are kept under ``trials/<number>/`` so that
  an attack can use a trial directly; the summary lists every trial with its parameters.
- ``workers`` > 1 starts extra processes (spawned) sharing the storage; the study stops once it
  holds the requested number of trials (workers may overshoot by at most one trial each).
- Only the train and validation splits are used: the test split is never seen by tuning.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import optuna
import torch

from lstm_adv import metrics, studies
from lstm_adv.config import Config, ModelConfig, TuneModelConfig
from lstm_adv.domain.errors import ConfigError, RunKindError
from lstm_adv.domain.feature_matrix import FeatureMatrix
from lstm_adv.domain.run_id import a_kind
from lstm_adv.models import Hyperparameters
from lstm_adv.results import artifacts
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.converter import structure
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import ModelTrial, TuneModelSummary
from lstm_adv.studies import StudyPlace, TrialCallback
from lstm_adv.train import SplitIndices, check_split
from lstm_adv.training_loop import (
    EpochRecord,
    FitResult,
    SplitTensors,
    fit_model,
    predict_logits,
    probabilities,
    resolve_device,
)

log = logging.getLogger(__name__)


def suggest_params(trial: optuna.Trial, tune: TuneModelConfig, model: ModelConfig) -> Hyperparameters:
    """One point of the model search space; sizes are powers of two, the learning rate log-uniform.

    Sizes are drawn by value among the powers of two of their ``*_log2`` ranges, so a study (and
    optuna-dashboard) records the real sizes.
    """
    return Hyperparameters(
        hidden_size=trial.suggest_categorical("hidden_size", _powers(tune.hidden_size_log2)),
        num_layers=model.num_layers,
        lstm_activation=trial.suggest_categorical("lstm_activation", list(tune.lstm_activations)),
        dropout=trial.suggest_float("dropout", *tune.dropout),
        fc_size=trial.suggest_categorical("fc_size", _powers(tune.fc_size_log2)),
        fc_activation=trial.suggest_categorical("fc_activation", list(tune.fc_activations)),
        optimizer=trial.suggest_categorical("optimizer", list(tune.optimizers)),
        learning_rate=trial.suggest_float("learning_rate", *tune.learning_rate, log=True),
        batch_size=trial.suggest_categorical("batch_size", _powers(tune.batch_size_log2)),
    )


def _powers(exponents: tuple[int, int]) -> list[int]:
    return [2**k for k in range(exponents[0], exponents[1] + 1)]


def default_trial(tune: TuneModelConfig, model: ModelConfig) -> dict[str, Any] | None:
    """The ``[model]`` hyperparameters as the first trial (those inside the search space; the sampler
    draws the rest), when enabled.

    A short search then starts from one known-usable model (bounded activation, Adam, a moderate
    learning rate) that TPE improves on, instead of depending on random first draws.
    """
    if not tune.start_from_defaults:
        return None
    inside = {
        "hidden_size": model.hidden_size in _powers(tune.hidden_size_log2),
        "lstm_activation": model.lstm_activation in tune.lstm_activations,
        "dropout": tune.dropout[0] <= model.dropout <= tune.dropout[1],
        "fc_size": model.fc_size in _powers(tune.fc_size_log2),
        "fc_activation": model.fc_activation in tune.fc_activations,
        "optimizer": model.optimizer in tune.optimizers,
        "learning_rate": tune.learning_rate[0] <= model.learning_rate <= tune.learning_rate[1],
        "batch_size": model.batch_size in _powers(tune.batch_size_log2),
    }
    start = {name: getattr(model, name) for name, ok in inside.items() if ok}
    return start or None


def run_model_tuning(
    store: RunStore,
    features_run: Run | None,
    config: Config,
    *,
    trials: int | None = None,
    storage: str | None = None,
    resume: Run | None = None,
    workers: int = 1,
    on_trial: TrialCallback | None = None,
) -> Run:
    """Run (or continue) a study over the model search space and write a tuning run.

    ``trials`` new trials are run (default ``tune_model.trials``; a resumed study without ``trials``: what is
    left of the interrupted study's budget) by ``workers`` processes. Returns the run, with status
    ``interrupted`` after Ctrl-C (finished trials kept).
    """
    n_trials = config.tune_model.trials if trials is None else trials
    features_run = _check_inputs(store, features_run, config, n_trials, workers, resume)
    features = artifacts.load_features(features_run)
    check_split(features, SplitIndices.holdout(features), origin=f"features run {features_run.id}")
    previous = resume.summary_as(TuneModelSummary) if resume is not None else None
    url = studies.resumed_url(storage, resume, previous.storage if previous else None)
    if url is not None:
        studies.open_database_storage(url, config.tune_model.storage_timeout_s)  # fail before a run exists
    parents = [features_run.id, *([resume.id] if resume else [])]
    with store.create("tune-model", parents=parents, config=config_as_dict(config)) as writer:
        place = studies.study_place(
            writer.path, str(writer.id), url, resume, study_name=previous.study_name if previous else None
        )
        if resume is not None:
            artifacts.copy_stored(resume, artifacts.TRIALS_DIR, writer.path)
        job = _Job(
            place,
            features_run.path / artifacts.FEATURES_FILE,
            config_as_dict(config),
            writer.path / artifacts.TRIALS_DIR,
        )
        study = job.study(worker=0)
        study.set_user_attr("features_run", str(features_run.id))
        start = default_trial(config.tune_model, config.model)
        if not study.trials and start is not None:
            study.enqueue_trial(start)
        target = studies.budget(study, n_trials, previous.budget if previous is not None and trials is None else None)
        status = _optimize_all(job, study, target, workers, on_trial)
        writer.summary = attrs.evolve(study_summary(study, place, features_run), budget=target)
        writer.commit(status=status)
    assert writer.committed is not None
    return writer.committed


def _check_inputs(
    store: RunStore, features_run: Run | None, config: Config, n_trials: int, workers: int, resume: Run | None
) -> Run:
    if n_trials < 1 or workers < 1:
        raise ConfigError(f"--trials and --workers must be >= 1; got {n_trials} and {workers}")
    if resume is not None:
        if resume.kind != "tune-model":
            raise RunKindError(f"run {resume.id} is {a_kind(resume.kind)} run; --resume needs a tune-model run")
        previous = store.get(str(resume.summary_as(TuneModelSummary).features_run), kind="features")
        if features_run is not None and features_run.id != previous.id:
            raise ConfigError(
                f"tuning run {resume.id} tuned on features run {previous.id}, not {features_run.id}; "
                "leave out --data when resuming"
            )
        return previous
    if features_run is None:
        raise ConfigError("no features run given; pass --data <id>")
    return features_run


@attrs.frozen
class _Job:
    """Everything a worker process needs, as picklable plain values."""

    place: StudyPlace
    features_file: Path
    config: dict[str, Any]
    trials_dir: Path

    def study(self, worker: int) -> optuna.Study:
        """The study, opened by worker ``worker`` (each worker seeds its sampler differently).

        Only the main worker (0) prepares a resumed study; the others join it as it is.
        """
        cfg = structure(self.config, Config).tune_model
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_epochs
        )
        place = self.place if worker == 0 else attrs.evolve(self.place, resumed=False)
        return studies.open_study(
            place,
            timeout_s=cfg.storage_timeout_s,
            seed=cfg.seed + worker,
            pruner=pruner,
            metric_names=("validation AUROC",),
        )


def _optimize_all(job: _Job, study: optuna.Study, target: int, workers: int, on_trial: TrialCallback | None) -> str:
    """Run the main worker here and ``workers - 1`` spawned ones; ``interrupted`` after Ctrl-C."""
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    ready = [context.Event() for _ in range(1, workers)]
    processes = [
        context.Process(target=_worker_main, args=(job, i + 1, target, threads, event, optuna.logging.get_verbosity()))
        for i, event in enumerate(ready)
    ]
    for process in processes:
        process.start()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads if workers > 1 else previous_threads)
    status = "interrupted"
    try:
        _wait_until_ready(processes, ready)
        status = _optimize(job, study, target, on_trial)
    finally:
        torch.set_num_threads(previous_threads)
        for process in processes:
            if status != "complete" and process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGINT)  # stopped early (SIGTERM reaches only this process): stop them too
            process.join()
    return status


def _wait_until_ready(processes: Sequence[Any], ready: Sequence[Any]) -> None:
    """Start together: wait until every spawned worker has opened the study (or died trying)."""
    for process, event in zip(processes, ready, strict=True):
        while not event.wait(0.2) and process.is_alive():
            pass
        if not event.is_set():
            log.warning("tuning worker %s exited before it started (exit code %s)", process.name, process.exitcode)


def _worker_main(job: _Job, index: int, target: int, threads: int, ready: Any, verbosity: int) -> None:
    """Entry point of a spawned worker process."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(verbosity)
    with contextlib.suppress(KeyboardInterrupt):  # the main process reports the interruption
        study = job.study(worker=index)
        ready.set()
        _optimize(job, study, target, None)


def _optimize(job: _Job, study: optuna.Study, target: int, on_trial: TrialCallback | None) -> str:
    """Trials until the study holds ``target`` of them; ``interrupted`` after Ctrl-C."""
    config = structure(job.config, Config)
    features = FeatureMatrix.from_npz(job.features_file)
    objective = _Objective(features, config, job.trials_dir)
    callbacks: list[TrialCallback] = [studies.stop_at(target)]
    if on_trial is not None:
        callbacks.append(on_trial)
    return studies.optimize(
        study, objective, n_trials=target - studies.counted(study), callbacks=callbacks, what="model tuning"
    )


class _Objective:
    """One trial: train on the train split with the trial's hyperparameters, report validation AUROC per epoch."""

    def __init__(self, features: FeatureMatrix, config: Config, trials_dir: Path) -> None:
        device = resolve_device(config.model.device)
        split = SplitIndices.holdout(features)
        self.train = SplitTensors.from_arrays(features.values[split.train], features.labels[split.train], device)
        self.validation = SplitTensors.from_arrays(
            features.values[split.validation], features.labels[split.validation], device
        )
        self.config = config
        self.trials_dir = trials_dir

    def __call__(self, trial: optuna.Trial) -> float:
        params = suggest_params(trial, self.config.tune_model, self.config.model)
        trial.set_user_attr("params", params.to_dict())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")

        def report(record: EpochRecord) -> None:
            trial.report(record.val_auroc, record.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation AUROC {record.val_auroc:.4f} at epoch {record.epoch}")

        model_config = attrs.evolve(self.config.model, max_epochs=self.config.tune_model.epochs_per_trial)
        fit = fit_model(self.train, self.validation, params, model_config, on_epoch=report)
        value = fit.history[fit.best_epoch - 1].val_auroc
        saturated = self._saturation(fit)
        if saturated is not None:
            trial.set_user_attr("saturated", saturated)
            raise optuna.TrialPruned(f"saturated model: {saturated}")
        artifacts.save_model(self.trials_dir / str(trial.number), fit.model)
        trial.set_user_attr("best_epoch", fit.best_epoch)
        trial.set_user_attr("epochs_run", len(fit.history))
        return value

    def _saturation(self, fit: FitResult) -> str | None:
        """Why the trial's best-epoch model is saturated (see :func:`metrics.saturation`), or None."""
        p = probabilities(predict_logits(fit.model, self.validation.x, self.config.model.eval_batch_size))
        labels = self.validation.y.cpu().numpy()
        return metrics.saturation(p, metrics.decision_rule(self.config.model.decision, labels, p).threshold)


def study_summary(study: optuna.Study, place: StudyPlace, features_run: Run) -> TuneModelSummary:
    """The tuning run's summary: counts by state, the best trial, and every trial's parameters."""
    trials = study.get_trials(deepcopy=False)
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(completed, key=lambda t: t.value if t.value is not None else float("-inf"), default=None)
    return TuneModelSummary(
        study_name=place.name,
        storage=place.shown,
        features_run=features_run.id,
        objective="validation AUROC (maximize)",
        n_trials=len(trials),
        states=studies.state_counts(trials),
        best=None if best is None else _trial_entry(best),
        trials=tuple(_trial_entry(t) for t in trials),
    )


def _trial_entry(trial: optuna.trial.FrozenTrial) -> ModelTrial:
    params = trial.user_attrs.get("params")
    return ModelTrial(
        number=trial.number,
        state=studies.trial_state(trial),
        value=trial.value,
        params=Hyperparameters.from_mapping(params, origin=f"trial {trial.number}") if params else None,
        best_epoch=trial.user_attrs.get("best_epoch"),
        last_epoch=trial.last_step,
        worker=trial.user_attrs.get("worker"),
    )
