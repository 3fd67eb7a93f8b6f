"""Hypothesis strategies shared by the test suite (one place, per STYLE)."""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime
from typing import Any

import attrs
from hypothesis import strategies as st

from lstm_adv.domain.run_id import KINDS, RunId

# --- run store --------------------------------------------------------------------------------

run_kinds = st.sampled_from(KINDS)
run_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC)
)
run_tokens = st.text(alphabet="0123456789abcdef", min_size=4, max_size=4)
run_ids = st.builds(RunId, kind=run_kinds, created=run_times, token=run_tokens)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(min_size=1, max_size=12), json_values, max_size=5)


# --- configuration ------------------------------------------------------------------------------


def _strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if tp is RunId:
        return run_ids
    if attrs.has(tp):
        return attrs_instances(tp)
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is tuple and Ellipsis not in typing.get_args(tp):
        return st.tuples(*(_strategy_for(a) for a in typing.get_args(tp)))
    if origin in (tuple, list):
        item = next(a for a in typing.get_args(tp) if a is not Ellipsis)
        return st.lists(_strategy_for(item), max_size=3).map(origin)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_strategy_for(a) for a in typing.get_args(tp)])
    if origin is dict:
        key, value = typing.get_args(tp)
        return st.dictionaries(_strategy_for(key), _strategy_for(value), max_size=3)
    if tp is typing.Any:
        return json_values
    simple: dict[Any, st.SearchStrategy[Any]] = {
        int: st.integers(0, 10**6),
        float: st.floats(0, 1e6, allow_nan=False),
        str: st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", max_size=12),
        bool: st.booleans(),
        type(None): st.none(),
    }
    return simple[tp]


def _default_value(default: Any) -> Any:
    """A field's default as a value (an ``attrs.Factory`` is called)."""
    return default.factory() if isinstance(default, attrs.Factory) else default


def attrs_instances(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Instances of an attrs class with every field drawn from its annotated type (or its default).

    A draw the validators reject becomes the class's default instance where every field has a
    default (config sections have cross-field rules), and is filtered out otherwise."""
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: _strategy_for(hints[f.name])
        if f.default is attrs.NOTHING
        else st.just(_default_value(f.default)) | _strategy_for(hints[f.name])
        for f in attrs.fields(cls)
    }
    has_defaults = all(f.default is not attrs.NOTHING for f in attrs.fields(cls))

    def build(values: dict[str, Any]) -> Any:
        try:
            return cls(**values)
        except (ValueError, TypeError):
            return cls() if has_defaults else None

    return st.fixed_dictionaries(fields).map(build).filter(lambda v: v is not None)


# --- preprocess: synthetic query-run tables and feature matrices ----------------------------------

PREPROCESS_NAMES = (
    "potassium",
    "calcium",
    "ph",
    "pco2",
    "lactate",
    "albumin",
    "bun",
    "creatinine",
    "sodium",
    "bicarbonate",
    "platelet",
    "glucose",
    "magnesium",
    "heartrate",
    "sysbp",
    "diasbp",
    "tempc",
    "resprate",
    "spo2",
)
_TABLE_OF = {name: ("bloodgas" if i < 5 else "labs" if i < 13 else "vitals") for i, name in enumerate(PREPROCESS_NAMES)}


def make_query_tables(seed: int, n_admissions: int, n_subjects: int) -> tuple[Any, dict[str, Any]]:
    """Admissions and vitals/labs/bloodgas DataFrames in the query-run format, from a numpy seed.

    Times are whole minutes from -30 h to +60 h around the window start (so bin edges and the window
    end are hit exactly); most admissions get a measurement early and late enough to pass the window rule.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_subjects = min(n_subjects, n_admissions)
    subject = np.r_[np.arange(n_subjects), rng.integers(0, n_subjects, n_admissions - n_subjects)] + 1000
    base = np.datetime64("2150-01-01T00:00") + rng.integers(0, 10**6, n_admissions).astype("timedelta64[m]")
    admissions = pd.DataFrame(
        {
            "subject_id": subject.astype(np.int64),
            "hadm_id": rng.permutation(n_admissions).astype(np.int64) + 100_000,
            "window_start": base.astype("datetime64[ns]"),
            "first_icustay_id": np.arange(n_admissions, dtype=np.int64) + 200_000,
            "label": rng.integers(0, 2, n_admissions).astype(np.int64),
        }
    )
    per_series = rng.poisson(2.0, size=(n_admissions, 19)) * (rng.random((n_admissions, 19)) < 0.85)
    adm = np.repeat(np.repeat(np.arange(n_admissions), 19), per_series.ravel())
    feature = np.repeat(np.tile(np.arange(19), n_admissions), per_series.ravel())
    minutes = rng.integers(-30 * 60, 60 * 60, adm.size)
    passing = np.flatnonzero(rng.random(n_admissions) < 0.85)
    adm = np.r_[adm, passing, passing]
    feature = np.r_[feature, rng.integers(0, 19, 2 * passing.size)]
    minutes = np.r_[minutes, rng.integers(0, 4 * 60, passing.size), rng.integers(46 * 60, 48 * 60, passing.size)]
    values = np.round(rng.normal(50.0, 20.0, adm.size), 1)
    long = pd.DataFrame(
        {
            "hadm_id": admissions["hadm_id"].to_numpy()[adm],
            "charttime": admissions["window_start"].to_numpy()[adm] + minutes.astype("timedelta64[m]"),
            "feature": np.array(PREPROCESS_NAMES, dtype=object)[feature],
            "value": values,
        }
    )
    table = long["feature"].map(_TABLE_OF)
    tables = {name: long[table == name].reset_index(drop=True) for name in ("vitals", "labs", "bloodgas")}
    return admissions, tables


query_table_inputs = st.tuples(st.integers(0, 2**32 - 1), st.integers(10, 40), st.integers(8, 40)).map(
    lambda args: make_query_tables(*args)
)


@st.composite
def feature_matrices(draw: st.DrawFn) -> Any:
    """Small valid FeatureMatrix values (every fold used, test samples with fold -1, disjoint subjects)."""
    import numpy as np
    from hypothesis.extra import numpy as hnp

    from lstm_adv.domain.feature_matrix import FeatureMatrix, ScalingStats

    n = draw(st.integers(2, 8))
    values = draw(hnp.arrays(np.float32, (n, 48, 19), elements=st.floats(0, 1, width=32)))
    split = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.int8)
    split[0] = 0
    tv = np.flatnonzero(split < 2)
    fold = np.full(n, -1, dtype=np.int8)
    fold[tv] = np.arange(tv.size) % draw(st.integers(1, max(1, tv.size)))
    p5 = np.array(draw(st.lists(st.floats(-100, 100), min_size=19, max_size=19)))
    span = np.array(draw(st.lists(st.floats(0, 100), min_size=19, max_size=19)))
    return FeatureMatrix(
        values=values,
        labels=np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int64),
        subject_ids=np.arange(n, dtype=np.int64) + 1,
        hadm_ids=np.arange(n, dtype=np.int64) + 100,
        icustay_ids=np.arange(n, dtype=np.int64) + 200,
        feature_names=PREPROCESS_NAMES,
        split=split,
        fold=fold,
        scaling=ScalingStats(feature_names=PREPROCESS_NAMES, p5=p5, p95=p5 + span, median=p5 + span / 2),
        observed=draw(st.none() | hnp.arrays(np.bool_, (n, 48, 19))),
    )


# --- model stage: tiny FeatureMatrix builders -----------------------------------------------------


def tiny_feature_matrix(
    n: int = 60, *, seed: int = 0, prevalence: float = 0.3, signal: float = 0.4, n_folds: int = 3
) -> Any:
    """A small FeatureMatrix whose label shows in feature 0 (higher when 1); 60/20/20 split, folds over train+val.

    Its values are filled from a record as preprocessing does (feature 0 measured every hour, the others in
    about every third hour, some before the window; a few values outside p5–p95). Every split is stratified
    by label, so each holds both classes.
    """
    import numpy as np

    from lstm_adv.domain.feature_matrix import FeatureMatrix, ScalingStats
    from lstm_adv.domain.record import fill_record
    from lstm_adv.resources import load_feature_spec

    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prevalence).astype(np.int64)
    labels[:2] = (0, 1)
    record = rng.uniform(0.0, 0.5, size=(n, 49, 19)).astype(np.float32)
    record[:, :, 0] += np.float32(signal) * labels[:, None].astype(np.float32)
    outlier = rng.random(record.shape) < 0.005
    outlier[:, :, 0] = False  # feature 0 carries the label
    record[outlier] = np.float32(1.2)  # above p95: kept as it is in the record
    present = rng.random(record.shape) < 0.3  # every third cell or so held a measurement
    present[:, 0] &= rng.random((n, 19)) < 0.5
    present[:, 1:, 0] = True
    record[~present] = np.nan
    split = np.zeros(n, dtype=np.int8)
    for label in (0, 1):  # stratified 60/20/20 by label
        idx = np.flatnonzero(labels == label)
        split[idx[int(0.6 * idx.size) :]] = 1
        split[idx[int(0.8 * idx.size) :]] = 2
    fold = np.where(split == 2, -1, np.arange(n) % n_folds).astype(np.int8)
    names = tuple(feature.name for feature in load_feature_spec().features)
    ids = np.arange(1, n + 1, dtype=np.int64)
    scaling = ScalingStats(feature_names=names, p5=np.zeros(19), p95=np.ones(19), median=np.full(19, 0.5))
    return FeatureMatrix(
        values=fill_record(record, scaling.scaled_median).astype(np.float32),
        labels=labels,
        subject_ids=ids,
        hadm_ids=ids + 100_000,
        icustay_ids=ids + 200_000,
        feature_names=names,
        split=split,
        fold=fold,
        scaling=scaling,
        observed=present[:, 1:].copy(),
        record=record,
    )


# --- attacks and perturbations ------------------------------------------------------

attack_methods = st.sampled_from(("ista", "fista", "adam", "greedy"))


@st.composite
def perturbation_deltas(draw: st.DrawFn) -> Any:
    """Sparse float32 δ of shape (48, 19) with entries in [-1, 1]."""
    import numpy as np
    from hypothesis.extra import numpy as hnp

    return draw(hnp.arrays(np.float32, (48, 19), elements=st.floats(-1, 1, width=32), fill=st.just(np.float32(0.0))))


@st.composite
def attack_inputs(draw: st.DrawFn, *, max_samples: int = 6) -> Any:
    """(x, y): x float32 (n, 48, 19) in [0, 1] from a drawn seed (912 floats per sample are too many to
    shrink element by element), y int64 (n,) in {0, 1}."""
    import numpy as np

    n = draw(st.integers(1, max_samples))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.random((n, 48, 19), dtype=np.float32)
    y = rng.integers(0, 2, n).astype(np.int64)
    return x, y


@st.composite
def cell_masks(draw: st.DrawFn) -> Any:
    """Bool (48, 19) masks allowing at least one cell (a random set of features × a random set of hours)."""
    import numpy as np

    features = draw(st.lists(st.integers(0, 18), min_size=1, max_size=19, unique=True))
    hours = draw(st.lists(st.integers(0, 47), min_size=1, max_size=48, unique=True))
    mask = np.zeros((48, 19), dtype=bool)
    mask[np.ix_(hours, features)] = True
    return mask


@st.composite
def attack_batch_results(draw: st.DrawFn) -> Any:
    """Valid AttackBatchResult values: found rows flip the prediction, others carry zeros."""
    import numpy as np

    from lstm_adv.domain.perturbation import AttackBatchResult

    n = draw(st.integers(1, 5))
    iterations = draw(st.integers(1, 50))
    skip = np.array(draw(st.lists(st.sampled_from([0, 0, 1, 2]), min_size=n, max_size=n)), dtype=np.int8)
    found = (skip == 0) & np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    before = np.array(
        draw(st.lists(st.sampled_from([[1.5, -0.5], [-2.0, 0.25]]), min_size=n, max_size=n)), dtype=np.float32
    )
    after = np.where(found[:, None], before[:, ::-1], 0).astype(np.float32)
    first_it = np.where(found, draw(st.integers(1, iterations)), 0).astype(np.int64)
    best_it = np.where(found, iterations, 0).astype(np.int64)
    delta = np.stack([draw(perturbation_deltas()) for _ in range(n)]) * found[:, None, None]
    best = (delta / 2).astype(np.float32)
    return AttackBatchResult(
        iterations,
        0.5,
        sample_index=np.array(draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n)), dtype=np.int64),
        label=np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int64),
        logits_before=before,
        predicted=before.argmax(axis=1).astype(np.int64),
        skip=skip,
        found=found,
        first_iteration=first_it,
        first_delta=delta.astype(np.float32),
        first_logits=after,
        best_iteration=best_it,
        best_delta=best,
        best_logits=after,
        sparse_delta=np.where(np.abs(best) >= np.abs(best).max(axis=(1, 2), keepdims=True) / 2, best, 0),
        sparse_logits=after,
    )


# --- synthetic cohort (oracle AUROC) ----------------------------------------------------------------


@st.composite
def scores_and_labels(draw: st.DrawFn) -> tuple[list[float], list[int]]:
    """Scores with frequent ties and 0/1 labels holding both outcomes."""
    n = draw(st.integers(2, 30))
    scores = draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]) | st.floats(0, 1), min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda ys: 0 < sum(ys) < len(ys)))
    return scores, labels


# --- analysis stage ---------------------------------------------------------------------------------


def sparse_delta_array(seed: int, n: int, density: float, *, levels: int = 0) -> Any:
    """float32 δ of shape (n, 48, 19) in [-1, 1] with about ``density`` non-zero cells; ``levels > 0`` rounds
    magnitudes to that many steps so ties (equal maxima, equal susceptibilities) are common."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values = rng.uniform(-1.0, 1.0, (n, 48, 19))
    if levels:
        values = np.round(values * levels) / levels
    return (values * (rng.random((n, 48, 19)) < density)).astype(np.float32)


analysis_deltas = st.builds(
    sparse_delta_array,
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 8),
    density=st.sampled_from([0.0, 0.002, 0.02, 0.2, 1.0]),
    levels=st.sampled_from([0, 1, 3]),
)


def analysis_attack_result(seed: int, n: int, *, density: float = 0.05, budget: int = 40) -> Any:
    """An AttackBatchResult over samples 0..n-1 as the analysis stage reads it: both predicted classes,
    some samples skipped, most attacked ones (and always sample 0) successful, best δ = first δ shrunk."""
    import numpy as np

    from lstm_adv.domain.perturbation import AttackBatchResult

    rng = np.random.default_rng(seed)
    predicted = rng.integers(0, 2, n)
    predicted[:2] = (0, 1)
    before = np.where(predicted[:, None] == 0, [[1.0, -1.0]], [[-1.0, 1.0]]).astype(np.float32)
    attacked = rng.random(n) < 0.9
    found = attacked & (rng.random(n) < 0.8)
    attacked[0] = found[0] = True  # at least one success: the stage refuses attacks without any
    first = sparse_delta_array(int(rng.integers(2**32)), n, density) * found[:, None, None]
    first_it = np.where(found, rng.integers(1, budget // 2 + 1, n), 0).astype(np.int64)
    after = np.where(found[:, None], before[:, ::-1], 0.0).astype(np.float32)
    best = (first * rng.uniform(0.2, 1.0, (n, 1, 1))).astype(np.float32)
    return AttackBatchResult(
        budget,
        0.5,
        sample_index=np.arange(n, dtype=np.int64),
        label=predicted.astype(np.int64),
        logits_before=before,
        predicted=predicted.astype(np.int64),
        skip=np.where(attacked, 0, 1).astype(np.int8),
        found=found,
        first_iteration=first_it,
        first_delta=first,
        first_logits=after,
        best_iteration=np.where(found, first_it + rng.integers(0, budget // 2, n), 0).astype(np.int64),
        best_delta=best,
        best_logits=after,
        sparse_delta=np.where(rng.random((n, 48, 19)) < 0.5, best, 0.0).astype(np.float32),
        sparse_logits=after,
    )


analysis_attack_results = st.builds(analysis_attack_result, seed=st.integers(0, 2**32 - 1), n=st.integers(2, 12))
