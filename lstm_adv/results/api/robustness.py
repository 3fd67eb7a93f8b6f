"""Aggregates of robustness runs for the robustness report: metric vs ε, confusion under attack, the L1 attack."""

from __future__ import annotations

import pandas as pd

from lstm_adv.results import artifacts
from lstm_adv.results.api.common import aggregates_only
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import RobustnessSummary

ROBUSTNESS_KINDS = ("robustness",)

__all__ = [
    "ROBUSTNESS_KINDS",
    "robustness_clinical_eps",
    "robustness_confusion",
    "robustness_curves",
    "robustness_l1",
    "robustness_models",
    "robustness_obfuscation",
]


def _model_labels(run: Run) -> dict[str, str]:
    """Model run id → "defense · id" (e.g. "adaptive · model-20261121-120455-a3f9"), in the run's order."""
    return {str(m.model): f"{m.defense} · {m.model}" for m in run.summary_as(RobustnessSummary).models}


def _robustness_table(run: Run, name: str) -> pd.DataFrame:
    frame = artifacts.read_table(run, name)
    labels = _model_labels(run)
    frame.insert(0, "label", frame["model"].map(labels).fillna(frame["model"]))
    return frame


def robustness_models(run: Run) -> pd.DataFrame:
    """Per model: its decision rule and the size of the attack pool (correct at that rule, with a cell the
    L1 attack may change). Columns: label, decision, pool."""
    summary = run.summary_as(RobustnessSummary)
    labels = _model_labels(run)
    rows = [
        (labels[str(m.model)], summary.decisions.get(str(m.model), "?"), summary.pool.get(str(m.model)))
        for m in summary.models
    ]
    return aggregates_only(pd.DataFrame(rows, columns=["label", "decision", "pool"]))


def robustness_curves(run: Run) -> pd.DataFrame:
    """Metric vs ε per model of a robustness run. Columns: label, model, defense, eps, metric, value."""
    return aggregates_only(_robustness_table(run, artifacts.ROBUSTNESS_CURVES_FILE))


def robustness_confusion(run: Run) -> pd.DataFrame:
    """Confusion counts under attack. Columns: label, model, defense, eps, true_label, predicted_label, count."""
    return aggregates_only(_robustness_table(run, artifacts.CONFUSION_FILE))


def robustness_l1(run: Run) -> pd.DataFrame:
    """The sparse L1 attack per model (attacked, success_rate, mean_l0, mean_l1).

    Columns: label, model, defense, metric, value.
    """
    return aggregates_only(_robustness_table(run, artifacts.L1_FILE))


def eps_column(eps: float) -> str:
    """The column of :func:`robustness_clinical_eps` that holds budget ``eps``."""
    return f"ε = {eps:g}"


def robustness_clinical_eps(run: Run) -> pd.DataFrame:
    """What each ε > 0 of the sweep means per feature in its clinical unit: ε · (p95 − p5), with p5 and p95 the
    training split's percentiles the features run scaled by (one normalized unit is p95 − p5).

    Columns: feature, unit, span (p95 − p5), then one per ε > 0 (:func:`eps_column`). Empty for a run made
    before the scales were recorded.
    """
    summary = run.summary_as(RobustnessSummary)
    budgets = [e for e in summary.eps if e > 0]
    rows = [
        {"feature": s.feature, "unit": s.unit, "span": s.span, **{eps_column(e): e * s.span for e in budgets}}
        for s in summary.scales
    ]
    return aggregates_only(pd.DataFrame(rows, columns=["feature", "unit", "span", *map(eps_column, budgets)]))


def robustness_obfuscation(run: Run) -> pd.DataFrame:
    """The gradient-obfuscation check per model: robust accuracy under an unbounded PGD with many steps (must be
    about 0), its success rate on the pool, and the verdict (``ok`` or ``may be unreliable``).

    Columns: label, eps, iterations, robust_accuracy, success_rate, tolerance, verdict. Empty when skipped.
    """
    summary = run.summary_as(RobustnessSummary)
    labels = _model_labels(run)
    rows = [
        (
            labels.get(model, model),
            c.eps,
            c.iterations,
            c.robust_accuracy,
            c.success_rate,
            c.tolerance,
            "ok" if c.reliable else "may be unreliable",
        )
        for model, c in summary.obfuscation.items()
    ]
    columns = ["label", "eps", "iterations", "robust_accuracy", "success_rate", "tolerance", "verdict"]
    return aggregates_only(pd.DataFrame(rows, columns=columns))
