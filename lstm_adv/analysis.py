"""The analysis stage: how large, how sparse and where an attack's successful perturbations are.

Statistics are taken over the successful samples of an attack run, separately for the *first* and the
*best* successful iterate and for each direction of the flip (``0to1``: predicted 0 at δ = 0, so the
attack made it 1; ``1to0`` the reverse). The direction is the model's prediction at δ = 0, which for
correctly classified samples is the label.

Per cell (hour i, feature j), over the n examples of one group:

- GMP  = max |δ_ij|,
- GPP  = fraction of examples with δ_ij ≠ 0,
- GANZP = mean |δ_ij| over the examples where it is non-zero; **0 where no example changed the cell**
  (``n_nonzero`` in ``cells.parquet`` tells those cells apart),
- GAP  = mean |δ_ij| over all n examples (a 48 × 19 matrix, never a scalar),
- sensitivity = GPP / GANZP, **0 where GANZP = 0**,
- feature susceptibility S_j = Σ_i GMP_ij · GPP_ij (Sun et al. 2018) and hour susceptibility
  Σ_j GMP_ij · GPP_ij, ranked descending (ties keep feature / hour order).

Per-cell statistics and S_j are taken on the change of the **model input** (for the record threat:
``fill(record + δ) − fill(record)``); per-example L0, L1, L∞ count the attack's own unit — altered
measurements for the record threat, changed cells otherwise — and ``input_l0`` the input cells moved.
For the record threat, ``measurements.parquet`` gives per feature the share of altered measurements,
altered ÷ available measurements (per-opportunity rate), leverage and the median change in clinical
units, and ``measurement_hours.parquet`` the hour of each altered measurement
(:mod:`lstm_adv.measurements`); both are empty for the cell threats. S_j, success rates, median L0 and
the measurement scores carry 95 % percentile-bootstrap intervals over the examples
(``analysis.bootstrap_samples``).

Every statistic is in the scaled units of the FeatureMatrix except ``clinical.parquet``,
``mean_clinical_abs_delta`` and the measurements' changes, which are |δ| · (p95 − p5) in the feature's
clinical unit. Groups without
examples (e.g. no ``1to0`` success) have no rows in the per-cell, feature, hour and clinical tables.
The tables carry no sample, subject or admission ids; only per-example norms and aggregates.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
import pandas as pd

from lstm_adv import uncertainty
from lstm_adv.config import AnalysisConfig, AttackConfig, Config
from lstm_adv.domain.errors import DataError
from lstm_adv.domain.feature_matrix import FeatureMatrix, ScalingStats
from lstm_adv.domain.features import FeatureSpec
from lstm_adv.domain.perturbation import DIRECTION_LABELS, DIRECTIONS, AttackBatchResult
from lstm_adv.domain.perturbation import EXAMPLES as WHICH
from lstm_adv.domain.shapes import N_FEATURES, N_HOURS
from lstm_adv.measurements import (
    MEASUREMENT_COLUMNS,
    measurement_hours_table,
    measurements_table,
    rank_descending,
    susceptibility_interval,
)
from lstm_adv.resources import load_feature_spec
from lstm_adv.results import artifacts
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.converter import structure
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import AnalysisSummary, AttackSummary, DirectionCounts, Estimate

log = logging.getLogger(__name__)

__all__ = ["DIRECTIONS", "DIRECTION_LABELS", "WHICH", "AnalysisTables", "analyse_attack", "run_analysis"]
TABLES = ("examples", "cells", "features", "hours", "clinical", "discovery", "measurements", "measurement_hours")
#: Tables an analysis run made before the record threat lacks (read as empty tables).
RECORD_TABLES = ("measurements", "measurement_hours")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# --- per example and per cell ---------------------------------------------------------------------


@attrs.frozen
class ExampleStats:
    """Norms of each example's δ. Shape of each array: (n,)."""

    l0: IntArray
    l1: FloatArray
    linf: FloatArray
    mean_nonzero: FloatArray


def example_stats(deltas: npt.NDArray[np.floating[Any]]) -> ExampleStats:
    """L0, L1 = Σ|δ|, L∞ and mean non-zero |δ| (0 for δ = 0) per example. Shape: deltas (n, 48, 19)."""
    magnitude = np.abs(deltas, dtype=np.float64)
    l0 = np.count_nonzero(deltas, axis=(1, 2)).astype(np.int64)
    l1 = magnitude.sum(axis=(1, 2))
    linf = magnitude.max(axis=(1, 2), initial=0.0)
    mean_nonzero = np.divide(l1, l0, out=np.zeros_like(l1), where=l0 > 0)
    return ExampleStats(l0=l0, l1=l1, linf=linf, mean_nonzero=mean_nonzero)


@attrs.frozen
class CellStats:
    """Per-cell statistics over ``n_examples`` examples. Shape of each matrix: (48, 19) float64."""

    n_examples: int
    gmp: FloatArray
    gpp: FloatArray
    ganzp: FloatArray
    gap: FloatArray
    n_nonzero: IntArray

    @property
    def sensitivity(self) -> FloatArray:
        """GPP / GANZP per cell, 0 where GANZP = 0. Shape: (48, 19)."""
        return np.divide(self.gpp, self.ganzp, out=np.zeros_like(self.gpp), where=self.ganzp > 0)

    @property
    def feature_susceptibility(self) -> FloatArray:
        """S_j = Σ_i GMP_ij · GPP_ij (Sun et al.). Shape: (19,)."""
        result: FloatArray = (self.gmp * self.gpp).sum(axis=0)
        return result

    @property
    def hour_susceptibility(self) -> FloatArray:
        """Σ_j GMP_ij · GPP_ij. Shape: (48,)."""
        result: FloatArray = (self.gmp * self.gpp).sum(axis=1)
        return result


def cell_stats(deltas: npt.NDArray[np.floating[Any]]) -> CellStats:
    """GMP, GPP, GANZP (0 where no example changed the cell) and GAP. Shape: deltas (n, 48, 19), n ≥ 1."""
    n = deltas.shape[0]
    if n == 0:
        raise DataError("cell statistics need at least one example; got an empty (0, 48, 19) array")
    magnitude = np.abs(deltas, dtype=np.float64)
    n_nonzero = np.count_nonzero(deltas, axis=0).astype(np.int64)
    total = magnitude.sum(axis=0)
    return CellStats(
        n_examples=n,
        gmp=magnitude.max(axis=0),
        gpp=n_nonzero / n,
        ganzp=np.divide(total, n_nonzero, out=np.zeros_like(total), where=n_nonzero > 0),
        gap=total / n,
        n_nonzero=n_nonzero,
    )


@attrs.frozen
class ClinicalStats:
    """|δ| in clinical units over the non-zero cells of each feature (0 where none). Shape of each: (19,)."""

    n_nonzero: IntArray
    median: FloatArray
    mean: FloatArray
    max: FloatArray


def clinical_stats(deltas: npt.NDArray[np.floating[Any]], scaling: ScalingStats) -> ClinicalStats:
    """Typical perturbation per feature in clinical units, |δ| · (p95 − p5). Shape: deltas (n, 48, 19)."""
    flat = deltas.reshape(-1, N_FEATURES)
    nonzero = flat != 0
    counts = nonzero.sum(axis=0).astype(np.int64)
    clinical = np.abs(scaling.to_clinical(flat))
    total = np.where(nonzero, clinical, 0.0).sum(axis=0)
    masked = np.where(nonzero, clinical, np.nan)
    masked[:, counts == 0] = 0.0  # a feature never changed reports 0 (its count says so) without NaN warnings
    return ClinicalStats(
        n_nonzero=counts,
        median=np.nanmedian(masked, axis=0) if flat.shape[0] else np.zeros(N_FEATURES),
        mean=np.divide(total, counts, out=np.zeros_like(total), where=counts > 0),
        max=clinical.max(axis=0, initial=0.0),
    )


# --- groups: first / best × direction ---------------------------------------------------------------


@attrs.frozen
class Group:
    """The successful examples of one (which, direction). Shapes: deltas (n, 48, 19) (the model input's change),
    iterations (n,); for the record threat record_deltas (n, 49, 19) and available (n, 49, 19): the entries
    the threat could alter."""

    which: str
    direction: str
    deltas: npt.NDArray[np.float32]
    iterations: IntArray
    observed: npt.NDArray[np.bool_] | None = None
    record_deltas: npt.NDArray[np.float32] | None = None
    available: npt.NDArray[np.bool_] | None = None

    @property
    def n(self) -> int:
        """Number of examples."""
        return int(self.deltas.shape[0])

    @property
    def variables(self) -> npt.NDArray[np.float32]:
        """What the attack changed: the record change (record threat), else the input change."""
        return self.deltas if self.record_deltas is None else self.record_deltas


def direction_codes(result: AttackBatchResult) -> npt.NDArray[np.str_]:
    """``0to1`` where the prediction at δ = 0 is 0, else ``1to0``. Shape: (N,)."""
    return np.where(result.predicted == 0, DIRECTIONS[0], DIRECTIONS[1])


def split_groups(
    result: AttackBatchResult,
    observed: npt.NDArray[np.bool_] | None = None,
    available: npt.NDArray[np.bool_] | None = None,
) -> list[Group]:
    """The six groups (first, best, sparse) × (0to1, 1to0) of successful examples, in that order; some may be
    empty. ``observed`` (the result's rows' observation masks, (N, 48, 19)) marks the measured cells;
    ``available`` (N, 49, 19), for the record threat, the entries it could alter."""
    directions = direction_codes(result)
    groups = []
    for which in WHICH:
        deltas = result.deltas(which)
        records = result.record_deltas(which) if result.record_space else None
        iterations = result.first_iteration if which == "first" else result.best_iteration
        for direction in DIRECTIONS:
            rows = result.found & (directions == direction)
            masks = None if observed is None else observed[rows]
            group = Group(which, direction, deltas[rows], iterations[rows], masks)
            if records is not None:
                chances = available[rows] if available is not None else np.ones(records[rows].shape, dtype=bool)
                group = attrs.evolve(group, record_deltas=records[rows], available=chances)
            groups.append(group)
    return groups


# --- tables -----------------------------------------------------------------------------------------


@attrs.frozen
class AnalysisTables:
    """Every table of an analysis run (see the module docstring), without ids."""

    examples: pd.DataFrame
    cells: pd.DataFrame
    features: pd.DataFrame
    hours: pd.DataFrame
    clinical: pd.DataFrame
    discovery: pd.DataFrame
    measurements: pd.DataFrame
    measurement_hours: pd.DataFrame

    def as_dict(self) -> dict[str, pd.DataFrame]:
        """Table name → DataFrame, in :data:`TABLES` order."""
        return {name: getattr(self, name) for name in TABLES}


def _keys(group: Group, length: int) -> dict[str, Any]:
    return {"which": [group.which] * length, "direction": [group.direction] * length}


def examples_table(group: Group) -> pd.DataFrame:
    """One row per example: which, direction, l0, l1, linf, mean_nonzero (in the attack's unit: altered
    measurements for the record threat), input_l0 (model-input cells moved), iteration, measured (moved
    input cells that held a real measurement; NA without an observation mask)."""
    stats = example_stats(group.variables)
    measured = (
        pd.array([pd.NA] * group.n, dtype="Int64")
        if group.observed is None
        else pd.array(np.count_nonzero((group.deltas != 0) & group.observed, axis=(1, 2)), dtype="Int64")
    )
    return pd.DataFrame(
        _keys(group, group.n)
        | {"l0": stats.l0, "l1": stats.l1, "linf": stats.linf, "mean_nonzero": stats.mean_nonzero}
        | {"input_l0": np.count_nonzero(group.deltas, axis=(1, 2)).astype(np.int64)}
        | {"iteration": group.iterations.astype(np.int64), "measured": measured}
    )


def cells_table(group: Group, stats: CellStats, names: tuple[str, ...]) -> pd.DataFrame:
    """One row per (hour, feature), hour-major: GMP, GPP, GANZP, GAP, sensitivity, n_nonzero, n_examples."""
    hours, features = np.divmod(np.arange(N_HOURS * N_FEATURES), N_FEATURES)
    columns = {"gmp": stats.gmp, "gpp": stats.gpp, "ganzp": stats.ganzp, "gap": stats.gap}
    return pd.DataFrame(
        _keys(group, hours.size)
        | {"hour": hours.astype(np.int64), "feature": np.asarray(names)[features]}
        | {name: matrix.ravel() for name, matrix in columns.items()}
        | {"sensitivity": stats.sensitivity.ravel(), "n_nonzero": stats.n_nonzero.ravel()}
        | {"n_examples": np.full(hours.size, stats.n_examples, dtype=np.int64)}
    )


def features_table(
    group: Group,
    stats: CellStats,
    clinical: ClinicalStats,
    units: tuple[str, ...],
    names: tuple[str, ...],
    config: AnalysisConfig,
) -> pd.DataFrame:
    """One row per feature in model order: S_j with its bootstrap interval, its rank, mean GPP over hours, mean
    clinical |δ| and unit."""
    susceptibility = stats.feature_susceptibility
    low, high = susceptibility_interval(
        group.deltas, samples=config.bootstrap_samples, seed=config.seed, confidence=config.confidence
    )
    return pd.DataFrame(
        _keys(group, N_FEATURES)
        | {"feature": list(names), "unit": list(units), "susceptibility": susceptibility}
        | {"susceptibility_low": low, "susceptibility_high": high}
        | {"rank": rank_descending(susceptibility), "mean_gpp": stats.gpp.mean(axis=0)}
        | {"mean_clinical_abs_delta": clinical.mean}
    )


def hours_table(group: Group, stats: CellStats) -> pd.DataFrame:
    """One row per hour: Σ_j GMP·GPP and its rank."""
    susceptibility = stats.hour_susceptibility
    return pd.DataFrame(
        _keys(group, N_HOURS)
        | {"hour": np.arange(N_HOURS, dtype=np.int64), "susceptibility": susceptibility}
        | {"rank": rank_descending(susceptibility)}
    )


def clinical_table(
    group: Group, clinical: ClinicalStats, scaling: ScalingStats, units: tuple[str, ...]
) -> pd.DataFrame:
    """One row per feature: |δ| in clinical units over its non-zero cells (median, mean, max) and p95 − p5."""
    return pd.DataFrame(
        _keys(group, N_FEATURES)
        | {"feature": list(scaling.feature_names), "unit": list(units), "span": scaling.span}
        | {"n_nonzero": clinical.n_nonzero, "median_abs_delta": clinical.median}
        | {"mean_abs_delta": clinical.mean, "max_abs_delta": clinical.max}
    )


def discovery_table(result: AttackBatchResult) -> pd.DataFrame:
    """Per direction and iteration 1..budget: first and best successes found there, and the cumulative
    fraction of attacked samples with a first success by then (0 for a direction with none attacked)."""
    directions = direction_codes(result)
    iterations = np.arange(1, result.iterations + 1, dtype=np.int64)
    frames = []
    for direction in DIRECTIONS:
        rows = result.found & (directions == direction)
        attacked = int((result.attacked & (directions == direction)).sum())
        first = np.bincount(result.first_iteration[rows], minlength=result.iterations + 1)[1:]
        best = np.bincount(result.best_iteration[rows], minlength=result.iterations + 1)[1:]
        cumulative = np.cumsum(first) / attacked if attacked else np.zeros(iterations.size)
        frames.append(
            pd.DataFrame(
                {
                    "direction": direction,
                    "iteration": iterations,
                    "n_attacked": attacked,
                    "first_found": first.astype(np.int64),
                    "best_found": best.astype(np.int64),
                    "cumulative_first_fraction": cumulative,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _feature_units(names: tuple[str, ...]) -> tuple[str, ...]:
    units = {feature.name: feature.unit for feature in load_feature_spec().features}
    return tuple(units.get(name, "") for name in names)


def analyse_attack(
    result: AttackBatchResult,
    scaling: ScalingStats,
    *,
    units: tuple[str, ...] | None = None,
    observed: npt.NDArray[np.bool_] | None = None,
    available: npt.NDArray[np.bool_] | None = None,
    config: AnalysisConfig | None = None,
) -> AnalysisTables:
    """All tables of one attack's successful examples (pure; no I/O). Needs at least one success.

    ``units``: the features' clinical units (default: the shipped definitions'); ``observed``: the
    observation masks of the result's rows (N, 48, 19), to count the changed cells that were measured;
    ``available`` (N, 49, 19): for the record threat, the entries of each row's record it could alter
    (default: every entry); ``config``: the bootstrap settings (default: ``[analysis]``'s defaults).
    """
    if not result.found.any():
        raise DataError("an attack result without successful examples has nothing to analyse")
    config = config or AnalysisConfig()
    names = scaling.feature_names
    units = units or _feature_units(names)
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES if name != "discovery"}
    for group in split_groups(result, observed, available):
        parts["examples"].append(examples_table(group))
        if group.n == 0:
            continue
        stats, clinical = cell_stats(group.deltas), clinical_stats(group.deltas, scaling)
        parts["cells"].append(cells_table(group, stats, names))
        parts["features"].append(features_table(group, stats, clinical, units, names, config))
        parts["hours"].append(hours_table(group, stats))
        parts["clinical"].append(clinical_table(group, clinical, scaling, units))
        if group.record_deltas is not None and group.available is not None:
            table = measurements_table(
                group.record_deltas,
                group.deltas,
                group.available,
                scaling,
                units,
                samples=config.bootstrap_samples,
                seed=config.seed,
                confidence=config.confidence,
            )
            parts["measurements"].append(pd.DataFrame(_keys(group, N_FEATURES)).join(table))
            hours = measurement_hours_table(group.record_deltas)
            parts["measurement_hours"].append(pd.DataFrame(_keys(group, len(hours))).join(hours))
    empty = {
        "measurements": pd.DataFrame(columns=["which", "direction", *MEASUREMENT_COLUMNS]),
        "measurement_hours": pd.DataFrame(columns=["which", "direction", "hour", "altered", "share"]),
    }
    tables = {name: pd.concat(frames, ignore_index=True) if frames else empty[name] for name, frames in parts.items()}
    return AnalysisTables(discovery=discovery_table(result), **tables)


# --- summary ----------------------------------------------------------------------------------------


def _mean_or_none(values: pd.Series) -> float | None:
    return float(values.mean()) if len(values) else None


def _measured_share(examples: pd.DataFrame, which: str, direction: str) -> float | None:
    """Share of the moved input cells of one group that held a real measurement (None without a mask or examples)."""
    rows = examples[(examples["which"] == which) & ((examples["direction"] == direction) | (direction == "all"))]
    changed = int(rows["input_l0"].sum())
    if changed == 0 or rows["measured"].isna().any():
        return None
    return float(rows["measured"].sum()) / changed


def _median_or_none(examples: pd.DataFrame, which: str, direction: str) -> float | None:
    rows = examples[(examples["which"] == which) & ((examples["direction"] == direction) | (direction == "all"))]
    return float(rows["l0"].median()) if len(rows) else None


def _top(table: pd.DataFrame, which: str, direction: str, column: str, k: int) -> tuple[Any, ...]:
    """The ``k`` first-ranked features (or hours) of a group that the examples changed at all (S > 0)."""
    rows = table[(table["which"] == which) & (table["direction"] == direction) & (table["susceptibility"] > 0)]
    rows = rows.sort_values("rank").head(k)
    return tuple(item.item() if isinstance(item, np.generic) else item for item in rows[column])


def _top_per_opportunity(table: pd.DataFrame, direction: str, k: int) -> tuple[str, ...]:
    """The ``k`` features of the sparse examples with the highest per-opportunity rate (altered at all)."""
    rows = table[(table["which"] == "sparse") & (table["direction"] == direction) & (table["altered"] > 0)]
    return tuple(str(name) for name in rows.sort_values("per_opportunity_rank").head(k)["feature"])


def _intervals(result: AttackBatchResult, config: AnalysisConfig) -> tuple[Estimate, Estimate]:
    """Success rate and median L0 of the sparse examples, each with its bootstrap interval."""
    samples, seed, confidence = config.bootstrap_samples, config.seed, config.confidence
    success = uncertainty.rate_estimate(
        int(result.found.sum()), int(result.attacked.sum()), samples=samples, seed=seed, confidence=confidence
    )
    median = uncertainty.median_estimate(
        result.l0("sparse")[result.found], samples=samples, seed=seed, confidence=confidence
    )
    return success, median


def summarize(
    result: AttackBatchResult,
    tables: AnalysisTables,
    *,
    top_k: int,
    attack: Run,
    features_run: Run,
    figures: tuple[str, ...] = (),
    config: AnalysisConfig | None = None,
) -> AnalysisSummary:
    """The run summary: counts and success rate per direction (with intervals), mean L0/L1, top features and
    hours; for the record threat the leverage and the features with the highest per-opportunity rate."""
    directions = direction_codes(result)
    per_direction = {}
    for direction in DIRECTIONS:
        attacked = int((result.attacked & (directions == direction)).sum())
        found = int((result.found & (directions == direction)).sum())
        per_direction[direction] = DirectionCounts(attacked, found, found / attacked if attacked else 0.0)
    examples = tables.examples
    means: dict[str, dict[str, dict[str, float | None]]] = {"l0": {}, "l1": {}}
    for norm in means:
        for which in WHICH:
            rows = examples[examples["which"] == which]
            means[norm][which] = {"all": _mean_or_none(rows[norm])} | {
                d: _mean_or_none(rows.loc[rows["direction"] == d, norm]) for d in DIRECTIONS
            }
    measured: dict[str, dict[str, float | None]] = {
        which: {d: _measured_share(examples, which, d) for d in (*DIRECTIONS, "all")} for which in WHICH
    }
    summary = attack.manifest.summary
    decision, threshold = (
        (summary.decision, summary.threshold) if isinstance(summary, AttackSummary) else (result.rule.rule, 0.5)
    )
    success, median_l0 = _intervals(result, config or AnalysisConfig())
    sparse = examples[examples["which"] == "sparse"]
    leverage = float((sparse["input_l0"] / sparse["l0"]).median()) if result.record_space and len(sparse) else None
    return AnalysisSummary(
        attack_run=attack.id,
        features_run=features_run.id,
        decision=decision,
        threshold=threshold,
        cells=summary.cells if isinstance(summary, AttackSummary) else "all",
        measured_fraction=measured,
        median_l0={w: {d: _median_or_none(examples, w, d) for d in (*DIRECTIONS, "all")} for w in WHICH},
        n_samples=result.n,
        n_attacked=int(result.attacked.sum()),
        n_successful=int(result.found.sum()),
        success_rate=result.success_rate,
        directions=per_direction,
        mean_l0=means["l0"],
        mean_l1=means["l1"],
        top_features={w: {d: _top(tables.features, w, d, "feature", top_k) for d in DIRECTIONS} for w in WHICH},
        top_hours={w: {d: _top(tables.hours, w, d, "hour", top_k) for d in DIRECTIONS} for w in WHICH},
        figures=figures,
        unit=result.unit,
        success=success,
        median_l0_sparse=median_l0,
        leverage=leverage,
        top_per_opportunity={d: _top_per_opportunity(tables.measurements, d, top_k) for d in DIRECTIONS}
        if result.record_space
        else {},
    )


# --- the run ------------------------------------------------------------------------------------------


def load_attack_inputs(store: RunStore, attack: Run) -> tuple[AttackBatchResult, FeatureMatrix, Run]:
    """The attack's results, the FeatureMatrix it attacked (for scaling statistics) and its features run."""
    summary = attack.manifest.summary
    if not isinstance(summary, AttackSummary):
        raise DataError(
            f"attack run {attack.id} does not name its features run (it has no attack summary); "
            "re-run `lstm-adv attack`"
        )
    result = artifacts.load_attack_result(attack)
    features_run = store.get(str(summary.features_run), kind="features")
    matrix = artifacts.load_features(features_run)
    if result.n and int(result.sample_index.max()) >= matrix.n_samples:
        raise DataError(
            f"attack run {attack.id} refers to sample {int(result.sample_index.max())}, but features run "
            f"{features_run.id} has only {matrix.n_samples} samples; the runs do not belong together"
        )
    return result, matrix, features_run


def _available(
    attack: Run, matrix: FeatureMatrix, spec: FeatureSpec, result: AttackBatchResult
) -> npt.NDArray[np.bool_]:
    """The record entries the attack's threat could alter in each result row (its ``[attack]`` settings)."""
    from lstm_adv.targets import attack_surface

    settings = structure(attack.manifest.config.get("attack", {}), AttackConfig)
    editable = attack_surface(settings, matrix, spec).editable(result.sample_index)
    assert editable is not None  # the record threat always says what each row may alter
    return editable


def run_analysis(store: RunStore, attack_ref: str | None, config: Config) -> Run:
    """Analyse attack run ``attack_ref`` (id, prefix, or the latest) into a new analysis run.

    Writes ``<table>.parquet`` for every name in :data:`TABLES` and ``figures/<name>.png`` / ``.svg``.
    An attack without any successful example is a :class:`DataError` and writes no run.
    """
    from lstm_adv.figures import write_figures  # matplotlib is imported only when figures are drawn

    attack = store.resolve(attack_ref, "attack")
    result, matrix, features_run = load_attack_inputs(store, attack)
    if not result.found.any():
        raise DataError(
            f"attack run {attack.id} has no successful examples ({int(result.attacked.sum())} attacked); "
            "nothing to analyse. Attack more samples or with a larger budget"
        )
    definitions = artifacts.feature_definitions(features_run).to_spec()
    units = tuple(definitions.features[definitions.index(name)].unit for name in matrix.feature_names)
    observed = None if matrix.observed is None else matrix.observed[result.sample_index]
    available = _available(attack, matrix, definitions, result) if result.record_space else None
    tables = analyse_attack(
        result, matrix.scaling, units=units, observed=observed, available=available, config=config.analysis
    )
    with store.create("analysis", parents=[attack.id], config=config_as_dict(config)) as writer:
        for name, table in tables.as_dict().items():
            artifacts.write_table(writer.file(f"{name}.parquet"), table)
        figures = write_figures(
            tables.as_dict(), writer.path / artifacts.FIGURES_DIR, config.analysis, unit=result.unit
        )
        writer.summary = summarize(
            result,
            tables,
            top_k=config.analysis.top_k,
            attack=attack,
            features_run=features_run,
            figures=tuple(figures),
            config=config.analysis,
        )
        run = writer.commit()
    log.info("analysis run %s: %d successful examples of attack %s", run.id, int(result.found.sum()), attack.id)
    return run
