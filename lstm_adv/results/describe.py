"""One line on what a run holds: the demo's per-stage lines and the headline metric `runs list` shows.

Reads run summaries only (no stage is imported), so the CLI can use it without loading the stages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lstm_adv.results.store import Run
from lstm_adv.results.summaries import (
    AnalysisSummary,
    AttackSummary,
    FeaturesSummary,
    ModelSummary,
    QuerySummary,
    ReportSummary,
    RobustnessSummary,
    SynthSummary,
    TuneAttackSummary,
    TuneModelSummary,
)


def describe_run(run: Run) -> str:
    """One line on what a run of the main job holds (counts and headline metrics)."""
    summary = run.manifest.summary
    describe = _DESCRIBERS.get(type(summary))
    return describe(summary) if describe is not None else ""


def _describe_query(summary: QuerySummary) -> str:
    return " → ".join(f"{step.step} {step.count:,}" for step in summary.flow)


def _describe_features(summary: FeaturesSummary) -> str:
    n, hours, features = summary.shape
    return f"{n} samples × {hours} h × {features} features"


def _states(states: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in states.items())


def _describe_tuning(summary: TuneModelSummary) -> str:
    value = summary.best.value if summary.best is not None else None
    states = _states(summary.states)
    return f"{states}; best validation AUROC {value:.3f}" if value is not None else states


def _describe_model(summary: ModelSummary) -> str:
    auroc = (summary.test or {}).get("auroc")
    if auroc is None or auroc.value is None:
        return ""
    interval = f" [{auroc.low:.3f}, {auroc.high:.3f}]" if auroc.low is not None and auroc.high is not None else ""
    text = f"test AUROC {auroc.value:.3f}{interval}"
    oracle = summary.oracle_test_auroc
    text += f" (oracle {oracle:.3f})" if oracle is not None else ""
    learned = summary.learned
    if learned is not None:
        low, high = learned.auroc.low, learned.auroc.high
        if low is not None and high is not None:
            text += f"; validation AUROC {learned.auroc.value:.3f} [{low:.3f}, {high:.3f}]"
    if summary.defense is not None:
        text += f"; {summary.defense.method} defense"
    return text + (f"; WARNING — has not learned: {summary.weak}" if summary.weak else "")


def _describe_robustness(summary: RobustnessSummary) -> str:
    rows = [r for r in summary.table if r.eps == max(summary.eps, default=0.0)]
    defenses = {m.model: m.defense for m in summary.models}
    parts = [
        f"{defenses.get(r.model, 'model')} {str(r.model)[-4:]}: robust accuracy {r.text('robust_accuracy')}, "
        f"robust recall of deaths {r.text('robust_recall')}"
        for r in rows
        if r.robust_accuracy is not None
    ]
    return f"{summary.attack} at ε = {max(summary.eps, default=0.0):g}: " + "; ".join(parts) if parts else ""


def _describe_synth(summary: SynthSummary) -> str:
    return f"{summary.admissions:,} admissions, prevalence {summary.prevalence:.1%}"


def _describe_attack_tuning(summary: TuneAttackSummary) -> str:
    states, best = _states(summary.states), summary.best
    if best is None or best.value is None:
        return states
    if summary.objective != "pareto":
        return f"{states}; best {summary.objective} {best.value:.3f}"
    rate = "—" if best.success_rate is None else f"{best.success_rate:.0%}"
    median = "—" if best.median_l0 is None else f"{best.median_l0:g}"
    return (
        f"{states}; {len(summary.pareto)} on the Pareto front; chosen trial {best.number}: success {rate}, "
        f"median L0 of the sparse examples {median}"
    )


def _rule(decision: str, threshold: float) -> str:
    return "argmax (t = 0.5)" if decision == "argmax" else f"t = {threshold:.3f}"


def _describe_attack(summary: AttackSummary) -> str:
    median = "—" if summary.median_l0_sparse is None else f"{summary.median_l0_sparse:.1f}"
    rate = "" if summary.success is None else f" (success {summary.success.text('.3f')})"
    if summary.unit == "measurement":
        moved = "—" if summary.median_input_l0_sparse is None else f"{summary.median_input_l0_sparse:.0f}"
        size = f"median {median} altered measurements per sparse example (moving {moved} model-input cells in all)"
    else:
        size = f"median L0 of the sparse examples {median} of 912 cells"
    return (
        f"{summary.n_successful} of {summary.n_attacked} attacked samples flipped{rate} at the model's rule "
        f"({_rule(summary.decision, summary.threshold)}; {summary.n_samples} in split {summary.split}, samples "
        f"misclassified at the rule are skipped); threat {summary.cells}; {size}"
    )


def _describe_analysis(summary: AnalysisSummary) -> str:
    sparse = summary.top_features.get("sparse", {})
    parts = [f"{direction.replace('to', '→')}: {', '.join(names[:3])}" for direction, names in sparse.items() if names]
    measured = summary.measured_fraction.get("sparse", {}).get("all")
    share = "" if measured is None else f"; {measured:.0%} of the moved input cells held a measurement"
    return ("most susceptible features (sparse examples) " + "; ".join(parts) + share) if parts else ""


_DESCRIBERS: dict[type, Callable[[Any], str]] = {
    TuneAttackSummary: _describe_attack_tuning,
    AttackSummary: _describe_attack,
    AnalysisSummary: _describe_analysis,
    SynthSummary: _describe_synth,
    QuerySummary: _describe_query,
    FeaturesSummary: _describe_features,
    TuneModelSummary: _describe_tuning,
    ModelSummary: _describe_model,
    RobustnessSummary: _describe_robustness,
}


def headline(run: Run) -> str:
    """The run's one headline figure for listings (``test AUROC 0.885``), or an empty string."""
    summary = run.manifest.summary
    make = _HEADLINES.get(type(summary))
    return make(summary) if make is not None else ""


def _median(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def _headline_model(summary: ModelSummary) -> str:
    if summary.cv:
        mean = (summary.mean or {}).get("auroc")
        return "" if mean is None else f"CV mean AUROC {mean:.3f}"
    auroc = (summary.test or {}).get("auroc")
    text = "" if auroc is None or auroc.value is None else f"test AUROC {auroc.value:.3f}"
    return text + (" (saturated)" if summary.saturated else "")


def _headline_tune_attack(summary: TuneAttackSummary) -> str:
    best = summary.best
    if best is None:
        return "no completed trial"
    if summary.objective == "pareto" and best.success_rate is not None:
        return f"chosen: success {best.success_rate:.0%}, median L0 {_median(best.median_l0)}"
    return f"best {summary.objective} {best.value:.3f}" if best.value is not None else ""


def _headline_robustness(summary: RobustnessSummary) -> str:
    return f"{len(summary.models)} model(s), {summary.attack} ε up to {max(summary.eps, default=0.0):g}"


_HEADLINES: dict[type, Callable[[Any], str]] = {
    SynthSummary: lambda s: f"{s.admissions:,} admissions",
    QuerySummary: lambda s: f"{s.flow[-1].count:,} {s.flow[-1].step}" if s.flow else "",
    FeaturesSummary: lambda s: f"{s.shape[0]:,} samples",
    TuneModelSummary: lambda s: "" if s.best is None or s.best.value is None else f"best val AUROC {s.best.value:.3f}",
    ModelSummary: _headline_model,
    TuneAttackSummary: _headline_tune_attack,
    AttackSummary: lambda s: f"flipped {s.n_successful}/{s.n_attacked}, median L0 {_median(s.median_l0_sparse)}",
    AnalysisSummary: lambda s: f"success {s.success_rate:.0%}",
    RobustnessSummary: _headline_robustness,
    ReportSummary: lambda s: f"{s.document} report of {s.reported}",
}
