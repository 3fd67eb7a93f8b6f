"""Attack tuning stage: Optuna over κ, λ, step size and method of the sparse L1 attack.

Design of a tuning run (kind ``tune-attack``, parents: the model run, plus the run it resumes):

- Every trial attacks the same seeded subset of the training split (``tune_attack.subset_size``
  rows drawn with ``subset_seed``; the test split is never seen) at the model's decision rule, on the
  cells ``attack.cells`` allows, with ``tune_attack.max_iterations`` iterations per round of the
  attack's per-sample λ search (``attack.search_steps`` rounds).
- The search space is scale-free: λ and the step size are relative to each sample's gradient scale
  (see :mod:`lstm_adv.attacks.l1`), so the shipped ranges hold for any model. The batch size is a
  speed setting (``attack.batch_size``), not a tuned parameter: results do not depend on it.
- The default objective ``pareto`` is a multi-objective study: maximize the success rate and minimize
  the median L0 of the sparse (minimal-support) examples. The chosen trial is the Pareto trial with
  success rate ≥ ``tune_attack.min_success`` and the smallest median L0 (without one: the Pareto trial
  with the highest success rate). Single objectives (maximized; summed over the best example of each
  successful sample; n = changed cells, N = 48·19): ``sparsity`` Σ(1 − n/N), ``sparse_small``
  Σ sparsity/‖δ‖₁, ``sparse_small_max`` Σ sparsity/max|δ|, ``max_num_nonzero_perts`` #{n ≤ m} with
  m = ``tune_attack.max_nonzero``; these attack the subset in ``tune_attack.chunks`` chunks and report
  the running value, so the median pruner stops poor trials early.
- The study is named by the run id and kept in ``study.journal`` inside the run, or in a database
  (``--storage postgresql://…``) shared by many workers. Ctrl-C publishes the run as ``interrupted``
  with its finished trials; ``resume=<run>`` continues the same study in a new run.
- ``best_params.json`` holds the chosen trial's settings (what ``lstm-adv attack --tuned`` uses).
"""

from __future__ import annotations

import logging
from typing import Any, cast

import attrs
import numpy as np
import optuna

from lstm_adv import studies
from lstm_adv.attacks import L1Attack, L1Settings
from lstm_adv.config import OBJECTIVES, AttackObjective, Config, TuneAttackConfig
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import ConfigError, DataError, RunKindError
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.domain.run_id import a_kind
from lstm_adv.domain.shapes import N_CELLS
from lstm_adv.results import artifacts
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import AttackTrial, TuneAttackSummary, TunedAttackSettings
from lstm_adv.studies import StudyPlace, TrialCallback
from lstm_adv.targets import AttackSurface, AttackTarget, attack_surface, l1_attack, resolve_target, target_from
from lstm_adv.training_loop import resolve_device

log = logging.getLogger(__name__)

PARETO = "pareto"
PARETO_METRICS = ("success rate", "median L0 of sparse examples")


# --- objectives -------------------------------------------------------------------------------------


def objective_value(result: AttackBatchResult, objective: str, *, max_nonzero: int) -> float:
    """A single objective summed over the best example of each successful sample (0 without successes)."""
    found = result.found
    delta = result.variables("best")[found].astype(np.float64)
    n = np.count_nonzero(delta, axis=(1, 2))
    sparsity = 1.0 - n / (delta[0].size if delta.size else N_CELLS)
    if objective == "sparsity":
        return float(sparsity.sum())
    if objective == "sparse_small":
        return float(_ratio(sparsity, np.abs(delta).sum(axis=(1, 2))).sum())
    if objective == "sparse_small_max":
        return float(_ratio(sparsity, np.abs(delta).max(axis=(1, 2), initial=0.0)).sum())
    if objective == "max_num_nonzero_perts":
        return float((n <= max_nonzero).sum())
    raise ConfigError(f"tune_attack.objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")


def pareto_values(result: AttackBatchResult) -> tuple[float, float]:
    """(success rate, median L0 of the sparse examples in the attack's unit — altered measurements for the
    record threat; 912 without any success)."""
    l0 = result.l0("sparse")[result.found]
    return result.success_rate, float(np.median(l0)) if l0.size else float(N_CELLS)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (a success always changes some cell)."""
    ratio: np.ndarray = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
    return ratio


# --- search space and subset ------------------------------------------------------------------------


def suggest_settings(trial: optuna.Trial, config: Config) -> L1Settings:
    """One point of the (scale-free) attack search space."""
    tune = config.tune_attack
    return L1Settings(
        kappa=trial.suggest_float("kappa", *tune.kappa),
        lam=trial.suggest_float("lam", *tune.lam, log=True),
        step_size=trial.suggest_float("step_size", *tune.step_size, log=True),
        method=trial.suggest_categorical("method", list(tune.methods)),
        max_iterations=tune.max_iterations,
        search_steps=config.attack.search_steps,
        candidates=config.attack.candidates,
        swap_rounds=config.attack.swap_rounds,
        refine_rounds=config.attack.refine_rounds,
    )


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
    features = artifacts.load_features(target.features_run)
    rows = tuning_subset(features.indices("train"), tune.subset_size, tune.subset_seed)
    if rows.size == 0:
        raise DataError(f"features run {target.features_run.id}: the train split is empty; nothing to tune on")
    surface = attack_surface(config.attack, features, artifacts.feature_definitions(target.features_run).to_spec())
    previous = resume.summary_as(TuneAttackSummary) if resume is not None else None
    parents = [target.model_run.id, *([resume.id] if resume else [])]
    objective_fn = _Objective(target, surface, rows, config)
    with store.create("tune-attack", parents=parents, config=config_as_dict(config)) as writer:
        place = studies.study_place(
            writer.path, str(writer.id), url, resume, study_name=previous.study_name if previous else None
        )
        study = _study(place, tune)
        study.set_user_attr("model_run", str(target.model_run.id))
        goal = studies.budget(study, trials or tune.trials, previous.budget if previous and trials is None else None)
        status = studies.optimize(
            study,
            objective_fn,
            n_trials=max(goal - studies.counted(study), 0),
            callbacks=[on_trial] if on_trial else (),
            what="attack tuning",
        )
        summary = attrs.evolve(
            tuning_summary(study, place, target, config, rows.size, objective_fn.decision), budget=goal
        )
        writer.summary = summary
        if summary.best is not None and summary.best.settings is not None:
            artifacts.save_tuned_settings(writer.path, summary.best.settings)
        writer.commit(status=status)
    assert writer.committed is not None
    return writer.committed


def _check_inputs(
    store: RunStore,
    model_run: Run | None,
    config: Config,
    trial: int | None,
    trials: int | None,
    objective: str | None,
    storage: str | None,
    resume: Run | None,
) -> tuple[Config, AttackTarget, str | None]:
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
    shown = resume.summary_as(TuneAttackSummary).storage if resume is not None else None
    url = studies.resumed_url(storage, resume, shown)
    if url is not None:
        studies.open_database_storage(url, config.tune_attack.storage_timeout_s)  # fail before a run exists
    return config, target, url


def _with_objective(config: Config, objective: str) -> Config:
    if objective not in OBJECTIVES:
        raise ConfigError(f"tune_attack.objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
    chosen = cast(AttackObjective, objective)
    return attrs.evolve(config, tune_attack=attrs.evolve(config.tune_attack, objective=chosen))


def _resumed(
    store: RunStore, resume: Run, model_run: Run | None, config: Config, objective: str | None
) -> tuple[Config, AttackTarget]:
    if resume.kind != "tune-attack":
        raise RunKindError(f"run {resume.id} is {a_kind(resume.kind)} run; --resume needs a tune-attack run")
    summary = resume.summary_as(TuneAttackSummary)
    target = target_from(store, summary.model_run, summary.model_trial, summary.features_run)
    if model_run is not None and model_run.id != target.model_run.id:
        raise ConfigError(
            f"tune-attack run {resume.id} tuned against run {target.model_run.id}, not {model_run.id}; "
            "leave out --model when resuming"
        )
    if objective is not None and objective != summary.objective:
        raise ConfigError(
            f"tune-attack run {resume.id} optimizes {summary.objective!r}; a resumed study cannot change its "
            f"objective to {objective!r}"
        )
    return _with_objective(config, summary.objective), target


def _study(place: StudyPlace, tune: TuneAttackConfig) -> optuna.Study:
    if tune.objective == PARETO:
        study = studies.open_study(
            place,
            timeout_s=tune.storage_timeout_s,
            seed=tune.seed,
            directions=("maximize", "minimize"),
            metric_names=PARETO_METRICS,
        )
    else:
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=tune.pruner_startup_trials, n_warmup_steps=tune.pruner_warmup_steps
        )
        study = studies.open_study(
            place, timeout_s=tune.storage_timeout_s, seed=tune.seed, pruner=pruner, metric_names=(tune.objective,)
        )
    start = default_trial(tune)
    if not study.trials and start is not None:
        study.enqueue_trial(start)
    return study


def default_trial(tune: TuneAttackConfig) -> dict[str, Any] | None:
    """The attack's default settings as a first trial, when enabled and inside the search space.

    Random first trials can draw settings that flip nothing; starting from the defaults gives even a
    short search a working baseline that TPE then improves on.
    """
    if not tune.start_from_defaults:
        return None
    defaults = L1Settings()
    start: dict[str, Any] = {
        "kappa": defaults.kappa,
        "lam": defaults.lam,
        "step_size": defaults.step_size,
        "method": defaults.method,
    }
    inside = (
        tune.kappa[0] <= defaults.kappa <= tune.kappa[1]
        and tune.lam[0] <= defaults.lam <= tune.lam[1]
        and tune.step_size[0] <= defaults.step_size <= tune.step_size[1]
        and defaults.method in tune.methods
    )
    return start if inside else None


class _Objective:
    """One trial: attack the subset (by chunks for a single objective, reporting the running value)."""

    def __init__(self, target: AttackTarget, surface: AttackSurface, rows: np.ndarray, config: Config) -> None:
        self.device = resolve_device(config.attack.device)
        self.model, self.decision = target.load(surface.features, self.device)
        self.surface = surface
        self.config = config
        self.chunks = np.array_split(np.arange(rows.size), min(config.tune_attack.chunks, rows.size))
        self.rows = rows

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        tune, cfg = self.config.tune_attack, self.config.attack
        settings = suggest_settings(trial, self.config)
        trial.set_user_attr("settings", _settings_record(settings))
        attack = l1_attack(
            self.model,
            settings,
            decision=self.decision,
            surface=self.surface,
            config=cfg,
            device=self.device,
            max_batch_size=self.rows.size if tune.objective == PARETO else max(c.size for c in self.chunks),
        )
        trial.set_user_attr("batch_size", attack.batch_size)
        if tune.objective == PARETO:
            result = self._attack(attack, np.arange(self.rows.size))
            success, median_l0 = pareto_values(result)
            trial.set_user_attr("successes", int(result.found.sum()))
            trial.set_user_attr("success_rate", success)
            trial.set_user_attr("median_l0", median_l0)
            _record_passes(trial, attack.passes.forward, attack.passes.backward, int(result.attacked.sum()))
            return success, median_l0
        return self._chunked(trial, attack, tune)

    def _attack(self, attack: L1Attack, chunk: np.ndarray) -> AttackBatchResult:
        return self.surface.attack(attack, self.rows[chunk])

    def _chunked(self, trial: optuna.Trial, attack: L1Attack, tune: TuneAttackConfig) -> float:
        total, successes, parts, forward, backward = 0.0, 0, [], 0, 0
        for step, chunk in enumerate(self.chunks):
            result = self._attack(attack, chunk)
            parts.append(result)
            forward, backward = forward + attack.passes.forward, backward + attack.passes.backward
            total += objective_value(result, tune.objective, max_nonzero=tune.max_nonzero)
            successes += int(result.found.sum())
            trial.report(total, step)
            if step < len(self.chunks) - 1 and trial.should_prune():  # a finished trial is kept, not pruned
                raise optuna.TrialPruned(f"running {tune.objective} {total:.4g} after chunk {step + 1}")
        success, median_l0 = pareto_values(AttackBatchResult.concatenate(parts))
        trial.set_user_attr("successes", successes)
        trial.set_user_attr("success_rate", success)
        trial.set_user_attr("median_l0", median_l0)
        _record_passes(trial, forward, backward, sum(int(p.attacked.sum()) for p in parts))
        return total


def _record_passes(trial: optuna.Trial, forward: int, backward: int, attacked: int) -> None:
    """The trial's model passes per attacked sample (forward, backward), as user attributes."""
    trial.set_user_attr("forward_passes", forward / attacked if attacked else 0.0)
    trial.set_user_attr("backward_passes", backward / attacked if attacked else 0.0)


def _settings_record(settings: L1Settings) -> dict[str, Any]:
    """A trial's settings as a user attribute (plain data, read back by :func:`_entry`)."""
    return {"kappa": settings.kappa, "lam": settings.lam, "step_size": settings.step_size, "method": settings.method}


def _tuned(record: dict[str, Any]) -> TunedAttackSettings:
    return TunedAttackSettings(
        kappa=float(record["kappa"]),
        lam=float(record["lam"]),
        step_size=float(record["step_size"]),
        method=str(record["method"]),
    )


def choose_trial(trials: list[AttackTrial], pareto: tuple[int, ...], min_success: float) -> AttackTrial | None:
    """The Pareto trial with success rate ≥ ``min_success`` and the smallest median L0 (ties: higher
    success); without one, the Pareto trial with the highest success rate (ties: smaller median L0)."""
    front = [t for t in trials if t.number in pareto and t.success_rate is not None and t.median_l0 is not None]
    good = [t for t in front if (t.success_rate or 0.0) >= min_success]
    if good:
        return min(good, key=lambda t: (t.median_l0 or 0.0, -(t.success_rate or 0.0), t.number))
    return min(front, key=lambda t: (-(t.success_rate or 0.0), t.median_l0 or 0.0, t.number), default=None)


def tuning_summary(
    study: optuna.Study,
    place: StudyPlace,
    target: AttackTarget,
    config: Config,
    subset_size: int,
    decision: DecisionRule,
) -> TuneAttackSummary:
    """The run summary: objective, subset, counts by state, every trial, the Pareto front and the chosen trial."""
    tune = config.tune_attack
    trials = study.get_trials(deepcopy=False)
    states = studies.state_counts(trials)
    entries = [_entry(t) for t in trials]
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.values is not None]
    if tune.objective == PARETO:
        pareto = tuple(t.number for t in study.best_trials) if completed else ()
        best = choose_trial(entries, pareto, tune.min_success)
    else:
        pareto = ()
        top = max(completed, key=lambda t: float(t.value or 0.0), default=None)
        best = None if top is None else entries[[t.number for t in trials].index(top.number)]
    return TuneAttackSummary(
        study_name=place.name,
        storage=place.shown,
        model_run=target.model_run.id,
        model_trial=target.trial,
        features_run=target.features_run.id,
        objective=tune.objective,
        max_nonzero=tune.max_nonzero,
        subset_size=subset_size,
        subset_seed=tune.subset_seed,
        chunks=tune.chunks,
        max_iterations=tune.max_iterations,
        n_trials=len(trials),
        states=states,
        n_pruned=states.get("pruned", 0),
        best=best,
        trials=tuple(entries),
        decision=decision.rule,
        threshold=decision.threshold,
        cells=config.attack.cells,
        min_success=tune.min_success,
        pareto=pareto,
    )


def _entry(trial: optuna.trial.FrozenTrial) -> AttackTrial:
    settings = trial.user_attrs.get("settings")
    return AttackTrial(
        number=trial.number,
        state=studies.trial_state(trial),
        values=None if trial.values is None else tuple(float(v) for v in trial.values),
        settings=None if settings is None else _tuned(settings),
        successes=trial.user_attrs.get("successes"),
        last_step=trial.last_step,
        success_rate=trial.user_attrs.get("success_rate"),
        median_l0=trial.user_attrs.get("median_l0"),
        batch_size=trial.user_attrs.get("batch_size"),
        forward_passes=trial.user_attrs.get("forward_passes"),
        backward_passes=trial.user_attrs.get("backward_passes"),
    )
