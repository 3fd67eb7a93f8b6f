"""The record a model input is filled from, and the fill itself (the numpy reference).

A sample's *record* is what preprocessing computes the model input from: per feature, the last hourly
bin before the window (the pre-window bin, which back-fills the start) and the 48 in-window hourly bin
means, NaN where a bin held no measurement. It is kept in the scaled units of the features run but
**not winsorized** ((v − p5) / (p95 − p5), so a value outside p5–p95 stays outside [0, 1]).

Shape: (N, 49, 19) — row :data:`PREWINDOW` (0) is the pre-window bin, row ``1 + k`` is hour ``k``.

:func:`fill_series` fills NaN gaps along time without look-ahead past the window; :func:`fill_record`
maps a record to the model input (fill, then winsorize to [0, 1]). Preprocessing builds every stored
model input with :func:`fill_record`, and the attack's differentiable twin
(:func:`lstm_adv.attacks.record.fill_record`) is tested equal to it: **this numpy path is the
reference.** The fill is affine in the record's values (interpolation weights, carried and back-filled
values and the median do not depend on the values), so filling in scaled units and then winsorizing
equals filling in clinical units and then scaling.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from lstm_adv.domain.shapes import N_FEATURES, N_HOURS

#: Rows of a record: the pre-window bin, then hours 0 … 47.
RECORD_ROWS = N_HOURS + 1
#: The record row of the pre-window bin.
PREWINDOW = 0
RECORD_SHAPE = (RECORD_ROWS, N_FEATURES)

F64 = npt.NDArray[np.float64]


def fill_series(observed: npt.ArrayLike, before: npt.ArrayLike, median: npt.ArrayLike) -> F64:
    """Fill NaN gaps along time without look-ahead past the window.

    Linear interpolation between observed bins; the last observed bin carried forward to the end;
    before the first observed bin, the pre-window bin ``before`` if there is one (not NaN), else the
    first observed bin; a series with no observation in the window takes ``before``, else ``median``.
    Works in any units (clinical or scaled). Shape: observed (N, T, F), before (N, F), median (F,) → (N, T, F).
    """
    observed = np.asarray(observed, dtype=np.float64)
    before = np.asarray(before, dtype=np.float64)
    median = np.asarray(median, dtype=np.float64)
    n, n_hours, f = observed.shape
    hours = np.arange(n_hours)[None, :, None]
    seen = ~np.isnan(observed)
    prev = np.maximum.accumulate(np.where(seen, hours, -1), axis=1)  # last observed hour <= t, -1 if none
    nxt = np.minimum.accumulate(np.where(seen, hours, n_hours)[:, ::-1], axis=1)[:, ::-1]  # first >= t, T if none
    has_prev, has_next = prev >= 0, nxt < n_hours
    # flat positions instead of take_along_axis: one gather per array
    flat = observed.reshape(-1)
    base = np.arange(n)[:, None, None] * (n_hours * f) + np.arange(f)[None, None, :]
    prev_value = flat[base + np.maximum(prev, 0) * f]
    next_value = flat[base + np.minimum(nxt, n_hours - 1) * f]
    weight = (hours - prev) / np.maximum(nxt - prev, 1)
    start = np.where(np.isnan(before), median[None, :], before)[:, None, :]
    start = np.where(has_next & np.isnan(before)[:, None, :], next_value, start)
    result = np.where(has_prev, np.where(has_next, prev_value + (next_value - prev_value) * weight, prev_value), start)
    filled: F64 = np.where(seen, observed, result)
    return filled


def fill_record(record: npt.ArrayLike, median: npt.ArrayLike) -> F64:
    """The model input of each record: :func:`fill_series`, then winsorize to [0, 1].

    ``median`` is the training median of each feature in the record's (scaled) units. The reference
    implementation of the fill (see the module docstring). Shape: record (N, 49, 19), median (19,) → (N, 48, 19).
    """
    values = np.asarray(record, dtype=np.float64)
    filled = fill_series(values[:, PREWINDOW + 1 :], values[:, PREWINDOW], median)
    clipped: F64 = np.clip(filled, 0.0, 1.0)
    return clipped


def record_present(record: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Which record entries hold a measurement (not NaN). Shape: (N, 49, 19) → (N, 49, 19)."""
    present: npt.NDArray[np.bool_] = ~np.isnan(np.asarray(record))
    return present
