"""The read-only results API that reports use: a run's stored tables and metrics, as aggregates.

Reports (``reports/*.qmd``) compute nothing new: they call these functions with a run id and show
what comes back. Nothing here returns a patient-level row, an identifier (subject, admission, stay)
or a time; every frame is checked for such columns before it leaves (:func:`aggregates_only`).
"""

from __future__ import annotations

import json
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


# --- model runs ----------------------------------------------------------------------------------

MODEL_KINDS = ("model",)
METRIC_NAMES = {"auroc": "AUROC", "auprc": "AUPRC", "f1": "F1", "precision": "precision", "recall": "recall",
                "brier": "Brier score"}  # fmt: skip
CURVES_FILE = "curves.parquet"
CURVE_COLUMNS = ("curve", "x", "y")


def is_cv_run(run: Run) -> bool:
    """Whether a model run is a cross-validation run (one evaluation per fold, no single test evaluation)."""
    return bool(run.manifest.summary.get("cv"))


def model_hyperparameters(run: Run) -> pd.DataFrame:
    """The network's hyperparameters (``params.json``) and the training settings. Columns: ``parameter``, ``value``."""
    params = _read_json(run, "params.json")
    rows = [(str(k), _text(v)) for k, v in params.items()]
    model_config = run.manifest.config.get("model", {})
    settings = ("max_epochs", "patience", "monitor", "imbalance", "grad_clip_norm", "seed", "bootstrap_samples")
    rows += [(f"training: {k}", _text(model_config[k])) for k in settings if k in model_config]
    return aggregates_only(pd.DataFrame(rows, columns=["parameter", "value"]))


def model_metrics(run: Run) -> pd.DataFrame:
    """Test metrics of a holdout model run with their bootstrap intervals, and the threshold (no interval).

    Columns: ``metric``, ``value``, ``low``, ``high``.
    """
    _require_holdout(run, "test metrics with intervals")
    test = run.manifest.summary.get("test", {})
    rows = [(label, *(_number(test.get(key, {}).get(part)) for part in ("value", "low", "high")))
            for key, label in METRIC_NAMES.items()]  # fmt: skip
    rows.append(("threshold (max F1 on validation)", _number(run.manifest.summary.get("threshold")), None, None))
    frame = pd.DataFrame(rows, columns=["metric", "value", "low", "high"])
    return aggregates_only(frame.astype({"value": "float64", "low": "float64", "high": "float64"}))


def model_facts(run: Run) -> pd.DataFrame:
    """Split sizes, prevalence, epochs, device and (synthetic data) the oracle AUROC.

    Columns: ``property``, ``value``.
    """
    summary = run.manifest.summary
    rows: list[tuple[str, str]] = []
    sizes = summary.get("n") or {}
    for name, n in sorted(sizes.items(), key=lambda item: SPLITS.index(item[0]) if item[0] in SPLITS else 9):
        prevalence = (summary.get("prevalence") or {}).get(name)
        share = f" ({prevalence:.1%} deaths)" if isinstance(prevalence, int | float) else ""
        rows.append((f"{name} samples", f"{int(n):,}{share}"))
    for key, label in (("best_epoch", "best epoch"), ("epochs_run", "epochs run"), ("n_folds", "folds"),
                       ("device", "device")):  # fmt: skip
        if summary.get(key) is not None:
            rows.append((label, _text(summary[key])))
    if summary.get("seconds_per_epoch") is not None:
        rows.append(("seconds per epoch", f"{float(summary['seconds_per_epoch']):.2f}"))
    oracle = oracle_auroc(run)
    if oracle is not None:
        rows.append(("oracle test AUROC (true risks of the synthetic generator)", f"{oracle:.3f}"))
    return aggregates_only(pd.DataFrame(rows, columns=["property", "value"]))


def oracle_auroc(run: Run) -> float | None:
    """The synthetic generator's AUROC on the same test split, when the data are synthetic (else None)."""
    value = run.manifest.summary.get("oracle_test_auroc")
    return float(value) if isinstance(value, int | float) else None


def confusion_table(run: Run) -> pd.DataFrame:
    """The test confusion matrix at the chosen threshold: rows true class, columns predicted class.

    Columns: ``true class``, ``predicted survived (0)``, ``predicted died (1)``.
    """
    _require_holdout(run, "a confusion matrix")
    matrix = np.asarray(run.manifest.summary.get("confusion_matrix"), dtype=np.int64)
    if matrix.shape != (2, 2):
        raise DataError(f"model run {run.id} has no 2 × 2 confusion matrix in its manifest; re-run `lstm-adv train`")
    frame = pd.DataFrame(matrix, columns=["predicted survived (0)", "predicted died (1)"])
    frame.insert(0, "true class", ["survived (0)", "died (1)"])
    return aggregates_only(frame)


def calibration_table(run: Run) -> pd.DataFrame:
    """The test reliability diagram: per probability bin, the mean prediction, observed death rate and count.

    Columns: ``bin_low``, ``bin_high``, ``mean_predicted``, ``fraction_positive``, ``count`` (empty bins left out).
    """
    _require_holdout(run, "a calibration curve")
    calibration = _read_json(run, "metrics.json").get("test", {}).get("calibration")
    columns = ["bin_low", "bin_high", "mean_predicted", "fraction_positive", "count"]
    if not isinstance(calibration, dict) or not all(c in calibration for c in columns):
        raise DataError(f"model run {run.id}: metrics.json has no test calibration; re-run `lstm-adv train`")
    return aggregates_only(pd.DataFrame({c: calibration[c] for c in columns}).astype({"count": "int64"}))


def training_history(run: Run) -> pd.DataFrame:
    """Per epoch: training loss, validation loss and AUROC (one block per fold for a CV run).

    Columns: ``fold`` (0 for a holdout run), ``epoch``, ``train_loss``, ``val_loss``, ``val_auroc``, ``best``
    (the epoch whose weights were kept).
    """
    columns = ["epoch", "train_loss", "val_loss", "val_auroc"]
    if is_cv_run(run):
        folds = _read_json(run, "metrics.json").get("folds", [])
        blocks = [pd.DataFrame(f["history"], columns=columns).assign(fold=int(f["fold"]), best_epoch=f["best_epoch"])
                  for f in folds]  # fmt: skip
    else:
        best = run.manifest.summary.get("best_epoch")
        blocks = [pd.DataFrame(_read_json(run, "history.json"), columns=columns).assign(fold=0, best_epoch=best)]
    if not blocks or all(block.empty for block in blocks):
        raise DataError(f"model run {run.id} has no training history; re-run `lstm-adv train`")
    frame = pd.concat(blocks, ignore_index=True)
    frame["best"] = frame["epoch"].eq(frame.pop("best_epoch"))
    return aggregates_only(frame[["fold", *columns, "best"]].astype({"val_loss": "float64", "val_auroc": "float64"}))


def cv_metrics(run: Run) -> pd.DataFrame:
    """Cross-validation: each metric's mean ± sd over folds and the per-fold values.

    Columns: ``metric``, ``mean``, ``sd``, then ``fold 0``, ``fold 1``, ….
    """
    summary = run.manifest.summary
    if not is_cv_run(run):
        raise DataError(f"model run {run.id} is not a cross-validation run; train with --cv for fold metrics")
    rows = []
    for key, label in METRIC_NAMES.items():
        folds = [_number(v) for v in summary.get("folds", {}).get(key, [])]
        spread = {name: _number(summary.get(name, {}).get(key)) for name in ("mean", "sd")}
        rows.append({"metric": label} | spread | {f"fold {k}": v for k, v in enumerate(folds)})
    return aggregates_only(pd.DataFrame(rows))


def model_curves(run: Run, split: str = "test") -> pd.DataFrame | None:
    """Stored ROC and PR curve points of ``split`` (``curves.parquet``), or None when the run holds none.

    Columns: ``curve`` (``roc``: x = false positive rate, y = true positive rate; ``pr``: x = recall,
    y = precision), ``x``, ``y``. Points are aggregates: rates over the split, never a sample.
    """
    path = run.path / CURVES_FILE
    if not path.is_file():
        return None
    frame = _read_table(run, CURVES_FILE)
    missing = [c for c in CURVE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"model run {run.id}: {CURVES_FILE} lacks columns {', '.join(missing)}; re-run the training")
    if "split" in frame.columns:
        frame = frame[frame["split"] == split]
    return aggregates_only(frame[list(CURVE_COLUMNS)].reset_index(drop=True).astype({"x": "float64", "y": "float64"}))


def _require_holdout(run: Run, what: str) -> None:
    if is_cv_run(run):
        raise DataError(f"model run {run.id} is a cross-validation run; it has no single test split for {what}")


def _read_json(run: Run, name: str) -> Any:
    try:
        return json.loads(run.file(name).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"run {run.id}: {name} is not valid JSON ({exc}); re-run the stage") from None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _read_table(run: Run, name: str) -> pd.DataFrame:
    """A whole stored parquet table (an aggregate table without ids), for this module only."""
    try:
        frame: pd.DataFrame = pq.read_table(run.file(name)).to_pandas()
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"run {run.id}: {name} cannot be read ({exc}); re-run the stage") from None
    return frame


# --- attack and analysis runs ----------------------------------------------------------------------

ATTACK_KINDS = ("attack", "analysis")
DIRECTION_NAMES = {"0to1": "0→1 (survival → death)", "1to0": "1→0 (death → survival)"}
_SETTINGS_FROM_SUMMARY = (
    ("split", "attacked split"), ("n_samples", "samples"), ("n_attacked", "attacked"),
    ("success_rate", "success rate"), ("model_run", "model run"), ("features_run", "features run"),
)  # fmt: skip


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
        raise RunKindError(f"run {run.id} is a {run.kind} run; this report needs an attack or analysis run")
    analysis = latest_analysis(run)
    if analysis is None:
        raise DataError(f"attack run {run.id} has no analysis run yet; run `lstm-adv analyze {run.id}` first")
    return run, analysis


def latest_analysis(attack: Run) -> Run | None:
    """The newest analysis run whose parent is ``attack`` (None when it has not been analysed)."""
    children = [r for r in RunStore(attack.path.parent).list("analysis") if attack.id in r.manifest.parents]
    return children[-1] if children else None


def attack_settings(attack: Run) -> pd.DataFrame:
    """The attack's settings (``params.json``) and what it attacked. Columns: ``setting``, ``value``."""
    params = _read_json(attack, "params.json") if (attack.path / "params.json").is_file() else {}
    rows = [(str(k), _text(v)) for k, v in params.items()]
    summary = attack.manifest.summary
    for key, label in _SETTINGS_FROM_SUMMARY:
        if key in summary:
            value = summary[key]
            rows.append((label, f"{value:.1%}" if key == "success_rate" else _text(value)))
    return aggregates_only(pd.DataFrame(rows, columns=["setting", "value"]))


def attack_success(analysis: Run) -> pd.DataFrame:
    """Attacked and successful samples per direction of the flip, and overall.

    Columns: ``direction``, ``attacked``, ``successful``, ``success_rate``.
    """
    summary = analysis.manifest.summary
    directions = summary.get("directions") or {}
    rows = [(DIRECTION_NAMES.get(d, d), int(v["attacked"]), int(v["successful"]), float(v["success_rate"]))
            for d, v in directions.items()]  # fmt: skip
    rows.append(("all", int(summary.get("n_attacked", 0)), int(summary.get("n_successful", 0)),
                 float(summary.get("success_rate", 0.0))))  # fmt: skip
    return aggregates_only(pd.DataFrame(rows, columns=["direction", "attacked", "successful", "success_rate"]))


def perturbation_norms(analysis: Run) -> pd.DataFrame:
    """L0, L1 and L∞ of the first and best successful perturbations, per direction (means and medians).

    Columns: ``example``, ``direction``, ``n``, ``l0_mean``, ``l0_median``, ``l1_mean``, ``l1_median``,
    ``linf_mean``, ``linf_median``, ``iteration_median``. L1 and L∞ are in scaled units.
    """
    examples = _read_table(analysis, "examples.parquet")
    grouped = examples.groupby(["which", "direction"], sort=False)
    frame = grouped.agg(
        n=("l0", "size"), l0_mean=("l0", "mean"), l0_median=("l0", "median"), l1_mean=("l1", "mean"),
        l1_median=("l1", "median"), linf_mean=("linf", "mean"), linf_median=("linf", "median"),
        iteration_median=("iteration", "median"),
    ).reset_index()  # fmt: skip
    frame = frame[frame["n"] > 0].rename(columns={"which": "example"})
    frame["direction"] = frame["direction"].map(_arrow)
    return aggregates_only(frame.reset_index(drop=True))


def _arrow(direction: str) -> str:
    """``0to1`` → ``0→1``."""
    return DIRECTION_NAMES.get(direction, direction).split(" ")[0]


def analysis_figure(analysis: Run, stem: str) -> Path | None:
    """The stored PNG ``figures/<stem>.png`` of an analysis run (None when the run did not draw it)."""
    path = analysis.path / "figures" / f"{stem}.png"
    return path if path.is_file() else None


def feature_ranking(analysis: Run, which: str = "best", *, top: int | None = None) -> pd.DataFrame:
    """Features ranked by susceptibility S_j, per direction, with |δ| in clinical units over changed cells.

    Columns: ``direction``, ``rank``, ``feature``, ``unit``, ``susceptibility``, ``mean_gpp``,
    ``median_abs_delta``, ``max_abs_delta`` (clinical units). ``top`` keeps the first ranks.
    """
    features = _read_table(analysis, "features.parquet")
    clinical = _read_table(analysis, "clinical.parquet")
    keys = ["which", "direction", "feature"]
    merged = features.merge(clinical[[*keys, "median_abs_delta", "max_abs_delta"]], on=keys, how="left")
    merged = merged[merged["which"] == which].sort_values(["direction", "rank"], kind="stable")
    if top is not None:
        merged = merged[merged["rank"] <= top]
    merged["direction"] = merged["direction"].map(_arrow)
    columns = ["direction", "rank", "feature", "unit", "susceptibility", "mean_gpp"]
    columns += ["median_abs_delta", "max_abs_delta"]
    return aggregates_only(merged[columns].reset_index(drop=True))


def top_hours(analysis: Run, which: str = "best", *, top: int = 5) -> pd.DataFrame:
    """The ``top`` hours of the window by susceptibility Σ_j GMP·GPP, per direction.

    Columns: ``direction``, ``rank``, ``hour`` (0 = the first hour of the 48-hour window), ``susceptibility``.
    """
    hours = _read_table(analysis, "hours.parquet")
    hours = hours[(hours["which"] == which) & (hours["rank"] <= top)].sort_values(["direction", "rank"], kind="stable")
    hours["direction"] = hours["direction"].map(_arrow)
    return aggregates_only(hours[["direction", "rank", "hour", "susceptibility"]].reset_index(drop=True))


def discovery_curve(analysis: Run) -> pd.DataFrame:
    """Per direction and iteration, the cumulative share of attacked samples with a first success by then.

    Columns: ``direction``, ``iteration``, ``n_attacked``, ``first_found``, ``best_found``,
    ``cumulative_first_fraction``.
    """
    return aggregates_only(_read_table(analysis, "discovery.parquet"))


# --- the whole pipeline ------------------------------------------------------------------------------

PIPELINE_STAGES = ("query", "features", "model", "tune-attack", "attack", "analysis")
_REFERENCES = ("attack_run", "model_run", "features_run")


def pipeline_runs(run: Run) -> dict[str, Run]:
    """The runs of ``run``'s pipeline by kind: its lineage (parents, their parents, …) and the runs its
    summary names (``attack_run``, ``model_run``, ``features_run``), the nearest one of each kind."""
    store = RunStore(run.path.parent)
    found: dict[str, Run] = {}
    queue = [run]
    while queue:
        for member in store.lineage(queue.pop(0)):
            found.setdefault(member.kind, member)
            refs = [member.manifest.summary.get(key) for key in _REFERENCES]
            for ref in refs:
                if isinstance(ref, str) and (store.root / ref).is_dir() and store.get(ref).kind not in found:
                    queue.append(store.get(ref))
    order = (*PIPELINE_STAGES, *sorted(set(found) - set(PIPELINE_STAGES)))
    return {kind: found[kind] for kind in order if kind in found}


def pipeline_overview(runs: dict[str, Run]) -> pd.DataFrame:
    """One row per stage of the pipeline: ``stage`` (run kind), ``run``, ``created (UTC)``."""
    rows = [(kind, str(r.id), f"{r.manifest.created:%Y-%m-%d %H:%M}") for kind, r in runs.items()]
    return aggregates_only(pd.DataFrame(rows, columns=["stage", "run", "created (UTC)"]))


# --- robustness runs (defense stage) -----------------------------------------------------------------

ROBUSTNESS_KINDS = ("robustness",)


def _model_labels(run: Run) -> dict[str, str]:
    """Model run id → "defense · id" (e.g. "adaptive · model-20261121-120455-a3f9"), in the run's order."""
    return {str(m["model"]): f"{m['defense']} · {m['model']}" for m in run.manifest.summary.get("models", [])}


def _robustness_table(run: Run, name: str) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(run.file(name))
    except (OSError, ValueError) as exc:
        raise DataError(f"run {run.id}: {name} cannot be read ({exc}); re-run `lstm-adv robustness`") from None
    labels = _model_labels(run)
    frame.insert(0, "label", frame["model"].map(labels).fillna(frame["model"]))
    return frame


def robustness_curves(run: Run) -> pd.DataFrame:
    """Metric vs ε per model of a robustness run. Columns: label, model, defense, eps, metric, value."""
    return aggregates_only(_robustness_table(run, "curves.parquet"))


def robustness_confusion(run: Run) -> pd.DataFrame:
    """Confusion counts under attack. Columns: label, model, defense, eps, true_label, predicted_label, count."""
    return aggregates_only(_robustness_table(run, "confusion.parquet"))


def robustness_l1(run: Run) -> pd.DataFrame:
    """The sparse L1 attack per model (attacked, success_rate, mean_l0, mean_l1). Columns: label, model, defense,
    metric, value."""
    return aggregates_only(_robustness_table(run, "l1.parquet"))
