"""Attack tuning stage: Optuna over κ, λ, step size, method and batch size of the L1 attack.

Design of a tuning run (kind ``tune-attack``, parents: the model run, plus the run it resumes):

- Every trial attacks the same seeded subset of the training split (``tune_attack.subset_size``
  rows drawn with ``subset_seed``; the test split is never seen) in ``tune_attack.chunks`` chunks,
  and reports the running objective after each chunk, so the median pruner stops poor trials early.
- Objectives (maximized; summed over the best example of each successful sample; n = changed cells,
  N = 48·19): ``sparsity`` Σ(1 − n/N), ``sparse_small`` Σ sparsity/‖δ‖₁, ``sparse_small_max``
  Σ sparsity/max|δ|, ``max_num_nonzero_perts`` #{n ≤ m} with m = ``tune_attack.max_nonzero``.
- The study is named by the run id and kept in ``study.journal`` inside the run, or in a database
  (``--storage postgresql://…``) shared by many workers. Ctrl-C publishes the run as ``interrupted``
  with its finished trials; ``resume=<run>`` continues the same study in a new run.
- ``best_params.json`` holds the best trial's settings (what ``lstm-adv attack --tuned`` uses).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import optuna

from lstm_adv.attack import BEST_PARAMS_FILE, AttackTarget, attack_mask, resolve_target, target_of
from lstm_adv.attacks import METHODS, L1Attack, L1Settings
from lstm_adv.config import Config, TuneAttackConfig
from lstm_adv.domain.errors import ConfigError, DataError, RunKindError
from lstm_adv.domain.perturbation import N_FEATURES, N_HOURS, AttackBatchResult
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.store import Run, RunStore
from lstm_adv.train import jsonable, load_features, write_json
from lstm_adv.training_loop import resolve_device
from lstm_adv.tune_model import FILE_STORAGE, STUDY_FILE, StudyPlace, open_database_storage

log = logging.getLogger(__name__)

N_CELLS = N_HOURS * N_FEATURES
OBJECTIVES = ("sparsity", "sparse_small", "sparse_small_max", "max_num_nonzero_perts")
TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


# --- objectives -------------------------------------------------------------------------------------


def objective_value(result: AttackBatchResult, objective: str, *, max_nonzero: int) -> float:
    """The objective summed over the best example of each successful sample (0 without successes)."""
    found = result.found
    delta = result.best_delta[found].astype(np.float64)
    n = np.count_nonzero(delta, axis=(1, 2))
    sparsity = 1.0 - n / N_CELLS
    if objective == "sparsity":
        return float(sparsity.sum())
    if objective == "sparse_small":
        return float(_ratio(sparsity, np.abs(delta).sum(axis=(1, 2))).sum())
    if objective == "sparse_small_max":
        return float(_ratio(sparsity, np.abs(delta).max(axis=(1, 2), initial=0.0)).sum())
    if objective == "max_num_nonzero_perts":
        return float((n <= max_nonzero).sum())
    raise ConfigError(f"tune_attack.objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (a success always changes some cell)."""
    ratio: np.ndarray = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
    return ratio


# --- search space and subset ------------------------------------------------------------------------


def check_tuning_config(tune: TuneAttackConfig) -> None:
    """Ranges ordered, choices known, sizes positive: checked before any run is written."""
    if tune.objective not in OBJECTIVES:
        raise ConfigError(f"tune_attack.objective must be one of {', '.join(OBJECTIVES)}; got {tune.objective!r}")
    unknown = [m for m in tune.methods if m not in METHODS]
    if not tune.methods or unknown:
        raise ConfigError(f"tune_attack.methods must list some of {', '.join(METHODS)}; got {list(tune.methods)!r}")
    for name, positive in (("kappa", False), ("lam", True), ("step_size", True), ("batch_size_log2", False)):
        low, high = getattr(tune, name)
        if low > high or low < 0 or (positive and low <= 0):
            rule = "0 < low" if positive else "0 <= low"
            raise ConfigError(f"tune_attack.{name} must be [low, high] with {rule} <= high; got [{low}, {high}]")
    sizes = {"trials": tune.trials, "subset_size": tune.subset_size, "chunks": tune.chunks,
             "max_iterations": tune.max_iterations}  # fmt: skip
    for name, value in sizes.items():
        if value < 1:
            raise ConfigError(f"tune_attack.{name} must be >= 1; got {value}")
    if tune.max_nonzero < 0 or tune.pruner_startup_trials < 0 or tune.pruner_warmup_steps < 0:
        raise ConfigError("tune_attack.max_nonzero and the pruner settings must be >= 0")


def suggest_settings(trial: optuna.Trial, tune: TuneAttackConfig) -> tuple[L1Settings, int]:
    """One point of the attack search space: L1 settings and a batch size (a power of two)."""
    settings = L1Settings(
        kappa=trial.suggest_float("kappa", *tune.kappa),
        lam=trial.suggest_float("lam", *tune.lam, log=True),
        step_size=trial.suggest_float("step_size", *tune.step_size, log=True),
        method=trial.suggest_categorical("method", list(tune.methods)),
        max_iterations=tune.max_iterations,
    )
    return settings, 2 ** trial.suggest_int("batch_size_log2", *tune.batch_size_log2)


def tuning_subset(train_rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` rows of the training split drawn with ``seed`` (all when fewer), ascending. Shape: (≤ size,)."""
    if train_rows.size <= size:
        return np.sort(train_rows)
    return np.sort(np.random.default_rng(seed).choice(train_rows, size=size, replace=False))


# --- the tuning run ---------------------------------------------------------------------------------


def run_attack_tuning(
    store: RunStore,
    model_run: Run | None,
    config: Config,
    *,
    trial: int | None = None,
    trials: int | None = None,
    objective: str | None = None,
    storage: str | None = None,
    resume: Run | None = None,
    on_trial: TrialCallback | None = None,
) -> Run:
    """Run (or continue) a study of the attack's settings against a model and write a tune-attack run.

    ``model_run``: a model run, or a tune-model run with ``trial`` (default: its best trial).
    ``trials`` new trials are run (default ``tune_attack.trials``). Returns the run, with status
    ``interrupted`` after Ctrl-C (finished trials kept). Bad input writes no run.
    """
    config, target, url = _check_inputs(store, model_run, config, trial, trials, objective, storage, resume)
    tune = config.tune_attack
    features = load_features(target.features_run)
    rows = tuning_subset(features.indices("train"), tune.subset_size, tune.subset_seed)
    if rows.size == 0:
        raise DataError(f"features run {target.features_run.id}: the train split is empty; nothing to tune on")
    parents = [target.model_run.id, *([resume.id] if resume else [])]
    with store.create("tune-attack", parents=parents, config=config_as_dict(config)) as writer:
        place = StudyPlace(name=str(resume.manifest.summary["study_name"]) if resume else str(writer.id), url=url,
                           journal=None if url else writer.path / STUDY_FILE)  # fmt: skip
        if resume is not None and url is None:
            shutil.copyfile(resume.file(STUDY_FILE), writer.path / STUDY_FILE)
        study = _study(place, tune)
        study.set_user_attr("model_run", str(target.model_run.id))
        objective_fn = _Objective(target, features.values[rows], features.labels[rows], rows, config)
        status = _optimize(study, objective_fn, n_trials=trials or tune.trials, on_trial=on_trial)
        writer.summary.update(tuning_summary(study, place, target, tune, rows.size))
        best = writer.summary["best"]
        if best is not None:
            write_json(writer.file(BEST_PARAMS_FILE), best["settings"])
        writer.commit(status=status)
    assert writer.committed is not None
    return writer.committed


def _check_inputs(
    store: RunStore, model_run: Run | None, config: Config, trial: int | None, trials: int | None,
    objective: str | None, storage: str | None, resume: Run | None,
) -> tuple[Config, AttackTarget, str | None]:  # fmt: skip
    """The effective config, the target and the storage URL; every check before a run is written."""
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be >= 1; got {trials}")
    if resume is not None:
        config, target = _resumed(store, resume, model_run, config, objective)
    else:
        if model_run is None:
            raise ConfigError("no model run given; pass --model <id>")
        target = resolve_target(store, model_run, trial)
        if objective is not None:
            config = _with_objective(config, objective)
    check_tuning_config(config.tune_attack)
    attack_mask(config.attack)
    resolve_device(config.attack.device)
    url = storage
    if url is None and resume is not None and resume.manifest.summary.get("storage", FILE_STORAGE) != FILE_STORAGE:
        url = str(resume.manifest.summary["storage"])
        if "***" in url:
            raise ConfigError(f"tune-attack run {resume.id} used the storage {url}; pass --storage with its password")
    if url is not None:
        open_database_storage(url, config.tune_attack.storage_timeout_s)  # fail before a run exists
    return config, target, url


def _with_objective(config: Config, objective: str) -> Config:
    return attrs.evolve(config, tune_attack=attrs.evolve(config.tune_attack, objective=objective))


def _resumed(
    store: RunStore, resume: Run, model_run: Run | None, config: Config, objective: str | None
) -> tuple[Config, AttackTarget]:
    if resume.kind != "tune-attack":
        raise RunKindError(f"run {resume.id} is a {resume.kind} run; --resume needs a tune-attack run")
    target = target_of(store, resume)
    if model_run is not None and model_run.id != target.model_run.id:
        raise ConfigError(f"tune-attack run {resume.id} tuned against run {target.model_run.id}, not {model_run.id}; "
                          "leave out --model when resuming")  # fmt: skip
    old = str(resume.manifest.summary["objective"])
    if objective is not None and objective != old:
        raise ConfigError(f"tune-attack run {resume.id} maximizes {old!r}; a resumed study cannot change its "
                          f"objective to {objective!r}")  # fmt: skip
    return _with_objective(config, old), target


def _study(place: StudyPlace, tune: TuneAttackConfig) -> optuna.Study:
    pruner = optuna.pruners.MedianPruner(n_startup_trials=tune.pruner_startup_trials,
                                         n_warmup_steps=tune.pruner_warmup_steps)  # fmt: skip
    study = optuna.create_study(study_name=place.name, storage=place.storage(tune.storage_timeout_s),
                                sampler=optuna.samplers.TPESampler(seed=tune.seed), pruner=pruner,
                                direction="maximize", load_if_exists=True)  # fmt: skip
    start = default_trial(tune)
    if not study.trials and start is not None:
        study.enqueue_trial(start)
    return study


def default_trial(tune: TuneAttackConfig) -> dict[str, Any] | None:
    """The attack's default settings as a first trial, when enabled and inside the search space.

    Random first trials often draw a λ so large that nothing flips; starting from the defaults gives
    even a short search a working baseline that TPE then improves on.
    """
    if not tune.start_from_defaults:
        return None
    defaults = L1Settings()
    start: dict[str, Any] = {
        "kappa": defaults.kappa, "lam": defaults.lam, "step_size": defaults.step_size, "method": defaults.method,
        "batch_size_log2": min(max(6, tune.batch_size_log2[0]), tune.batch_size_log2[1]),
    }  # fmt: skip
    inside = (
        tune.kappa[0] <= defaults.kappa <= tune.kappa[1] and tune.lam[0] <= defaults.lam <= tune.lam[1]
        and tune.step_size[0] <= defaults.step_size <= tune.step_size[1] and defaults.method in tune.methods
    )  # fmt: skip
    return start if inside else None


def _optimize(study: optuna.Study, objective: _Objective, *, n_trials: int, on_trial: TrialCallback | None) -> str:
    try:
        study.optimize(objective, n_trials=n_trials, callbacks=[on_trial] if on_trial else None, catch=())
    except KeyboardInterrupt:
        log.warning("attack tuning interrupted: finished trials are kept; continue with --resume")
        return "interrupted"
    return "complete"


class _Objective:
    """One trial: attack the subset chunk by chunk, reporting the running objective after each chunk."""

    def __init__(self, target: AttackTarget, x: np.ndarray, y: np.ndarray, rows: np.ndarray, config: Config) -> None:
        self.device = resolve_device(config.attack.device)
        self.model = target.load_model(self.device)
        self.mask = attack_mask(config.attack)
        self.config = config
        self.chunks = np.array_split(np.arange(rows.size), min(config.tune_attack.chunks, rows.size))
        self.x, self.y, self.rows = x, y, rows

    def __call__(self, trial: optuna.Trial) -> float:
        tune = self.config.tune_attack
        settings, batch_size = suggest_settings(trial, tune)
        trial.set_user_attr("settings", settings_dict(settings, batch_size))
        attack = L1Attack(self.model, settings, device=self.device, mask=self.mask, batch_size=batch_size,
                          include_misclassified=self.config.attack.include_misclassified)  # fmt: skip
        total, successes = 0.0, 0
        for step, chunk in enumerate(self.chunks):
            result = attack.run(self.x[chunk], self.y[chunk], sample_index=self.rows[chunk])
            total += objective_value(result, tune.objective, max_nonzero=tune.max_nonzero)
            successes += int(result.found.sum())
            trial.report(total, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"running {tune.objective} {total:.4g} after chunk {step + 1}")
        trial.set_user_attr("successes", successes)
        return total


def settings_dict(settings: L1Settings, batch_size: int) -> dict[str, Any]:
    """The tuned settings as stored (``best_params.json``)."""
    return {"kappa": settings.kappa, "lam": settings.lam, "step_size": settings.step_size,
            "method": settings.method, "batch_size": batch_size}  # fmt: skip


def tuning_summary(
    study: optuna.Study, place: StudyPlace, target: AttackTarget, tune: TuneAttackConfig, subset_size: int
) -> dict[str, Any]:
    """The run summary: objective, subset, counts by state, the best trial and every trial."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name.lower() for t in trials]
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    best = max(completed, key=lambda t: float(t.value or 0.0), default=None)
    summary: dict[str, Any] = jsonable({
        "study_name": place.name, "storage": place.shown, **target.describe(),
        "objective": tune.objective, "max_nonzero": tune.max_nonzero,
        "subset_size": subset_size, "subset_seed": tune.subset_seed, "chunks": tune.chunks,
        "max_iterations": tune.max_iterations, "n_trials": len(trials),
        "states": {state: states.count(state) for state in sorted(set(states))},
        "n_pruned": states.count("pruned"),
        "best": None if best is None else _entry(best),
        "trials": [_entry(t) for t in trials],
    })  # fmt: skip
    return summary


def _entry(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
            "settings": trial.user_attrs.get("settings"), "successes": trial.user_attrs.get("successes"),
            "last_step": trial.last_step}  # fmt: skip
