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
import shutil
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import optuna
import torch

from lstm_adv.config import Config, ModelConfig, TuneModelConfig
from lstm_adv.domain.errors import ConfigError, DatabaseError, RunKindError
from lstm_adv.domain.feature_matrix import FeatureMatrix
from lstm_adv.models import ACTIVATIONS, OPTIMIZERS, Hyperparameters
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.converter import structure
from lstm_adv.results.store import Run, RunStore
from lstm_adv.train import (
    FEATURES_FILE,
    MODEL_FILE,
    PARAMS_FILE,
    SplitIndices,
    check_split,
    jsonable,
    load_features,
    write_json,
)
from lstm_adv.training_loop import EpochRecord, SplitTensors, check_training_config, fit_model, resolve_device

log = logging.getLogger(__name__)

STUDY_FILE = "study.journal"
TRIALS_DIR = "trials"
FILE_STORAGE = "file"
TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@attrs.frozen
class StudyPlace:
    """Where the study lives: ``url`` for a database, else the journal file ``journal``."""

    name: str
    url: str | None
    journal: Path | None

    @property
    def shown(self) -> str:
        """The storage as stored in the summary (``file`` or the URL without its password)."""
        return FILE_STORAGE if self.url is None else redact_url(self.url)

    def storage(self, timeout_s: int) -> optuna.storages.BaseStorage:
        """Open the storage (a journal file, or a database checked to be reachable)."""
        if self.url is not None:
            return open_database_storage(self.url, timeout_s)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        assert self.journal is not None
        return JournalStorage(JournalFileBackend(str(self.journal)))


def check_search_space(tune: TuneModelConfig) -> None:
    """Every range must be ordered and every choice known, before any run is written."""
    choices = (("lstm_activations", ACTIVATIONS), ("fc_activations", ACTIVATIONS), ("optimizers", OPTIMIZERS))
    for name, options in choices:
        chosen = getattr(tune, name)
        unknown = [value for value in chosen if value not in options]
        if not chosen or unknown:
            raise ConfigError(f"tune_model.{name} must list some of {', '.join(options)}; got {list(chosen)!r}")
    for name in ("hidden_size_log2", "fc_size_log2", "batch_size_log2", "dropout", "learning_rate"):
        low, high = getattr(tune, name)
        if low > high or low < 0:
            raise ConfigError(f"tune_model.{name} must be [low, high] with 0 <= low <= high; got [{low}, {high}]")
    if tune.learning_rate[0] <= 0 or tune.dropout[1] >= 1:
        raise ConfigError("tune_model.learning_rate must be > 0 and tune_model.dropout below 1")
    if tune.epochs_per_trial < 1 or tune.pruner_startup_trials < 0 or tune.pruner_warmup_epochs < 0:
        raise ConfigError("tune_model.epochs_per_trial must be >= 1 and the pruner settings >= 0")


def suggest_params(trial: optuna.Trial, tune: TuneModelConfig, model: ModelConfig) -> Hyperparameters:
    """One point of the model search space; sizes are powers of two, the learning rate log-uniform."""
    return Hyperparameters(
        hidden_size=2 ** trial.suggest_int("hidden_size_log2", *tune.hidden_size_log2),
        num_layers=model.num_layers,
        lstm_activation=trial.suggest_categorical("lstm_activation", list(tune.lstm_activations)),
        dropout=trial.suggest_float("dropout", *tune.dropout),
        fc_size=2 ** trial.suggest_int("fc_size_log2", *tune.fc_size_log2),
        fc_activation=trial.suggest_categorical("fc_activation", list(tune.fc_activations)),
        optimizer=trial.suggest_categorical("optimizer", list(tune.optimizers)),
        learning_rate=trial.suggest_float("learning_rate", *tune.learning_rate, log=True),
        batch_size=2 ** trial.suggest_int("batch_size_log2", *tune.batch_size_log2),
    )


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def database_url(url: str) -> str:
    """A SQLAlchemy URL: plain ``postgresql://`` is given the installed psycopg (3) driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def open_database_storage(url: str, timeout_s: int) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage, connecting once; an unreachable or malformed URL is a :class:`DatabaseError`."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    url = database_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": timeout_s}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except (SQLAlchemyError, ArgumentError, ImportError, ValueError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseError(
            f"cannot use the Optuna storage {redact_url(url)}: {reason}; check the URL and that the server is "
            "running, or leave out --storage to keep the study in a file inside the run"
        ) from None


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

    ``trials`` new trials are run (default ``tune_model.trials``) by ``workers`` processes. Returns
    the run, with status ``interrupted`` after Ctrl-C (finished trials kept).
    """
    n_trials = config.tune_model.trials if trials is None else trials
    features_run = _check_inputs(store, features_run, config, n_trials, workers, resume)
    features = load_features(features_run)
    check_split(features, SplitIndices.holdout(features), origin=f"features run {features_run.id}")
    url = _storage_url(storage, resume)
    if url is not None:
        open_database_storage(url, config.tune_model.storage_timeout_s)  # fail before a run exists
    parents = [features_run.id, *([resume.id] if resume else [])]
    with store.create("tune-model", parents=parents, config=config_as_dict(config)) as writer:
        place = StudyPlace(
            name=str(resume.manifest.summary["study_name"]) if resume else str(writer.id),
            url=url,
            journal=None if url else writer.path / STUDY_FILE,
        )
        if resume is not None:
            _carry_over(resume, writer.path, place)
        job = _Job(place, features_run.path / FEATURES_FILE, config_as_dict(config), writer.path / TRIALS_DIR)
        study = job.study(worker=0)
        study.set_user_attr("features_run", str(features_run.id))
        target = len(study.trials) + n_trials
        status = _optimize_all(job, study, target, workers, on_trial)
        writer.summary.update(study_summary(study, place, features_run))
        writer.commit(status=status)
    assert writer.committed is not None
    return writer.committed


def _check_inputs(
    store: RunStore, features_run: Run | None, config: Config, n_trials: int, workers: int, resume: Run | None
) -> Run:
    if n_trials < 1 or workers < 1:
        raise ConfigError(f"--trials and --workers must be >= 1; got {n_trials} and {workers}")
    check_search_space(config.tune_model)
    check_training_config(config.model)
    if resume is not None:
        if resume.kind != "tune-model":
            raise RunKindError(f"run {resume.id} is a {resume.kind} run; --resume needs a tune-model run")
        previous = store.get(str(resume.manifest.summary["features_run"]), kind="features")
        if features_run is not None and features_run.id != previous.id:
            raise ConfigError(
                f"tuning run {resume.id} tuned on features run {previous.id}, not {features_run.id}; "
                "leave out --data when resuming"
            )
        return previous
    if features_run is None:
        raise ConfigError("no features run given; pass --data <id>")
    return features_run


def _storage_url(storage: str | None, resume: Run | None) -> str | None:
    if storage is not None:
        return storage
    if resume is None or resume.manifest.summary.get("storage", FILE_STORAGE) == FILE_STORAGE:
        return None
    shown = str(resume.manifest.summary["storage"])
    if "***" in shown:
        raise ConfigError(f"tuning run {resume.id} used the storage {shown}; pass --storage with its password")
    return shown


def _carry_over(resume: Run, folder: Path, place: StudyPlace) -> None:
    """Copy the old run's journal (file storage) and trial weights into the new run's folder."""
    if place.journal is not None:
        shutil.copyfile(resume.file(STUDY_FILE), place.journal)
    if (resume.path / TRIALS_DIR).is_dir():
        shutil.copytree(resume.path / TRIALS_DIR, folder / TRIALS_DIR)


@attrs.frozen
class _Job:
    """Everything a worker process needs, as picklable plain values."""

    place: StudyPlace
    features_file: Path
    config: dict[str, Any]
    trials_dir: Path

    def study(self, worker: int) -> optuna.Study:
        cfg = structure(self.config, Config).tune_model
        sampler = optuna.samplers.TPESampler(seed=cfg.seed + worker)
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_epochs
        )
        return optuna.create_study(
            study_name=self.place.name,
            storage=self.place.storage(cfg.storage_timeout_s),
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
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
    try:
        _wait_until_ready(processes, ready)
        _optimize(job, study, target, on_trial)
        status = "complete"
    except KeyboardInterrupt:
        log.warning("tuning interrupted: finished trials are kept; continue with --resume")
        status = "interrupted"
    finally:
        torch.set_num_threads(previous_threads)
        for process in processes:
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


def _optimize(job: _Job, study: optuna.Study, target: int, on_trial: TrialCallback | None) -> None:
    config = structure(job.config, Config)
    features = FeatureMatrix.from_npz(job.features_file)
    objective = _Objective(features, config, job.trials_dir)
    callbacks: list[TrialCallback] = [optuna.study.MaxTrialsCallback(target, states=None)]
    if on_trial is not None:
        callbacks.append(on_trial)
    remaining = target - len(study.trials)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, callbacks=callbacks, catch=())


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
        folder = self.trials_dir / str(trial.number)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(fit.model.state_dict(), folder / MODEL_FILE)
        write_json(folder / PARAMS_FILE, params.to_dict())
        trial.set_user_attr("best_epoch", fit.best_epoch)
        trial.set_user_attr("epochs_run", len(fit.history))
        return value


def study_summary(study: optuna.Study, place: StudyPlace, features_run: Run) -> dict[str, Any]:
    """The tuning run's manifest summary: counts by state, the best trial, and every trial's parameters."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name.lower() for t in trials]
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(completed, key=lambda t: t.value if t.value is not None else float("-inf"), default=None)
    summary: dict[str, Any] = jsonable({
        "study_name": place.name,
        "storage": place.shown,
        "features_run": str(features_run.id),
        "objective": "validation AUROC (maximize)",
        "n_trials": len(trials),
        "states": {state: states.count(state) for state in sorted(set(states))},
        "best": None if best is None else _trial_entry(best),
        "trials": [_trial_entry(t) for t in trials],
    })  # fmt: skip
    return summary


def _trial_entry(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "params": trial.user_attrs.get("params"),
        "best_epoch": trial.user_attrs.get("best_epoch"),
        "last_epoch": trial.last_step,
        "worker": trial.user_attrs.get("worker"),
    }


def trial_params(run: Run, number: int | None = None) -> tuple[int, Hyperparameters]:
    """The hyperparameters of trial ``number`` (default: the best completed trial) of a tuning run."""
    summary = run.manifest.summary
    if number is None:
        if not summary.get("best"):
            raise ConfigError(f"tuning run {run.id} has no completed trial; resume it with --resume {run.id}")
        number = int(summary["best"]["number"])
    entries: Sequence[dict[str, Any]] = summary.get("trials", [])
    match = [t for t in entries if t["number"] == number]
    if not match or match[0]["state"] != "complete" or not match[0]["params"]:
        done = ", ".join(str(t["number"]) for t in entries if t["state"] == "complete") or "none"
        raise ConfigError(f"tuning run {run.id} has no completed trial {number}; completed trials: {done}")
    return number, Hyperparameters.from_mapping(match[0]["params"], origin=f"tuning run {run.id} trial {number}")
