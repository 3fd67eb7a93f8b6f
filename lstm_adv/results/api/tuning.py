"""Aggregates of tune-model and tune-attack runs for the tuning report: trials, objectives, importances.

Trials come from the run summary (no storage needed). Parameter importances need the study itself:
a journal file inside the run is copied and opened read-only; a study in a database is opened when
its URL is complete and the server answers. When neither works the report says why instead.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pandas as pd

from lstm_adv.domain.errors import DatabaseError, DataError
from lstm_adv.domain.run_id import a_kind
from lstm_adv.results.api.common import aggregates_only, decision_rule_text, text
from lstm_adv.results.artifacts import STUDY_FILE
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import AttackTrial, ModelTrial, TuneAttackSummary, TuneModelSummary

if TYPE_CHECKING:
    import optuna

TUNING_KINDS = ("tune-model", "tune-attack")
PARETO = "pareto"
#: Study parameter → the name a reader sees.
PARAMETER_NAMES = {
    "hidden_size_log2": "hidden size (log₂)",
    "lstm_activation": "LSTM activation",
    "dropout": "dropout",
    "fc_size_log2": "FC size (log₂)",
    "fc_activation": "FC activation",
    "optimizer": "optimizer",
    "learning_rate": "learning rate",
    "batch_size_log2": "batch size (log₂)",
    "kappa": "κ",
    "lam": "λ",
    "step_size": "step size",
    "method": "method",
}
_OPEN_TIMEOUT_S = 5

__all__ = [
    "PARAMETER_NAMES",
    "TUNING_KINDS",
    "Objective",
    "parameter_importances",
    "tuning_objectives",
    "tuning_overview",
    "tuning_trials",
]


@attrs.frozen
class Objective:
    """One objective of a study: its column in :func:`tuning_trials`, its name and direction."""

    column: str
    name: str
    direction: str

    @property
    def maximize(self) -> bool:
        """Whether larger values are better."""
        return self.direction == "maximize"


def _summary(run: Run) -> TuneModelSummary | TuneAttackSummary:
    summary = run.manifest.summary
    if not isinstance(summary, TuneModelSummary | TuneAttackSummary):
        raise DataError(f"run {run.id} is {a_kind(run.kind)} run without a tuning summary; the tuning report needs one")
    return summary


def tuning_objectives(run: Run) -> tuple[Objective, ...]:
    """The objectives of the run's study, in the order of the trial values."""
    summary = _summary(run)
    if isinstance(summary, TuneModelSummary):
        return (Objective("value", "validation AUROC", "maximize"),)
    if summary.objective == PARETO:
        return (
            Objective("success_rate", "success rate", "maximize"),
            Objective("median_l0", "median L0 of the sparse examples", "minimize"),
        )
    return (Objective("value", summary.objective, "maximize"),)


def tuning_trials(run: Run) -> pd.DataFrame:
    """One row per trial of the study, in trial order.

    Columns: ``trial``, ``state``, the objective columns (:func:`tuning_objectives`), ``chosen`` (the trial
    the run picked: the best, or for a Pareto study the one ``attack --tuned`` uses), ``pareto`` (on the
    Pareto front; False for a single objective), then the trial's parameters. A tune-model run adds
    ``best_epoch`` and ``epochs``; a tune-attack run ``successes``, ``success_rate`` and ``median_l0``.
    """
    summary = _summary(run)
    chosen = summary.best.number if summary.best is not None else None
    if isinstance(summary, TuneModelSummary):
        rows = [_model_row(t) for t in summary.trials]
        pareto: tuple[int, ...] = ()
    else:
        rows = [_attack_row(t, summary.objective) for t in summary.trials]
        pareto = summary.pareto
    frame = pd.DataFrame(rows)
    if frame.empty:
        return aggregates_only(pd.DataFrame(columns=["trial", "state", "chosen", "pareto"]))
    frame.insert(2, "chosen", frame["trial"] == (-1 if chosen is None else chosen))
    frame.insert(3, "pareto", frame["trial"].isin(pareto))
    return aggregates_only(frame)


def _model_row(trial: ModelTrial) -> dict[str, object]:
    params = trial.params
    row: dict[str, object] = {"trial": trial.number, "state": trial.state, "value": trial.value}
    row |= {"best_epoch": trial.best_epoch, "epochs": trial.last_epoch}
    if params is not None:
        row |= {
            "hidden_size": params.hidden_size,
            "lstm_activation": params.lstm_activation,
            "dropout": params.dropout,
            "fc_size": params.fc_size,
            "fc_activation": params.fc_activation,
            "optimizer": params.optimizer,
            "learning_rate": params.learning_rate,
            "batch_size": params.batch_size,
        }
    return row


def _attack_row(trial: AttackTrial, objective: str) -> dict[str, object]:
    row: dict[str, object] = {"trial": trial.number, "state": trial.state}
    if objective != PARETO:
        row["value"] = trial.value
    row |= {"successes": trial.successes, "success_rate": trial.success_rate, "median_l0": trial.median_l0}
    if trial.settings is not None:
        row |= attrs.asdict(trial.settings)
    return row


def tuning_overview(run: Run) -> pd.DataFrame:
    """What was tuned, on what, and how the study went: one row per property (``property``, ``value``)."""
    summary = _summary(run)
    objectives = " and ".join(f"{o.name} ({o.direction})" for o in tuning_objectives(run))
    states = ", ".join(f"{n} {state}" for state, n in summary.states.items()) or "none"
    rows = [
        ("study", summary.study_name),
        ("storage", summary.storage),
        ("objective", objectives),
        ("trials", f"{summary.n_trials} ({states})"),
        ("chosen trial", "—" if summary.best is None else str(summary.best.number)),
    ]
    if isinstance(summary, TuneModelSummary):
        rows.append(("features run", str(summary.features_run)))
    else:
        trial = "" if summary.model_trial is None else f" (trial {summary.model_trial})"
        rows += [
            ("attacked model run", f"{summary.model_run}{trial}"),
            ("decision rule of the model", decision_rule_text(summary.decision, summary.threshold)),
            ("cells the attack may change", summary.cells),
            ("tuning subset", f"{summary.subset_size} samples of the training split (seed {summary.subset_seed})"),
            ("iterations per λ round", text(summary.max_iterations)),
        ]
        if summary.objective == PARETO:
            rows.append(("chosen: least median L0 with success rate ≥", f"{summary.min_success:.0%}"))
    return aggregates_only(pd.DataFrame(rows, columns=["property", "value"]))


# --- the study itself ----------------------------------------------------------------------------------


@contextmanager
def _opened_study(run: Run) -> Iterator[optuna.Study]:
    """The run's study, opened without writing to the run: a journal is read from a temporary copy."""
    import optuna  # only the importances need the study; the rest of the API does without optuna

    summary = _summary(run)
    if summary.storage == "file":
        journal = run.path / STUDY_FILE
        if not journal.is_file():
            raise DataError(f"tuning run {run.id} holds no {STUDY_FILE}; its study cannot be opened")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        with tempfile.TemporaryDirectory(prefix="lstm-adv-study-") as tmp:
            copy = Path(tmp) / STUDY_FILE
            shutil.copyfile(journal, copy)
            storage = JournalStorage(JournalFileBackend(str(copy)))
            yield optuna.load_study(study_name=summary.study_name, storage=storage)
        return
    if "***" in summary.storage:
        raise DataError(
            f"the study lives in the database {summary.storage}, whose password the run does not store, so the "
            "report cannot open it"
        )
    from lstm_adv.studies import open_database_storage

    try:
        database = open_database_storage(summary.storage, _OPEN_TIMEOUT_S)
        study = optuna.load_study(study_name=summary.study_name, storage=database)
    except (DatabaseError, KeyError) as exc:
        raise DataError(f"the study in {summary.storage} cannot be opened now ({exc})") from None
    yield study


def parameter_importances(run: Run) -> pd.DataFrame:
    """How much each parameter explains of each objective over the completed trials (fANOVA, seeded).

    Columns: ``objective``, ``parameter`` (:data:`PARAMETER_NAMES`), ``importance`` (sums to 1 per
    objective). A :class:`DataError` says why when the study cannot be opened or has too few trials.
    """
    import optuna

    objectives = tuning_objectives(run)
    rows = []
    with _opened_study(run) as study:
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(complete) < 2:
            raise DataError(f"the study has {len(complete)} completed trial(s); importances need at least 2")
        for index, objective in enumerate(objectives):
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            target = (lambda t, i=index: t.values[i]) if len(objectives) > 1 else None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
            except (ValueError, RuntimeError) as exc:
                raise DataError(f"parameter importances cannot be estimated from this study: {exc}") from None
            rows += [(objective.name, PARAMETER_NAMES.get(p, p), float(v)) for p, v in found.items()]
    return aggregates_only(pd.DataFrame(rows, columns=["objective", "parameter", "importance"]))
