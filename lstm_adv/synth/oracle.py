"""The best achievable AUROC: each admission's true death probability scored against its outcome."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from lstm_adv.domain.errors import DataError, ValidationError
from lstm_adv.results.store import Run, RunStore

TRUTH_FILE = "truth.parquet"
TRUTH_COLUMNS = ("hadm_id", "death_probability", "label", "severity")


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve by the rank-sum formula; tied scores count one half.

    Shapes: (N,) and (N,); labels in {0, 1} with both present.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValidationError(
            f"auroc needs scores and labels of one equal length, got {scores.shape} and {labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValidationError("auroc labels must be 0 or 1")
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValidationError(f"auroc needs both outcomes, got {positives} deaths and {negatives} survivors")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    rank_sum = float(ranks[labels == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def oracle_auroc(truth: pd.DataFrame, hadm_ids: ArrayLike, labels: ArrayLike) -> float:
    """AUROC of the true death probability of admissions ``hadm_ids`` against their ``labels``.

    ``truth`` is a synth run's ``truth.parquet`` (see :func:`load_truth`). No model can beat this
    number on the same admissions in expectation: the data depend on the outcome only through the
    probability. Shapes: (N,) and (N,). An admission missing from ``truth`` is a DataError.
    """
    hadm_ids = np.asarray(hadm_ids, dtype=np.int64)
    position = pd.Index(truth["hadm_id"].to_numpy()).get_indexer(hadm_ids)
    if (position < 0).any():
        missing = hadm_ids[position < 0]
        raise DataError(
            f"oracle AUROC: {len(missing)} admission(s) are not in the synthetic truth, e.g. hadm_id {missing[0]}; "
            "use the synth run that generated the schema the data were queried from"
        )
    probability = truth["death_probability"].to_numpy()[position]
    return auroc(probability, labels)


def load_truth(run: Run) -> pd.DataFrame:
    """The ``truth.parquet`` of a synth run: hadm_id, death_probability, label, severity per admission."""
    if run.kind != "synth":
        raise DataError(f"run {run.id} is a {run.kind} run; the synthetic truth is stored by synth runs")
    truth = pd.read_parquet(run.file(TRUTH_FILE))
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise DataError(f"run {run.id}: {TRUTH_FILE} lacks column(s) {', '.join(missing)}; regenerate it")
    return truth


def find_synth_run(store: RunStore, query_run: Run) -> Run | None:
    """The synth run that wrote the tables ``query_run`` read, or None (real data, or the run is gone).

    That is the latest synth run created no later than the query run with the same database
    (summary ``source``) and ``schema``. Walk a features or model run up to its query run first.
    """
    summary = query_run.manifest.summary
    matches = [
        run
        for run in store.list("synth")
        if run.manifest.summary.get("schema") == summary.get("schema")
        and run.manifest.summary.get("source") == summary.get("source")
        and run.manifest.created <= query_run.manifest.created
    ]
    return matches[-1] if matches else None
