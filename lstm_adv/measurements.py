"""What a record-threat result means, per feature and per hour: which measurements were altered, how often
given the chance, how far each one reaches into the model input, and by how much in clinical units.

Pure numpy over the successful examples of one group (example kind × direction); no I/O. Per feature j,
over the group's n examples:

- ``altered``: altered measurements of j; ``share``: their share of all altered measurements;
- ``available``: measurements of j the threat could alter in those samples; ``per_opportunity``:
  altered ÷ available (a feature measured every hour is not more susceptible for being measured more);
- ``leverage``: median, over the examples that altered j, of the model-input cells of j that moved
  per altered measurement of j (interpolation spreads one measurement over its neighbours);
- ``median_change`` / ``median_abs_change``: the altered measurements' change in clinical units.

Intervals are percentile bootstraps over the examples (:mod:`lstm_adv.uncertainty`). Per hour (−1 is the
pre-window bin): the altered measurements made there and their share.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from lstm_adv.domain.feature_matrix import ScalingStats
from lstm_adv.domain.record import PREWINDOW, RECORD_ROWS
from lstm_adv.domain.shapes import N_FEATURES
from lstm_adv.uncertainty import percentile_interval, resample_counts

FloatArray = npt.NDArray[np.float64]
_CHUNK_ELEMENTS = 20_000_000  # bound on a bootstrap chunk's temporaries (resamples × examples × cells)

MEASUREMENT_COLUMNS = (
    "feature",
    "unit",
    "altered",
    "available",
    "share",
    "share_low",
    "share_high",
    "per_opportunity",
    "per_opportunity_low",
    "per_opportunity_high",
    "per_opportunity_rank",
    "leverage",
    "median_change",
    "median_abs_change",
    "n_examples",
)


def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    result: FloatArray = np.divide(
        numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator > 0
    )
    return result


def feature_counts(
    record_deltas: npt.NDArray[np.floating[Any]],
    input_deltas: npt.NDArray[np.floating[Any]],
    available: npt.NDArray[np.bool_],
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per example and feature: altered measurements, available measurements and moved input cells.

    Shapes: record_deltas (n, 49, 19), input_deltas (n, 48, 19), available (n, 49, 19) → 3 × (n, 19).
    """
    altered = np.count_nonzero(record_deltas, axis=1).astype(np.float64)
    return altered, available.sum(axis=1).astype(np.float64), np.count_nonzero(input_deltas, axis=1).astype(np.float64)


def leverage(altered: FloatArray, moved: FloatArray) -> FloatArray:
    """Per feature, the median of moved input cells per altered measurement over the examples that altered it
    (0 where none did). Shapes: (n, 19) → (19,)."""
    per = np.where(altered > 0, moved / np.where(altered > 0, altered, 1.0), np.nan)
    some = (altered > 0).any(axis=0)
    result = np.zeros(N_FEATURES)
    if some.any():
        result[some] = np.nanmedian(per[:, some], axis=0)
    return result


def rank_descending(scores: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """1-based rank of each score, largest first; ties keep their input order. Shape: as scores."""
    values = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(values.shape[0], dtype=np.int64)
    ranks[order] = np.arange(1, values.shape[0] + 1)
    return ranks


def measurements_table(
    record_deltas: npt.NDArray[np.floating[Any]],
    input_deltas: npt.NDArray[np.floating[Any]],
    available: npt.NDArray[np.bool_],
    scaling: ScalingStats,
    units: tuple[str, ...],
    *,
    samples: int,
    seed: int,
    confidence: float,
) -> pd.DataFrame:
    """One row per feature (model order) with the columns of :data:`MEASUREMENT_COLUMNS` (see the module
    docstring). Shapes: record_deltas (n, 49, 19), input_deltas (n, 48, 19), available (n, 49, 19), n ≥ 1."""
    altered, chances, moved = feature_counts(record_deltas, input_deltas, available)
    total = altered.sum(axis=1)
    share = _ratio(altered.sum(axis=0), np.full(N_FEATURES, total.sum()))
    rate = _ratio(altered.sum(axis=0), chances.sum(axis=0))
    counts = resample_counts(altered.shape[0], samples, seed).astype(np.float64)
    boot_altered = counts @ altered  # (B, 19)
    share_low, share_high = percentile_interval(_ratio(boot_altered, (counts @ total)[:, None]), confidence)
    rate_low, rate_high = percentile_interval(_ratio(boot_altered, counts @ chances), confidence)
    change, magnitude = _clinical_changes(record_deltas, scaling)
    return pd.DataFrame(
        {
            "feature": list(scaling.feature_names),
            "unit": list(units),
            "altered": altered.sum(axis=0).astype(np.int64),
            "available": chances.sum(axis=0).astype(np.int64),
            "share": share,
            "share_low": share_low,
            "share_high": share_high,
            "per_opportunity": rate,
            "per_opportunity_low": rate_low,
            "per_opportunity_high": rate_high,
            "per_opportunity_rank": rank_descending(rate),
            "leverage": leverage(altered, moved),
            "median_change": change,
            "median_abs_change": magnitude,
            "n_examples": np.full(N_FEATURES, altered.shape[0], dtype=np.int64),
        }
    )


def _clinical_changes(
    record_deltas: npt.NDArray[np.floating[Any]], scaling: ScalingStats
) -> tuple[FloatArray, FloatArray]:
    """Per feature, the median signed and absolute change of its altered measurements in clinical units (0 where
    none). Shape: (n, 49, 19) → 2 × (19,)."""
    flat = record_deltas.reshape(-1, N_FEATURES).astype(np.float64)
    clinical = np.where(flat != 0, flat * scaling.span, np.nan)
    some = (flat != 0).any(axis=0)
    signed, absolute = np.zeros(N_FEATURES), np.zeros(N_FEATURES)
    if some.any():
        signed[some] = np.nanmedian(clinical[:, some], axis=0)
        absolute[some] = np.nanmedian(np.abs(clinical[:, some]), axis=0)
    return signed, absolute


def measurement_hours_table(record_deltas: npt.NDArray[np.floating[Any]]) -> pd.DataFrame:
    """One row per record hour (−1 = the pre-window bin, then 0 … 47): altered measurements there and their
    share of all. Shape: record_deltas (n, 49, 19)."""
    altered = np.count_nonzero(record_deltas, axis=(0, 2)).astype(np.int64)
    hours = np.arange(RECORD_ROWS, dtype=np.int64) - PREWINDOW - 1
    share = _ratio(altered.astype(np.float64), np.full(RECORD_ROWS, float(altered.sum())))
    return pd.DataFrame({"hour": hours, "altered": altered, "share": share})


def susceptibility_interval(
    deltas: npt.NDArray[np.floating[Any]], *, samples: int, seed: int, confidence: float
) -> tuple[FloatArray, FloatArray]:
    """Bootstrap interval of S_j = Σ_i GMP_ij · GPP_ij (Sun et al.) over resampled examples. Shape: (n, 48, 19)
    → 2 × (19,)."""
    counts = resample_counts(deltas.shape[0], samples, seed)
    return percentile_interval(susceptibility_resamples(deltas, counts), confidence)


def susceptibility_resamples(deltas: npt.NDArray[np.floating[Any]], counts: npt.NDArray[np.int64]) -> FloatArray:
    """S_j of each resample given by ``counts`` (how often each example is drawn). Shapes: deltas (n, 48, 19),
    counts (B, n) → (B, 19).

    GPP is a weighted count (resample counts × non-zero cells); GMP the largest |δ| among the examples a
    resample drew, over the non-zero entries (the work grows with their number, not with n × 912).
    """
    n = deltas.shape[0]
    samples = counts.shape[0]
    magnitude = np.abs(deltas.reshape(n, -1).astype(np.float64))
    gpp = (counts @ (magnitude > 0).astype(np.float64)) / n  # (B, 912)
    # GMP of a resample: per cell, the largest |δ| among the drawn examples, over the non-zero entries only
    example, cell = np.nonzero(magnitude)
    order = np.lexsort((-magnitude[example, cell], cell))
    example, cell = example[order], cell[order]
    values = magnitude[example, cell]
    gmp = np.zeros_like(gpp)
    if values.size:
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
        chunk = max(1, _CHUNK_ELEMENTS // values.size)
        for first in range(0, samples, chunk):
            drawn = np.where(counts[first : first + chunk][:, example] > 0, values, 0.0)  # (c, nnz)
            gmp[first : first + chunk, cell[starts]] = np.maximum.reduceat(drawn, starts, axis=1)
    scores: FloatArray = (gmp * gpp).reshape(samples, -1, N_FEATURES).sum(axis=1)
    return scores
