"""Aggregates of attack and analysis runs for the attack report: success, norms, rankings, discovery."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lstm_adv.config import AnalysisConfig
from lstm_adv.domain.errors import DataError, RunKindError
from lstm_adv.domain.perturbation import EXAMPLES
from lstm_adv.domain.run_id import a_kind
from lstm_adv.domain.shapes import N_CELLS
from lstm_adv.results import artifacts
from lstm_adv.results.api.common import aggregates_only, decision_rule_text, parent_of, text
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import AnalysisSummary, AttackSummary

ATTACK_KINDS = ("attack", "analysis")
DIRECTION_NAMES = {"0to1": "0→1 (survival → death)", "1to0": "1→0 (death → survival)"}

__all__ = [
    "ATTACK_KINDS",
    "CELLS_TEXT",
    "DIRECTION_NAMES",
    "UNIT_TEXT",
    "analysis_figure",
    "attack_and_analysis",
    "attack_rule",
    "attack_settings",
    "attack_success",
    "dense_l0_share",
    "dense_warning",
    "discovery_curve",
    "example_density",
    "feature_ranking",
    "latest_analysis",
    "measurement_ranking",
    "perturbation_norms",
    "top_hours",
    "typical_changes",
]


def attack_and_analysis(run: Run) -> tuple[Run, Run]:
    """The attack run and its analysis run, from either of them (an attack's newest analysis child).

    The report needs the analysis: it holds every aggregate (the attack run stores raw perturbations).
    """
    if run.kind == "analysis":
        attack = parent_of(run, "attack")
        if attack is None:
            raise DataError(f"analysis run {run.id} has lost its attack run; the report needs both")
        return attack, run
    if run.kind != "attack":
        raise RunKindError(f"run {run.id} is {a_kind(run.kind)} run; this report needs an attack or analysis run")
    analysis = latest_analysis(run)
    if analysis is None:
        raise DataError(f"attack run {run.id} has no analysis run yet; run `lstm-adv analyze --attack {run.id}` first")
    return run, analysis


def latest_analysis(attack: Run) -> Run | None:
    """The newest analysis run whose parent is ``attack`` (None when it has not been analysed)."""
    children = [r for r in RunStore(attack.path.parent).list("analysis") if attack.id in r.manifest.parents]
    return children[-1] if children else None


def attack_settings(attack: Run) -> pd.DataFrame:
    """The attack's settings (``params.json``) and what it attacked. Columns: ``setting``, ``value``."""
    has_params = (attack.path / artifacts.ATTACK_PARAMS_FILE).is_file()
    params = artifacts.read_json(attack, artifacts.ATTACK_PARAMS_FILE) if has_params else {}
    rows = [(SETTING_NAMES.get(str(k), str(k).replace("_", " ")), text(v)) for k, v in params.items()]
    summary = attack.manifest.summary
    if isinstance(summary, AttackSummary):
        rows += [
            ("decision rule", decision_rule_text(summary.decision, summary.threshold)),
            ("cells the attack may change", CELLS_TEXT.get(summary.cells, summary.cells)),
            ("samples with no cell to change", text(summary.n_no_cell)),
            ("attacked split", summary.split),
            ("samples", text(summary.n_samples)),
            ("attacked", text(summary.n_attacked)),
            ("success rate", f"{summary.success_rate:.1%}"),
            ("model run", str(summary.model_run)),
            ("features run", str(summary.features_run)),
        ]
    return aggregates_only(pd.DataFrame(rows, columns=["setting", "value"]))


#: Attack settings (``params.json``) → the name a reader sees; λ and the step size are scale-free.
SETTING_NAMES = {
    "kappa": "κ (confidence margin)",
    "lam": "λ (L1 weight, relative to the gradient scale)",
    "step_size": "step size (relative)",
    "max_iterations": "iterations per λ round",
    "search_steps": "λ search rounds",
    "adam_eps": "Adam ε",
}

CELLS_TEXT = {
    "record": "record (altered measurements pushed through the fill: inputs an altered record really produces)",
    "all": "all (measured and imputed model-input cells, Sun et al.)",
    "observed": "observed (measured model-input cells alone; not inputs any record produces)",
}
#: What L0 counts, by the analysis' unit.
UNIT_TEXT = {"measurement": "altered measurements", "cell": "changed cells"}


def attack_rule(analysis: Run) -> dict[str, str]:
    """The decision rule and the threat of the analysed attack, as text: ``decision``, ``cells`` (the threat
    described), ``threat`` (its name), ``unit`` (what L0 counts), ``measured`` (the share of the sparse
    examples' moved input cells that held a real measurement, or ``unknown``), ``success`` and
    ``median_l0`` (with 95 % bootstrap intervals, or the bare value for an older run), ``leverage``."""
    summary = analysis.summary_as(AnalysisSummary)
    share = summary.measured_fraction.get("sparse", {}).get("all")
    median = summary.median_l0.get("sparse", {}).get("all")
    return {
        "decision": decision_rule_text(summary.decision, summary.threshold),
        "cells": CELLS_TEXT.get(summary.cells, summary.cells),
        "threat": summary.cells,
        "unit": UNIT_TEXT.get(summary.unit, summary.unit),
        "measured": "unknown" if share is None else f"{share:.1%}",
        "success": summary.success.text(".1%") if summary.success is not None else f"{summary.success_rate:.1%}",
        "median_l0": summary.median_l0_sparse.text(".1f")
        if summary.median_l0_sparse is not None
        else ("—" if median is None else f"{median:.1f}"),
        "leverage": "—" if summary.leverage is None else f"{summary.leverage:.1f}",
    }


def attack_success(analysis: Run) -> pd.DataFrame:
    """Attacked and successful samples per direction of the flip, and overall.

    Columns: ``direction``, ``attacked``, ``successful``, ``success_rate``.
    """
    summary = analysis.summary_as(AnalysisSummary)
    rows = [
        (DIRECTION_NAMES.get(d, d), v.attacked, v.successful, v.success_rate) for d, v in summary.directions.items()
    ]
    rows.append(("all", summary.n_attacked, summary.n_successful, summary.success_rate))
    return aggregates_only(pd.DataFrame(rows, columns=["direction", "attacked", "successful", "success_rate"]))


def perturbation_norms(analysis: Run) -> pd.DataFrame:
    """L0, L1 and L∞ of the first, best and sparse successful perturbations, per direction (means and
    medians), and the share of their changed cells that held a real measurement.

    Columns: ``example``, ``direction``, ``n``, ``l0_mean``, ``l0_median``, ``l1_mean``, ``l1_median``,
    ``linf_mean``, ``linf_median``, ``iteration_median``, ``measured_share`` (NaN when the features run has
    no observation mask). L1 and L∞ are in scaled units.
    """
    examples = artifacts.read_table(analysis, "examples.parquet")
    grouped = examples.groupby(["which", "direction"], sort=False)
    frame = grouped.agg(
        n=("l0", "size"),
        l0_mean=("l0", "mean"),
        l0_median=("l0", "median"),
        l1_mean=("l1", "mean"),
        l1_median=("l1", "median"),
        linf_mean=("linf", "mean"),
        linf_median=("linf", "median"),
        iteration_median=("iteration", "median"),
        measured=("measured", lambda m: float(m.sum()) if m.notna().all() else float("nan")),
        changed=("l0", "sum"),
    ).reset_index()
    frame["measured_share"] = frame["measured"] / frame["changed"].where(frame["changed"] > 0)
    frame = frame.drop(columns=["measured", "changed"])
    frame = frame[frame["n"] > 0].rename(columns={"which": "example"})
    frame["direction"] = frame["direction"].map(_arrow)
    return aggregates_only(frame.reset_index(drop=True))


def _arrow(direction: str) -> str:
    """``0to1`` → ``0→1``."""
    return DIRECTION_NAMES.get(direction, direction).split(" ")[0]


def analysis_figure(analysis: Run, stem: str) -> Path | None:
    """The stored PNG ``figures/<stem>.png`` of an analysis run (None when the run did not draw it)."""
    path = analysis.path / artifacts.FIGURES_DIR / f"{stem}.png"
    return path if path.is_file() else None


def feature_ranking(analysis: Run, which: str = "sparse", *, top: int | None = None) -> pd.DataFrame:
    """Features ranked by susceptibility S_j, per direction, with |δ| in clinical units over changed cells.

    Columns: ``direction``, ``rank``, ``feature``, ``unit``, ``susceptibility``, ``interval`` (its 95 %
    bootstrap interval over the examples, as text; — for runs analysed before intervals were stored),
    ``mean_gpp``, ``median_abs_delta``, ``max_abs_delta`` (clinical units). ``top`` keeps the first ranks.
    """
    features = artifacts.read_table(analysis, "features.parquet")
    clinical = artifacts.read_table(analysis, "clinical.parquet")
    keys = ["which", "direction", "feature"]
    merged = features.merge(clinical[[*keys, "median_abs_delta", "max_abs_delta"]], on=keys, how="left")
    merged = merged[merged["which"] == which].sort_values(["direction", "rank"], kind="stable")
    if top is not None:
        merged = merged[merged["rank"] <= top]
    merged["direction"] = merged["direction"].map(_arrow)
    merged["interval"] = _interval_text(merged, "susceptibility", ".3f")
    columns = ["direction", "rank", "feature", "unit", "susceptibility", "interval", "mean_gpp"]
    columns += ["median_abs_delta", "max_abs_delta"]
    return aggregates_only(merged[columns].reset_index(drop=True))


def _interval_text(frame: pd.DataFrame, column: str, fmt: str) -> pd.Series:
    """``[low, high]`` of ``column`` (its ``_low``/``_high`` columns) per row, or — where none is stored."""
    low, high = f"{column}_low", f"{column}_high"
    if low not in frame or high not in frame:
        return pd.Series(["—"] * len(frame), index=frame.index, dtype=object)
    return pd.Series(
        [
            f"[{a:{fmt}}, {b:{fmt}}]" if pd.notna(a) and pd.notna(b) else "—"
            for a, b in zip(frame[low], frame[high], strict=True)
        ],
        index=frame.index,
        dtype=object,
    )


def _measurements(analysis: Run) -> pd.DataFrame:
    """The record threat's per-feature table (empty for cell threats and for runs analysed before it existed)."""
    if not (analysis.path / "measurements.parquet").is_file():
        return pd.DataFrame()
    return artifacts.read_table(analysis, "measurements.parquet")


def measurement_ranking(analysis: Run, which: str = "sparse", *, top: int | None = None) -> pd.DataFrame:
    """Record threat: features ranked by their per-opportunity rate (altered ÷ available measurements), per
    direction, with the share of altered measurements (both with 95 % bootstrap intervals as text) and the
    leverage (median model-input cells moved per altered measurement). Empty for the cell threats.

    Columns: ``direction``, ``rank``, ``feature``, ``altered``, ``available``, ``per_opportunity``,
    ``per_opportunity_ci``, ``share``, ``share_ci``, ``leverage``.
    """
    table = _measurements(analysis)
    columns = ["direction", "rank", "feature", "altered", "available", "per_opportunity", "per_opportunity_ci"]
    columns += ["share", "share_ci", "leverage"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = table[(table["which"] == which) & (table["altered"] > 0)].copy()
    rows = rows.rename(columns={"per_opportunity_rank": "rank"}).sort_values(["direction", "rank"], kind="stable")
    rows["rank"] = rows.groupby("direction").cumcount() + 1
    if top is not None:
        rows = rows[rows["rank"] <= top]
    rows["per_opportunity_ci"] = _interval_text(rows, "per_opportunity", ".3f")
    rows["share_ci"] = _interval_text(rows, "share", ".3f")
    rows["direction"] = rows["direction"].map(_arrow)
    return aggregates_only(rows[columns].reset_index(drop=True))


def typical_changes(analysis: Run, which: str = "sparse") -> pd.DataFrame:
    """Record threat: the typical altered measurement per feature and direction in clinical units (aggregates
    over the examples, no patient rows). Empty for the cell threats.

    Columns: ``direction``, ``feature``, ``unit``, ``altered``, ``median_change`` (signed), ``median_abs_change``.
    """
    table = _measurements(analysis)
    columns = ["direction", "feature", "unit", "altered", "median_change", "median_abs_change"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = table[(table["which"] == which) & (table["altered"] > 0)].sort_values(
        ["direction", "altered"], ascending=[True, False], kind="stable"
    )
    rows = rows.assign(direction=rows["direction"].map(_arrow))
    return aggregates_only(rows[columns].reset_index(drop=True))


def top_hours(analysis: Run, which: str = "sparse", *, top: int = 5) -> pd.DataFrame:
    """The ``top`` hours of the window by susceptibility Σ_j GMP·GPP, per direction.

    Columns: ``direction``, ``rank``, ``hour`` (0 = the first hour of the 48-hour window), ``susceptibility``.
    """
    hours = artifacts.read_table(analysis, "hours.parquet")
    hours = hours[(hours["which"] == which) & (hours["rank"] <= top)].sort_values(["direction", "rank"], kind="stable")
    hours["direction"] = hours["direction"].map(_arrow)
    return aggregates_only(hours[["direction", "rank", "hour", "susceptibility"]].reset_index(drop=True))


def discovery_curve(analysis: Run) -> pd.DataFrame:
    """Per direction and iteration, the cumulative share of attacked samples with a first success by then.

    Columns: ``direction``, ``iteration``, ``n_attacked``, ``first_found``, ``best_found``,
    ``cumulative_first_fraction``.
    """
    return aggregates_only(artifacts.read_table(analysis, "discovery.parquet"))


def dense_l0_share(analysis: Run) -> float:
    """The analysis run's ``analysis.dense_l0_share`` (the default for runs made before the setting existed)."""
    stored = analysis.manifest.config.get("analysis", {}).get("dense_l0_share")
    return float(stored) if isinstance(stored, int | float) else AnalysisConfig().dense_l0_share


def example_density(analysis: Run) -> pd.DataFrame:
    """How dense the successful perturbations are, per example kind and direction (``0→1``, ``1→0``, ``all``).

    Columns: ``example``, ``direction``, ``n``, ``l0_median``, ``l0_share`` (the median L0 as a share of the
    912 cells), ``first_is_best`` (share of the successful samples whose best example is their first
    successful iterate: the same L0 and L1; the same value for every example kind).
    """
    examples = artifacts.read_table(analysis, "examples.parquet")
    rows = []
    for direction in (*DIRECTION_NAMES, "all"):
        group = examples if direction == "all" else examples[examples["direction"] == direction]
        same = _first_is_best(group)
        for which in EXAMPLES:
            l0 = group.loc[group["which"] == which, "l0"]
            median = float(l0.median()) if len(l0) else float("nan")
            rows.append((which, _arrow(direction), len(l0), median, median / N_CELLS, same))
    columns = ["example", "direction", "n", "l0_median", "l0_share", "first_is_best"]
    return aggregates_only(pd.DataFrame(rows, columns=columns))


def _first_is_best(group: pd.DataFrame) -> float:
    """Share of samples whose first and best examples agree (NaN without examples).

    The analysis stage writes each kind's rows in the same sample order per direction, so the i-th first
    and the i-th best row of a direction belong to the same sample.
    """
    same, total = 0, 0
    for _, rows in group.groupby("direction", sort=False):
        first, best = rows[rows["which"] == "first"], rows[rows["which"] == "best"]
        if len(first) != len(best):
            raise DataError("analysis run: first and best examples differ in number; re-run `lstm-adv analyze`")
        equal = (first["l0"].to_numpy() == best["l0"].to_numpy()) & np.isclose(
            first["l1"].to_numpy(), best["l1"].to_numpy(), rtol=1e-6, atol=0.0
        )
        same, total = same + int(equal.sum()), total + len(first)
    return same / total if total else float("nan")


def dense_warning(analysis: Run, examples: Sequence[str] = EXAMPLES) -> str | None:
    """A caution (Markdown) when the successful perturbations shown are dense rather than sparse, else None.

    Dense: the median L0 of a shown kind of example (over both directions) exceeds ``analysis.dense_l0_share``
    of the 912 cells, or (when best examples are shown) the best example is the first successful iterate for
    most samples.
    """
    limit = dense_l0_share(analysis)
    density = example_density(analysis)
    overall = density[(density["direction"] == "all") & density["example"].isin(list(examples))]
    reasons = []
    dense = overall[overall["l0_share"] > limit]
    if not dense.empty:
        sizes = ", ".join(f"{r.example} {r.l0_median:.0f} ({r.l0_share:.0%})" for r in dense.itertuples())
        reasons.append(
            f"the median L0 of the shown examples exceeds {limit:.0%} of the {N_CELLS} cells "
            f"(the setting analysis.dense_l0_share): {sizes}"
        )
    same = float(overall["first_is_best"].iloc[0]) if len(overall) else float("nan")
    if "best" in examples and same > 0.5:
        reasons.append(
            f"for {same:.0%} of the successful samples the best example is the first successful iterate — the "
            "attack found no smaller perturbation after its first success"
        )
    if not reasons:
        return None
    return (
        "**Caution — dense perturbations:** " + "; ".join(reasons) + ". These examples change a large part of the "
        "record rather than a few cells; tune the attack (`lstm-adv tune-attack`) before reading them as sparse."
    )
