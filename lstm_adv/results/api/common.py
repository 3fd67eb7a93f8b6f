"""What every report document needs: loading a run, its parents, its overview, and the aggregates-only check.

Reports (``reports/*.qmd``) compute nothing new: they call these functions with a run id and show
what comes back. Nothing here returns a patient-level row, an identifier (subject, admission, stay)
or a time; every frame is checked for such columns before it leaves (:func:`aggregates_only`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import DataError, RunKindError
from lstm_adv.domain.run_id import a_kind
from lstm_adv.results import artifacts
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import FeaturesSummary, QuerySummary
from lstm_adv.results.workspace import locate_home

_FORBIDDEN = ("subject_id", "hadm_id", "icustay_id", "row_id")
_TIME_WORDS = ("time", "intime", "outtime", "date", "window_start")

__all__ = [
    "EPS_UNIT",
    "aggregates_only",
    "decision_rule_text",
    "load_run",
    "locate_home",
    "parent_of",
    "run_overview",
    "weak_model_note",
]

#: What ε and δ are measured in: every feature is scaled to [0, 1] between its training-split p5 and p95.
EPS_UNIT = "normalized units, 0–1 = p5–p95 of the training split"


def load_run(run_id: str, home: str | Path | None = None, *, kinds: Sequence[str] | None = None) -> Run:
    """The run ``run_id`` (id or unique prefix) of the workspace at ``home``; ``kinds`` checks its kind."""
    store = RunStore(locate_home(home) / "runs")
    run = store.get(str(run_id))
    if kinds is not None and run.kind not in kinds:
        raise RunKindError(f"run {run.id} is {a_kind(run.kind)} run; this report needs a {' or '.join(kinds)} run")
    return run


def parent_of(run: Run, kind: str, home: str | Path | None = None) -> Run | None:
    """The first parent of ``run`` of ``kind`` (None when it has none or it was deleted)."""
    store = RunStore(run.path.parent if home is None else locate_home(home) / "runs")
    for parent in run.manifest.parents:
        if parent.kind == kind and (store.root / str(parent)).is_dir():
            return store.get(str(parent))
    return None


def run_overview(run: Run) -> pd.DataFrame:
    """What the run is and where it came from: one row per property (``property``, ``value``)."""
    summary = run.manifest.summary
    rows = [
        ("run", str(run.id)),
        ("kind", run.kind),
        ("created (UTC)", f"{run.manifest.created:%Y-%m-%d %H:%M}"),
        ("parents", ", ".join(str(p) for p in run.manifest.parents) or "—"),
        ("package version", run.manifest.package_version),
        ("git commit", (run.manifest.git_commit or "—")[:12]),
    ]
    if isinstance(summary, QuerySummary):
        rows.append(("source", summary.source))
    if isinstance(summary, FeaturesSummary):
        rows.append(("tensor shape (N, hours, features)", " × ".join(str(n) for n in summary.shape)))
    return aggregates_only(pd.DataFrame(rows, columns=["property", "value"]))


def decision_rule_text(decision: str | None, threshold: float | None) -> str:
    """A model's decision rule and its t in words (:meth:`DecisionRule.describe`), also for older runs."""
    if decision is None:
        if threshold is None:
            return "not recorded by this run (made by an older toolkit version)"
        return f"threshold t = {threshold:.3f} on P(death) (the run does not record how t was chosen)"
    return DecisionRule(decision, 0.5 if threshold is None else threshold).describe()


def aggregates_only(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` itself, after checking it holds no identifier or time column (a :class:`DataError` if so)."""
    for column in map(str, frame.columns):
        lowered = column.lower()
        if lowered in _FORBIDDEN or lowered in _TIME_WORDS or set(lowered.split("_")) & set(_TIME_WORDS):
            raise DataError(f"results API: column {column!r} is patient-level; reports may only show aggregates")
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            raise DataError(f"results API: column {column!r} holds times; reports may only show aggregates")
    return frame


def read_columns(run: Run, table: str, columns: list[str]) -> pd.DataFrame:
    """Selected columns of a stored Parquet table, for aggregation inside the results API only."""
    return artifacts.read_table(run, f"{table}.parquet", columns)


def number(value: Any) -> float | None:
    """A stored number as float (``None`` for anything else)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def text(value: Any) -> str:
    """A stored value as table text (floats in ``g`` form, lists joined)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(text(v) for v in value)
    return str(value)


def _models_behind(run: Run) -> list[Run]:
    """The model runs a run's numbers describe: itself, the attacked or evaluated models, through the lineage."""
    store = RunStore(run.path.parent)
    summary = run.manifest.summary
    ids: list[str] = []
    if run.kind == "model":
        return [run]
    for name in ("model_run",):
        value = getattr(summary, name, None)
        if value is not None:
            ids.append(str(value))
    models = getattr(summary, "models", None) or ()
    ids += [str(entry.model) for entry in models]
    if not ids:  # analysis, report: through the parents
        for parent in run.manifest.parents:
            if parent.kind in ("attack", "model", "robustness", "tune-attack") and (store.root / str(parent)).is_dir():
                return _models_behind(store.get(str(parent)))
    found = []
    for ref in ids:
        if (store.root / ref).is_dir():
            model = store.get(ref)
            if model.kind == "model":
                found.append(model)
    return found


def weak_model_note(run: Run) -> str | None:
    """A visible note (Markdown) when a model behind ``run``'s numbers has not learned (its train-time check on
    validation), naming the model and the reason; None when every model learned or none was checked."""
    from lstm_adv.results.summaries import ModelSummary

    notes = []
    for model in _models_behind(run):
        summary = model.manifest.summary
        if isinstance(summary, ModelSummary) and summary.weak:
            notes.append(f"model run `{model.id}`: {summary.weak}")
    if not notes:
        return None
    return (
        "> **Note — a model that has not learned.** " + "; ".join(notes) + ". Attack, robustness and ranking "
        "numbers below describe a model no better than chance at this sample size, not a finding about the "
        f"task. (A model is marked when its validation AUROC interval holds 0.5 or its validation P(death) has "
        f"an interquartile range below {_min_spread():g}.)"
    )


def _min_spread() -> float:
    from lstm_adv.metrics import MIN_SPREAD

    return MIN_SPREAD
