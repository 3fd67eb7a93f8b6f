"""Aggregates of query and features runs for the data report: cohort flow, class balance, missingness, coverage."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from lstm_adv.config import CohortConfig
from lstm_adv.domain.errors import DataError
from lstm_adv.domain.feature_matrix import SPLITS
from lstm_adv.results import artifacts
from lstm_adv.results.api.common import aggregates_only, parent_of, read_columns
from lstm_adv.results.artifacts import MEASUREMENT_TABLES
from lstm_adv.results.converter import structure
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import FeaturesSummary, QuerySummary, Step

DATA_KINDS = ("query", "features")

__all__ = [
    "DATA_KINDS",
    "class_balance",
    "cohort_flow",
    "coverage",
    "feature_definitions_used",
    "measurement_counts",
    "missingness",
    "samples_without_vitals",
    "stay_characteristics",
    "window_rule",
    "window_start_rule",
]


def cohort_flow(run: Run) -> pd.DataFrame:
    """Counts after each filter, from the source's ICU stays to the model's samples.

    Columns: ``stage`` (query / preprocess), ``step``, ``unit`` (ICU stays, admissions, samples),
    ``count`` (left after the step) and ``removed`` (by the step; NA where the unit changes).
    A features run starts with its parent query run's flow.
    """
    frames = []
    query = run if run.kind == "query" else parent_of(run, "query")
    if query is not None:
        frames.append(_query_flow(query.summary_as(QuerySummary).flow))
    if run.kind == "features":
        frames.append(_preprocess_flow(run.summary_as(FeaturesSummary).flow))
    if not frames:
        raise DataError(f"run {run.id} has no cohort flow in its manifest; re-run the stage that made it")
    flow = pd.concat(frames, ignore_index=True)
    return aggregates_only(flow.astype({"count": "int64", "removed": "Int64"}))


def _steps(rows: Iterable[Step]) -> pd.DataFrame:
    return pd.DataFrame([(r.step, r.count) for r in rows], columns=["step", "count"])


def _query_flow(rows: Iterable[Step]) -> pd.DataFrame:
    frame = _steps(rows)
    unit = np.where(frame["step"].eq("admissions"), "admissions", "ICU stays")
    same_unit = (unit == np.roll(unit, 1)) & (np.arange(len(frame)) > 0)
    removed = (-frame["count"].diff()).astype("Int64").where(same_unit)
    return frame.assign(stage="query", unit=unit, removed=removed)[["stage", "step", "unit", "count", "removed"]]


def _preprocess_flow(rows: Iterable[Step]) -> pd.DataFrame:
    """Preprocess rows are "admissions in", "dropped: …" (counts removed), "samples out", "positives in …"."""
    frame = _steps(rows)
    frame = frame[~frame["step"].str.startswith("positives in")].reset_index(drop=True)
    dropped = frame["step"].str.startswith("dropped: ")
    removed = frame["count"].where(dropped).astype("Int64")
    start = frame["count"].where(frame["step"].eq("admissions in")).ffill().fillna(0)
    left = (start - removed.fillna(0).astype("int64").cumsum()).astype("int64")
    count = frame["count"].where(~dropped, left)
    step = frame["step"].str.replace("dropped: ", "excluded: ", regex=False)
    unit = np.where(frame["step"].eq("samples out"), "samples", "admissions")
    return pd.DataFrame({"stage": "preprocess", "step": step, "unit": unit, "count": count, "removed": removed})


def class_balance(run: Run) -> pd.DataFrame:
    """Samples, deaths (label 1), survivors and prevalence per split (features) or of the cohort (query).

    Columns: ``split``, ``samples``, ``positives``, ``negatives``, ``prevalence``, ``patients``.
    """
    if run.kind == "features":
        rows = _split_rows(run)
    else:
        labels = read_columns(run, "admissions", ["subject_id", "label"])
        rows = [("cohort", len(labels), int(labels["label"].sum()), int(labels["subject_id"].nunique()))]
    frame = pd.DataFrame(rows, columns=["split", "samples", "positives", "patients"])
    frame.insert(3, "negatives", frame["samples"] - frame["positives"])
    frame.insert(4, "prevalence", frame["positives"] / frame["samples"].where(frame["samples"] > 0))
    return aggregates_only(frame)


def _split_rows(run: Run) -> list[tuple[str, int, int, int]]:
    summary = run.manifest.summary
    if isinstance(summary, FeaturesSummary) and all(name in summary.splits for name in SPLITS):
        counts = [summary.splits[name] for name in SPLITS]
        return [(name, c.samples, c.positives, c.subjects) for name, c in zip(SPLITS, counts, strict=True)]
    matrix = artifacts.load_features(run)
    return [
        (name, int(mask.sum()), int(matrix.labels[mask].sum()), int(np.unique(matrix.subject_ids[mask]).size))
        for name, mask in ((name, matrix.split_mask(name)) for name in SPLITS)
    ]


def missingness(run: Run) -> pd.DataFrame:
    """Missing share per feature, in model order. Columns: ``feature``, ``source``, ``unit``, ``missing``.

    For a features run: the share of (sample, hour) bins of the 48 h window without a measurement.
    For a query run: the share of cohort admissions without any exported measurement of the feature.
    """
    spec = artifacts.feature_definitions(run).to_spec()
    if run.kind == "features":
        share = pd.Series(run.summary_as(FeaturesSummary).missingness, dtype=np.float64)
    else:
        share = _admissions_without(run)
    frame = pd.DataFrame(
        {
            "feature": list(spec.names),
            "source": [f.source for f in spec.features],
            "unit": [f.unit for f in spec.features],
            "missing": share.reindex(list(spec.names)).fillna(1.0).to_numpy(dtype=np.float64),
        }
    )
    return aggregates_only(frame)


def _admissions_without(run: Run) -> pd.Series[float]:
    n_admissions = len(read_columns(run, "admissions", ["hadm_id"]))
    pairs = pd.concat([read_columns(run, name, ["hadm_id", "feature"]) for name in MEASUREMENT_TABLES])
    measured = pairs.drop_duplicates().groupby("feature", observed=True).size().astype(np.float64)
    result: pd.Series[float] = 1.0 - measured / max(n_admissions, 1)
    result.index = result.index.astype(str)
    return result


def coverage(run: Run) -> pd.DataFrame:
    """Per feature, how much was measured rather than filled, in model order.

    Columns: ``feature``, ``source``, ``unit``, ``measured`` (share of the window's (sample, hour)
    cells whose hour held a measurement), ``never measured`` (samples with no measurement of the
    feature in the window or its look-back: filling makes the whole series the training median) and
    ``never measured share``. A query run has no cells yet (``measured`` is NA) and counts the cohort's
    admissions without any exported measurement; a features run made before these counts were
    recorded has ``measured`` only.
    """
    spec = artifacts.feature_definitions(run).to_spec()
    summary = run.manifest.summary
    if isinstance(summary, FeaturesSummary) and summary.coverage is not None:
        rows = [summary.coverage[name] for name in spec.names]
        measured = pd.Series([c.measured_fraction for c in rows], dtype="Float64")
        never = pd.Series([c.unmeasured_samples for c in rows], dtype="Int64")
        total = summary.shape[0]
    elif isinstance(summary, FeaturesSummary):
        measured = 1.0 - pd.Series([summary.missingness[name] for name in spec.names], dtype="Float64")
        never, total = pd.Series([pd.NA] * len(spec.names), dtype="Int64"), summary.shape[0]
    else:
        total = len(read_columns(run, "admissions", ["hadm_id"]))
        share = _admissions_without(run).reindex(list(spec.names)).fillna(1.0)
        never = (share * total).round().astype("Int64").reset_index(drop=True)
        measured = pd.Series([pd.NA] * len(spec.names), dtype="Float64")
    frame = pd.DataFrame(
        {
            "feature": list(spec.names),
            "source": [f.source for f in spec.features],
            "unit": [f.unit for f in spec.features],
            "measured": measured,
            "never measured": never,
            "never measured share": never / max(total, 1),
        }
    )
    return aggregates_only(frame)


def samples_without_vitals(run: Run) -> int | None:
    """Samples of a features run with no vital sign measured in the window or its look-back (None if not recorded)."""
    summary = run.manifest.summary
    return summary.samples_without_vitals if isinstance(summary, FeaturesSummary) else None


def feature_definitions_used(run: Run) -> pd.DataFrame:
    """Which feature definitions the data were made with: file name and SHA-256 (``property``, ``value``)."""
    definitions = artifacts.feature_definitions(run)
    rows = [("feature definitions", definitions.name), ("SHA-256", definitions.sha256)]
    return aggregates_only(pd.DataFrame(rows, columns=["property", "value"]))


def window_start_rule(run: Run) -> str:
    """Where each admission's window starts, in words, as the query run recorded it."""
    query = run if run.kind == "query" else parent_of(run, "query")
    summary = query.manifest.summary if query is not None else None
    if isinstance(summary, QuerySummary) and summary.window_start is not None:
        return summary.window_start
    return "the earliest ICU intime among the admission's included stays (not recorded by this older run)"


def measurement_counts(run: Run) -> pd.DataFrame:
    """Measurement rows per table (query) or per preprocessing step (features). Columns: ``step``, ``count``."""
    if run.kind == "features":
        rows = [(r.step, r.count) for r in run.summary_as(FeaturesSummary).measurements]
    else:
        rows = [(f"{name} rows", int(n)) for name, n in run.summary_as(QuerySummary).tables.items()]
    return aggregates_only(pd.DataFrame(rows, columns=["step", "count"]))


def window_rule(run: Run) -> str | None:
    """The preprocessing window rule in words (features runs), else None."""
    summary = run.manifest.summary
    return summary.window_rule if isinstance(summary, FeaturesSummary) else None


def stay_characteristics(run: Run) -> pd.DataFrame:
    """The ICU stays the query read, included vs excluded by the run's inclusion rules: how many, how old,
    how long, how many died (medians with quartiles; a features run shows its query run's stays).

    Columns: ``stays``, ``ICU stays``, ``age (years)``, ``ICU stay (days)``, ``hospital stay (days)``, ``deaths``.
    """
    query = run if run.kind == "query" else parent_of(run, "query")
    if query is None:
        raise DataError(f"run {run.id} has lost its query run; the stays come from it")
    cohort = structure(query.manifest.config.get("cohort", {}), CohortConfig)
    stays = artifacts.read_stays(query)
    rules = {
        "min_age_years": cohort.min_age_years,
        "min_hospital_los_days": cohort.min_hospital_los_days,
        "min_icu_los_days": cohort.min_icu_los_days,
    }
    rows = []
    for label, keep in (("included", True), ("excluded", False)):
        group = [s for s in stays if s.meets(**rules) == keep]
        rows.append(
            {
                "stays": label,
                "ICU stays": len(group),
                "age (years)": _quartiles([s.age_years for s in group]),
                "ICU stay (days)": _quartiles([s.icu_los_days for s in group]),
                "hospital stay (days)": _quartiles([s.hospital_los_days for s in group]),
                "deaths": sum(s.hospital_expire_flag for s in group),
            }
        )
    return aggregates_only(pd.DataFrame(rows))


def _quartiles(values: list[float]) -> str:
    """``median [q1, q3]``, or — without values."""
    if not values:
        return "—"
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return f"{median:.1f} [{q1:.1f}, {q3:.1f}]"
