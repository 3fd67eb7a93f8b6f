"""Aggregates of model runs for the model report: hyperparameters, test metrics, curves, calibration, history."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lstm_adv.domain.errors import DataError
from lstm_adv.domain.feature_matrix import SPLITS
from lstm_adv.results import artifacts
from lstm_adv.results.api.common import aggregates_only, decision_rule_text, text
from lstm_adv.results.artifacts import is_cv_run
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import ModelSummary

MODEL_KINDS = ("model",)
METRIC_NAMES = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "f1": "F1",
    "precision": "precision",
    "recall": "recall",
    "brier": "Brier score",
}
CURVE_COLUMNS = ("curve", "x", "y")
THRESHOLD_ROW = "decision threshold t"

__all__ = [
    "METRIC_NAMES",
    "MODEL_KINDS",
    "calibration_table",
    "confusion_table",
    "cv_metrics",
    "is_cv_run",
    "model_curves",
    "model_decision",
    "model_facts",
    "model_hyperparameters",
    "model_metrics",
    "oracle_auroc",
    "prior_shift_text",
    "training_history",
]


def model_hyperparameters(run: Run) -> pd.DataFrame:
    """The network's hyperparameters (``params.json``) and the training settings. Columns: ``parameter``, ``value``."""
    params = artifacts.read_json(run, artifacts.PARAMS_FILE)
    rows = [(str(k), text(v)) for k, v in params.items()]
    model_config = run.manifest.config.get("model", {})
    settings = ("max_epochs", "patience", "monitor", "imbalance", "grad_clip_norm", "seed", "bootstrap_samples")
    rows += [(f"training: {k}", text(model_config[k])) for k in settings if k in model_config]
    return aggregates_only(pd.DataFrame(rows, columns=["parameter", "value"]))


def _holdout(run: Run, what: str) -> ModelSummary:
    summary = run.summary_as(ModelSummary)
    if summary.cv:
        raise DataError(f"model run {run.id} is a cross-validation run; it has no single test split for {what}")
    return summary


def model_metrics(run: Run) -> pd.DataFrame:
    """Test metrics of a holdout model run with their bootstrap intervals, and the threshold (no interval).

    Columns: ``metric``, ``value``, ``low``, ``high``.
    """
    summary = _holdout(run, "test metrics with intervals")
    test = summary.test or {}
    rows: list[tuple[str, float | None, float | None, float | None]] = []
    for key, label in METRIC_NAMES.items():
        estimate = test.get(key)
        rows.append((label, *((estimate.value, estimate.low, estimate.high) if estimate else (None, None, None))))
    rows.append((THRESHOLD_ROW, summary.threshold, None, None))
    frame = pd.DataFrame(rows, columns=["metric", "value", "low", "high"])
    return aggregates_only(frame.astype({"value": "float64", "low": "float64", "high": "float64"}))


def model_decision(run: Run) -> str:
    """The model's decision rule and its t in words (a cross-validation run: the rule and each fold's t)."""
    summary = run.summary_as(ModelSummary)
    if not summary.cv:
        return decision_rule_text(summary.decision, summary.threshold)
    rule = run.manifest.config.get("model", {}).get("decision")
    if rule == "argmax":
        return decision_rule_text("argmax", 0.5)
    folds = artifacts.read_json(run, artifacts.METRICS_FILE).get("folds", [])
    ts = [float(f["threshold"]) for f in folds if isinstance(f.get("threshold"), int | float)]
    spread = f": t = {min(ts):.3f}–{max(ts):.3f} over the folds" if ts else ""
    return f"threshold on P(death), chosen per fold on that fold's validation part (max F1){spread}"


def model_facts(run: Run) -> pd.DataFrame:
    """Split sizes, prevalence, epochs, device and (synthetic data) the oracle AUROC.

    Columns: ``property``, ``value``.
    """
    summary = run.summary_as(ModelSummary)
    rows: list[tuple[str, str]] = []
    sizes = summary.n or {}
    for name, n in sorted(sizes.items(), key=lambda item: SPLITS.index(item[0]) if item[0] in SPLITS else 9):
        prevalence = (summary.prevalence or {}).get(name)
        share = f" ({prevalence:.1%} deaths)" if prevalence is not None else ""
        rows.append((f"{name} samples", f"{int(n):,}{share}"))
    facts = (
        ("best epoch", summary.best_epoch),
        ("epochs run", summary.epochs_run),
        ("folds", summary.n_folds),
        ("device", summary.device),
    )
    rows += [(label, text(value)) for label, value in facts if value is not None]
    if summary.seconds_per_epoch is not None:
        rows.append(("seconds per epoch", f"{summary.seconds_per_epoch:.2f}"))
    if summary.oracle_test_auroc is not None:
        rows.append(("oracle test AUROC (true risks of the synthetic generator)", f"{summary.oracle_test_auroc:.3f}"))
    return aggregates_only(pd.DataFrame(rows, columns=["property", "value"]))


def oracle_auroc(run: Run) -> float | None:
    """The synthetic generator's AUROC on the same test split, when the data are synthetic (else None)."""
    return run.summary_as(ModelSummary).oracle_test_auroc


def confusion_table(run: Run) -> pd.DataFrame:
    """The test confusion matrix at the chosen threshold: rows true class, columns predicted class.

    Columns: ``true class``, ``predicted survived (0)``, ``predicted died (1)``.
    """
    summary = _holdout(run, "a confusion matrix")
    if summary.confusion_matrix is None:
        raise DataError(f"model run {run.id} has no 2 × 2 confusion matrix in its manifest; re-run `lstm-adv train`")
    matrix = np.asarray(summary.confusion_matrix, dtype=np.int64)
    frame = pd.DataFrame(matrix, columns=["predicted survived (0)", "predicted died (1)"])
    frame.insert(0, "true class", ["survived (0)", "died (1)"])
    return aggregates_only(frame)


def prior_shift_text(run: Run) -> str | None:
    """Markdown on what training with rebalanced classes did to the probabilities (beside Brier and calibration):
    the mean test P(death) against the prevalence, the Brier score against a constant predictor's, and the
    Platt recalibration fitted on validation; None for runs made before it was stored or cross-validation."""
    summary = run.manifest.summary
    if not isinstance(summary, ModelSummary) or summary.recalibration is None or summary.learned is None:
        return None
    recalibration, learned = summary.recalibration, summary.learned
    imbalance = run.manifest.config.get("model", {}).get("imbalance", "")
    prevalence = (summary.prevalence or {}).get("test")
    how = {
        "weighted_sampling": "trained on batches resampled to balance the classes",
        "class_weighted_loss": "trained with a class-weighted loss",
    }.get(str(imbalance), "trained as configured")
    rate = "" if prevalence is None else f" against a test prevalence of {prevalence:.3f}"
    return (
        f"The model was {how}, so its P(death) describe a balanced prior, not the split's: the mean test P(death) "
        f"is {recalibration.test_mean_probability:.3f}{rate}, and its Brier score {recalibration.test_brier:.3f} "
        f"compares with {learned.constant_brier:.3f} for a constant predictor at the prevalence. Ranking metrics "
        "(AUROC, AUPRC) and the decision rule's threshold do not depend on this. Platt scaling fitted on the "
        f"validation split (P' = σ({recalibration.a:.3f} · logit P + {recalibration.b:.3f})) brings the mean to "
        f"{recalibration.test_mean_recalibrated:.3f} and the Brier score to "
        f"{recalibration.test_brier_recalibrated:.3f}; use it when probabilities must mean risks."
    )


def calibration_table(run: Run) -> pd.DataFrame:
    """The test reliability diagram: per probability bin, the mean prediction, observed death rate and count.

    Columns: ``bin_low``, ``bin_high``, ``mean_predicted``, ``fraction_positive``, ``count`` (empty bins left out).
    """
    _holdout(run, "a calibration curve")
    calibration = artifacts.read_json(run, artifacts.METRICS_FILE).get("test", {}).get("calibration")
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
        folds = artifacts.read_json(run, artifacts.METRICS_FILE).get("folds", [])
        blocks = [
            pd.DataFrame(f["history"], columns=columns).assign(fold=int(f["fold"]), best_epoch=f["best_epoch"])
            for f in folds
        ]
    else:
        best = run.summary_as(ModelSummary).best_epoch
        history = artifacts.read_json(run, artifacts.HISTORY_FILE)
        blocks = [pd.DataFrame(history, columns=columns).assign(fold=0, best_epoch=best)]
    if not blocks or all(block.empty for block in blocks):
        raise DataError(f"model run {run.id} has no training history; re-run `lstm-adv train`")
    frame = pd.concat(blocks, ignore_index=True)
    frame["best"] = frame["epoch"].eq(frame.pop("best_epoch"))
    return aggregates_only(frame[["fold", *columns, "best"]].astype({"val_loss": "float64", "val_auroc": "float64"}))


def cv_metrics(run: Run) -> pd.DataFrame:
    """Cross-validation: each metric's mean ± sd over folds and the per-fold values.

    Columns: ``metric``, ``mean``, ``sd``, then ``fold 0``, ``fold 1``, ….
    """
    summary = run.summary_as(ModelSummary)
    if not summary.cv:
        raise DataError(f"model run {run.id} is not a cross-validation run; train with --cv for fold metrics")
    rows = []
    for key, label in METRIC_NAMES.items():
        folds = (summary.folds or {}).get(key, ())
        spread = {"mean": (summary.mean or {}).get(key), "sd": (summary.sd or {}).get(key)}
        rows.append({"metric": label} | spread | {f"fold {k}": v for k, v in enumerate(folds)})
    return aggregates_only(pd.DataFrame(rows))


def model_curves(run: Run, split: str = "test") -> pd.DataFrame | None:
    """Stored ROC and PR curve points of ``split`` (``curves.parquet``), or None when the run holds none.

    Columns: ``curve`` (``roc``: x = false positive rate, y = true positive rate; ``pr``: x = recall,
    y = precision), ``x``, ``y``. Points are aggregates: rates over the split, never a sample.
    """
    if not (run.path / artifacts.MODEL_CURVES_FILE).is_file():
        return None
    frame = artifacts.read_table(run, artifacts.MODEL_CURVES_FILE)
    missing = [c for c in CURVE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"model run {run.id}: {artifacts.MODEL_CURVES_FILE} lacks columns {', '.join(missing)}; re-run the training"
        )
    if "split" in frame.columns:
        frame = frame[frame["split"] == split]
    return aggregates_only(frame[list(CURVE_COLUMNS)].reset_index(drop=True).astype({"x": "float64", "y": "float64"}))
