"""Aggregates of robustness runs for the robustness report: metric vs ε, confusion under attack, the L1 attack."""

from __future__ import annotations

import pandas as pd

from lstm_adv.domain.errors import RunNotFoundError
from lstm_adv.results import artifacts
from lstm_adv.results.api.common import aggregates_only
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import ModelSummary, RobustnessSummary

ROBUSTNESS_KINDS = ("robustness",)
BASELINE = "baseline"

__all__ = [
    "ROBUSTNESS_KINDS",
    "defense_made_worse",
    "robustness_clinical_eps",
    "robustness_confusion",
    "robustness_curves",
    "robustness_l1",
    "robustness_models",
    "robustness_obfuscation",
    "robustness_table",
]


def _model_labels(run: Run) -> dict[str, str]:
    """Model run id → a short label "defense (token)", e.g. "adaptive (a3f9)", in the run's order.

    The token is the last part of the run id; the full id stands in for it when two models share a label.
    """
    models = run.summary_as(RobustnessSummary).models
    labels = {str(m.model): f"{m.defense} ({m.model.token})" for m in models}
    if len(set(labels.values())) < len(labels):
        return {str(m.model): f"{m.defense} ({m.model})" for m in models}
    return labels


def _robustness_table(run: Run, name: str) -> pd.DataFrame:
    frame = artifacts.read_table(run, name)
    labels = _model_labels(run)
    frame.insert(0, "label", frame["model"].map(labels).fillna(frame["model"]))
    return frame


def _model_summary(run: Run, model: str) -> ModelSummary | None:
    """The summary of one evaluated model run (None when it was deleted)."""
    try:
        found = RunStore(run.path.parent).get(model, kind="model")
    except RunNotFoundError:
        return None
    summary = found.manifest.summary
    return summary if isinstance(summary, ModelSummary) else None


def _short_rule(run: Run, model: str, stored: str) -> str:
    """``threshold, t = 0.231`` or ``argmax, t = 0.5`` from the model run; the stored text without it."""
    summary = _model_summary(run, model)
    if summary is None or summary.decision is None or summary.threshold is None:
        return stored
    return f"{summary.decision}, t = {summary.threshold:.3f}"


def robustness_models(run: Run) -> pd.DataFrame:
    """Per model: its short label, run id, decision rule with its t, and the size of the attack pool (correct
    at that rule, with a cell the L1 attack may change). Columns: model, run, decision rule, attack pool."""
    summary = run.summary_as(RobustnessSummary)
    labels = _model_labels(run)
    rows = []
    for m in summary.models:
        model = str(m.model)
        rule = _short_rule(run, model, summary.decisions.get(model, "?"))
        rows.append((labels[model], model, rule, summary.pool.get(model)))
    frame = pd.DataFrame(rows, columns=["model", "run", "decision rule", "attack pool"])
    return aggregates_only(frame.astype({"attack pool": "Int64"}))


def robustness_curves(run: Run) -> pd.DataFrame:
    """Metric vs ε per model of a robustness run. Columns: label, model, defense, eps, metric, value."""
    return aggregates_only(_robustness_table(run, artifacts.ROBUSTNESS_CURVES_FILE))


#: The metrics the robustness table shows, with their interval where the run stored one.
TABLE_METRICS = ("clean_accuracy", "robust_accuracy", "robust_recall", "robust_auroc", "robust_auprc", "success_rate")


def robustness_table(run: Run) -> pd.DataFrame:
    """Per model and ε, each of :data:`TABLE_METRICS` as ``value [low, high]`` (95 % intervals: Wilson for rates,
    bootstrap for AUROC / AUPRC; the value alone for runs made before intervals were stored).

    Columns: label, eps, and one text column per metric.
    """
    curves = robustness_curves(run)
    wide = curves.pivot_table(index=["label", "eps"], columns="metric", values="value", sort=False).reset_index()
    out = wide[["label", "eps"]].copy()
    for metric in TABLE_METRICS:
        if metric not in wide:
            out[metric] = "—"
            continue
        low, high = wide.get(f"{metric}_low"), wide.get(f"{metric}_high")
        out[metric] = [
            _interval_text(value, None if low is None else low.iloc[i], None if high is None else high.iloc[i])
            for i, value in enumerate(wide[metric])
        ]
    return aggregates_only(out)


def _interval_text(value: float, low: float | None, high: float | None) -> str:
    if value != value:  # NaN
        return "—"
    if low is None or high is None or low != low or high != high:
        return f"{value:.3f}"
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def robustness_confusion(run: Run) -> pd.DataFrame:
    """Confusion counts under attack. Columns: label, model, defense, eps, true_label, predicted_label, count."""
    return aggregates_only(_robustness_table(run, artifacts.CONFUSION_FILE))


def robustness_l1(run: Run) -> pd.DataFrame:
    """The sparse L1 attack per model (attacked, success_rate, mean_l0, mean_l1).

    Columns: label, model, defense, metric, value.
    """
    return aggregates_only(_robustness_table(run, artifacts.L1_FILE))


def _original_of(run: Run, model: str, baselines: list[str]) -> str | None:
    """The model a defended model was made from: its summary's original, else the run's only baseline."""
    summary = _model_summary(run, model)
    if summary is not None and summary.defense is not None:
        return str(summary.defense.original_model)
    return baselines[0] if len(baselines) == 1 else None


def defense_made_worse(run: Run, metric: str = "robust_accuracy") -> pd.DataFrame:
    """Where a defended model is *less* robust than its original: every ε > 0 at which its ``metric`` is lower.

    Columns: ``defended``, ``original`` (labels), ``eps``, ``defended_value``, ``original_value``; empty when
    every defense held its original's level or improved on it (or the run has no original to compare with).
    """
    summary = run.summary_as(RobustnessSummary)
    labels = _model_labels(run)
    curves = robustness_curves(run)
    values = curves[curves["metric"] == metric].set_index(["model", "eps"])["value"]
    baselines = [str(m.model) for m in summary.models if m.defense == BASELINE]
    rows = []
    for m in summary.models:
        model = str(m.model)
        original = None if m.defense == BASELINE else _original_of(run, model, baselines)
        if original is None or original not in labels:
            continue
        for eps in sorted(e for e in summary.eps if e > 0):
            mine, theirs = values.get((model, eps)), values.get((original, eps))
            if mine is not None and theirs is not None and mine < theirs - 1e-12:
                rows.append((labels[model], labels[original], eps, float(mine), float(theirs)))
    columns = ["defended", "original", "eps", "defended_value", "original_value"]
    return aggregates_only(pd.DataFrame(rows, columns=columns))


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
