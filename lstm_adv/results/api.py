"""The read-only results API that reports use: a run's stored tables and metrics, as aggregates.

Reports (``reports/*.qmd``) compute nothing new: they call these functions with a run id and show
what comes back. Nothing here returns a patient-level row, an identifier (subject, admission, stay)
or a time; every frame is checked for such columns before it leaves (:func:`aggregates_only`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from lstm_adv.domain.errors import DataError, RunKindError
from lstm_adv.domain.feature_matrix import SPLITS, FeatureMatrix
from lstm_adv.resources import load_feature_spec
from lstm_adv.results.store import Run, RunStore
from lstm_adv.workspace import DEFAULT_HOME, HOME_ENV, Workspace

DATA_KINDS = ("query", "features")
MEASUREMENT_TABLES = ("vitals", "labs", "bloodgas")
_FORBIDDEN = ("subject_id", "hadm_id", "icustay_id", "row_id")
_TIME_WORDS = ("time", "intime", "outtime", "date", "window_start")


def locate_home(home: str | Path | None = None) -> Path:
    """The workspace home: ``home``, else ``$LSTM_ADV_HOME``, else the nearest ``.lstm-adv`` above the cwd.

    Quarto runs a document from its own folder (``reports/``), so a plain ``./.lstm-adv`` would miss the
    workspace of the project root; looking upwards finds it.
    """
    if home is not None or os.environ.get(HOME_ENV):
        return Workspace.locate(Path(home) if home is not None else None).home
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if (folder / DEFAULT_HOME).is_dir():
            return folder / DEFAULT_HOME
    return Workspace.locate(None).home


def load_run(run_id: str, home: str | Path | None = None, *, kinds: Sequence[str] | None = None) -> Run:
    """The run ``run_id`` (id or unique prefix) of the workspace at ``home``; ``kinds`` checks its kind."""
    store = RunStore(locate_home(home) / "runs")
    run = store.get(str(run_id))
    if kinds is not None and run.kind not in kinds:
        raise RunKindError(f"run {run.id} is a {run.kind} run; this report needs a {' or '.join(kinds)} run")
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
    if "source" in summary:
        rows.append(("source", str(summary["source"])))
    if "shape" in summary:
        rows.append(("tensor shape (N, hours, features)", " × ".join(str(n) for n in summary["shape"])))
    return aggregates_only(pd.DataFrame(rows, columns=["property", "value"]))


def cohort_flow(run: Run) -> pd.DataFrame:
    """Counts after each filter, from the source's ICU stays to the model's samples.

    Columns: ``stage`` (query / preprocess), ``step``, ``unit`` (ICU stays, admissions, samples),
    ``count`` (left after the step) and ``removed`` (by the step; NA where the unit changes).
    A features run starts with its parent query run's flow.
    """
    frames = []
    query = run if run.kind == "query" else parent_of(run, "query")
    if query is not None:
        frames.append(_query_flow(query.manifest.summary.get("flow", [])))
    if run.kind == "features":
        frames.append(_preprocess_flow(run.manifest.summary.get("flow", [])))
    if not frames:
        raise DataError(f"run {run.id} has no cohort flow in its manifest; re-run the stage that made it")
    flow = pd.concat(frames, ignore_index=True)
    return aggregates_only(flow.astype({"count": "int64", "removed": "Int64"}))


def _query_flow(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=["step", "count"])
    unit = np.where(frame["step"].eq("admissions"), "admissions", "ICU stays")
    same_unit = (unit == np.roll(unit, 1)) & (np.arange(len(frame)) > 0)
    removed = (-frame["count"].diff()).astype("Int64").where(same_unit)
    return frame.assign(stage="query", unit=unit, removed=removed)[["stage", "step", "unit", "count", "removed"]]


def _preprocess_flow(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Preprocess rows are "admissions in", "dropped: …" (counts removed), "samples out", "positives in …"."""
    frame = pd.DataFrame(list(rows), columns=["step", "count"])
    frame = frame[~frame["step"].str.startswith("positives in")].reset_index(drop=True)
    dropped = frame["step"].str.startswith("dropped: ")
    removed = frame["count"].where(dropped).astype("Int64")
    start = frame["count"].where(frame["step"].eq("admissions in")).ffill().fillna(0)
    left = (start - removed.fillna(0).astype("int64").cumsum()).astype("int64")
    count = frame["count"].where(~dropped, left)
    step = frame["step"].str.replace("dropped: ", "excluded: ", regex=False)
    unit = np.where(frame["step"].eq("samples out"), "samples", "admissions")
    return pd.DataFrame(
        {"stage": "preprocess", "step": step, "unit": unit, "count": count, "removed": removed}
    )


def class_balance(run: Run) -> pd.DataFrame:
    """Samples, deaths (label 1), survivors and prevalence per split (features) or of the cohort (query).

    Columns: ``split``, ``samples``, ``positives``, ``negatives``, ``prevalence``, ``patients``.
    """
    if run.kind == "features":
        rows = _split_rows(run)
    else:
        labels = _read_columns(run, "admissions", ["subject_id", "label"])
        rows = [("cohort", len(labels), int(labels["label"].sum()), int(labels["subject_id"].nunique()))]
    frame = pd.DataFrame(rows, columns=["split", "samples", "positives", "patients"])
    frame.insert(3, "negatives", frame["samples"] - frame["positives"])
    frame.insert(4, "prevalence", frame["positives"] / frame["samples"].where(frame["samples"] > 0))
    return aggregates_only(frame)


def _split_rows(run: Run) -> list[tuple[str, int, int, int]]:
    splits = run.manifest.summary.get("splits")
    if isinstance(splits, dict) and all(name in splits for name in SPLITS):
        return [(name, int(splits[name]["samples"]), int(splits[name]["positives"]), int(splits[name]["subjects"]))
                for name in SPLITS]  # fmt: skip
    matrix = FeatureMatrix.from_npz(run.file("features.npz"))
    return [
        (name, int(mask.sum()), int(matrix.labels[mask].sum()), int(np.unique(matrix.subject_ids[mask]).size))
        for name, mask in ((name, matrix.split_mask(name)) for name in SPLITS)
    ]


def missingness(run: Run) -> pd.DataFrame:
    """Missing share per feature, in model order. Columns: ``feature``, ``source``, ``unit``, ``missing``.

    For a features run: the share of (sample, hour) bins of the 48 h window without a measurement.
    For a query run: the share of cohort admissions without any exported measurement of the feature.
    """
    spec = load_feature_spec()
    if run.kind == "features":
        stored = run.manifest.summary.get("missingness")
        if not isinstance(stored, dict):
            raise DataError(f"features run {run.id} has no missingness in its manifest; re-run `lstm-adv preprocess`")
        share = pd.Series({str(k): float(v) for k, v in stored.items()})
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
    n_admissions = len(_read_columns(run, "admissions", ["hadm_id"]))
    pairs = pd.concat([_read_columns(run, name, ["hadm_id", "feature"]) for name in MEASUREMENT_TABLES])
    measured = pairs.drop_duplicates().groupby("feature", observed=True).size().astype(np.float64)
    result: pd.Series[float] = 1.0 - measured / max(n_admissions, 1)
    result.index = result.index.astype(str)
    return result


def measurement_counts(run: Run) -> pd.DataFrame:
    """Measurement rows per table (query) or per preprocessing step (features). Columns: ``step``, ``count``."""
    summary = run.manifest.summary
    if run.kind == "features":
        rows = [(str(r["step"]), int(r["count"])) for r in summary.get("measurements", [])]
    else:
        rows = [(f"{name} rows", int(n)) for name, n in summary.get("tables", {}).items()]
    return aggregates_only(pd.DataFrame(rows, columns=["step", "count"]))


def window_rule(run: Run) -> str | None:
    """The preprocessing window rule in words (features runs), else None."""
    rule = run.manifest.summary.get("window_rule")
    return str(rule) if rule is not None else None


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


def _read_columns(run: Run, table: str, columns: list[str]) -> pd.DataFrame:
    """Selected columns of a stored parquet table, for aggregation inside this module only."""
    path = run.file(f"{table}.parquet")
    try:
        frame: pd.DataFrame = pq.read_table(path, columns=columns).to_pandas()
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"run {run.id}: {table}.parquet cannot be read ({exc}); re-run the stage") from None
    return frame
