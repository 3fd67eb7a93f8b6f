"""The record threat: altered measurements pushed through the fill — stored input changes are the fill's, every
success re-flips through the numpy fill, every altered measurement is needed, bounds and masks hold."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lstm_adv.attacks import L1Attack, L1Settings, PgdAttack, RecordThreat, cell_mask, margin
from lstm_adv.attacks.l1 import _SHRINK_ROUNDS, SPARSE_MARGIN
from lstm_adv.attacks.threats import RecordBatch, SampleInputs
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.domain.record import PREWINDOW, fill_record
from tests.attack_models import TinyLSTM, TinyMLP
from tests.strategies import tiny_feature_matrix

MODEL = TinyLSTM(hidden=8, seed=3)
MLP64 = TinyMLP(seed=1)
FAST = L1Settings(lam=0.01, step_size=0.1, max_iterations=30, search_steps=2)


def _samples(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, labels, records (values outside [0, 1] included) and the median of a tiny features matrix."""
    matrix = tiny_feature_matrix(max(n, 12), seed=seed)
    rows = np.arange(n)
    return matrix.values[rows], matrix.labels[rows], matrix.record_values()[rows], matrix.scaling.scaled_median


def _apply(record: np.ndarray, change: np.ndarray, median: np.ndarray) -> np.ndarray:
    """The numpy fill of records altered by ``change`` (the reference path). Shape: (n, 49, 19) → (n, 48, 19)."""
    altered = np.where(np.isnan(record), np.nan, np.nan_to_num(record) + change)
    return fill_record(altered, median).astype(np.float32)


def _attack(model: Any, x: np.ndarray, y: np.ndarray, record: np.ndarray, median: np.ndarray, **kw: Any) -> Any:
    threat = RecordThreat(median, **{k: kw.pop(k) for k in ("mask", "max_change", "prewindow") if k in kw})
    settings = kw.pop("settings", FAST)
    return L1Attack(model, settings, threat=threat, include_misclassified=True, **kw).run(x, y, record=record)


@given(st.integers(0, 2**16), st.sampled_from(("ista", "fista", "adam")))
@settings(max_examples=6, deadline=None)
def test_stored_input_changes_are_the_fill_of_the_record_change_and_reflip(seed: int, method: str) -> None:
    """For first, best and sparse: the stored input change equals fill(record + δ) − fill(record) (numpy, 1e-6),
    only present entries change, and every success flips the model when its record change is pushed through
    the numpy fill."""
    x, y, record, median = _samples(6, seed)
    result = _attack(MODEL, x, y, record, median, settings=attrs.evolve(FAST, method=method))
    assert result.record_space
    assert result.unit == "measurement"
    for which in ("first", "best", "sparse"):
        change = result.record_deltas(which)
        assert not change[np.isnan(record)].any()
        np.testing.assert_allclose(x + result.deltas(which), _apply(record, change, median), atol=1e-6)
    flipped = _apply(record, result.sparse_record_delta, median)
    with torch.no_grad():
        logits = MODEL(torch.from_numpy(flipped))
    decided = (logits[:, 1] - logits[:, 0] >= 0).long().numpy()
    assert (decided[result.found] != result.predicted[result.found]).all()


def test_the_record_attack_flips_with_few_altered_measurements_that_move_more_cells() -> None:
    """On a learned-looking model the attack succeeds; its L0 counts altered measurements, each of which moves
    at least its own cell (leverage ≥ 1) — mostly more, through the interpolated neighbours."""
    x, y, record, median = _samples(12, 1)
    result = _attack(MODEL, x, y, record, median)
    found = result.found
    assert found.sum() >= 6
    l0, cells = result.l0("sparse")[found], result.input_l0("sparse")[found]
    assert (l0 >= 1).all()
    assert (cells >= l0 - (result.sparse_record_delta[found][:, PREWINDOW] != 0).sum(1)).all()
    assert cells.sum() > l0.sum()


@given(st.integers(0, 2**16))
@settings(max_examples=5, deadline=None)
def test_every_altered_measurement_of_a_sparse_example_is_needed(seed: int) -> None:
    """Dropping any one altered measurement of a sparse example (the float64 model) un-flips it, or leaves it
    within SPARSE_MARGIN of the boundary."""
    x, y, record, median = _samples(4, seed)
    result = _attack(MLP64, x, y, record, median)
    assert (result.l0("sparse") <= result.l0("best")).all()
    for row in np.flatnonzero(result.found):
        change = result.sparse_record_delta[row]
        target = torch.tensor([result.predicted[row]])
        for entry in zip(*np.nonzero(change), strict=True):
            smaller = change.copy()
            smaller[entry] = 0.0
            point = torch.from_numpy(_apply(record[row : row + 1], smaller[None], median))
            with torch.no_grad():
                kept = float(margin(MLP64(point), target)[0])
            assert kept > -SPARSE_MARGIN, f"row {row}: altered measurement {entry} is not needed"


@given(st.integers(0, 2**16), st.booleans())
@settings(max_examples=6, deadline=None)
def test_altered_values_stay_in_the_box_or_keep_their_value_within_max_change(seed: int, prewindow: bool) -> None:
    """An altered value lies in [0, 1] (p5–p95) unless it kept its original value; no change exceeds max_change;
    without record_prewindow the pre-window bins never change; masked features and hours never change."""
    x, y, record, median = _samples(8, seed)
    bound = np.full(19, np.inf, dtype=np.float32)
    bound[0] = 0.15
    mask = cell_mask(features=range(0, 12), hours=range(0, 40))
    result = _attack(MODEL, x, y, record, median, max_change=bound, prewindow=prewindow, mask=mask)
    for which in ("first", "best", "sparse"):
        change = result.record_deltas(which)
        altered = change != 0
        value = np.nan_to_num(record) + change
        assert ((value[altered] >= -1e-6) & (value[altered] <= 1 + 1e-6)).all()
        assert (np.abs(change[..., 0]) <= 0.15 + 1e-6).all()
        assert not change[:, 1 + 40 :].any()
        assert not change[:, :, 12:].any()
        if not prewindow:
            assert not change[:, PREWINDOW].any()


def test_the_union_prox_and_projection_pick_the_better_of_the_interval_and_the_original_value() -> None:
    """For a value above the box (r = 1.3: feasible δ ∈ {0} ∪ [−1.3, −0.3]) the prox keeps 0 for a small pull
    and jumps into the interval for a strong one; inside the box it is the soft-threshold clamped."""
    record = torch.full((1, 49, 19), float("nan"))
    record[0, 5, 0], record[0, 6, 1] = 1.3, 0.5
    threat = RecordThreat(torch.full((19,), 0.5)).batch(torch.zeros(1, 48, 19), SampleInputs(record=record))
    assert isinstance(threat, RecordBatch)
    u = torch.zeros(1, 49, 19)
    u[0, 5, 0], u[0, 6, 1] = -0.1, -0.2
    assert threat.prox(u, 0.01)[0, 5, 0] == 0.0  # ½·0.2² + 0.01·0.3 > ½·0.1²: keeping the value costs less
    u[0, 5, 0] = -0.2
    assert float(threat.prox(u, 0.01)[0, 5, 0]) == pytest.approx(-0.3)  # ½·0.1² + 0.003 < ½·0.2²
    u[0, 5, 0] = -0.9
    assert float(threat.prox(u, 0.01)[0, 5, 0]) == pytest.approx(-0.89)
    assert float(threat.prox(u, 0.01)[0, 6, 1]) == pytest.approx(-0.19)
    u[0, 5, 0] = -0.14
    assert threat.project(u)[0, 5, 0] == 0.0
    u[0, 5, 0] = -0.16
    assert float(threat.project(u)[0, 5, 0]) == pytest.approx(-0.3)


def test_a_batch_gives_the_same_results_as_each_sample_alone() -> None:
    """Record attacks in batches equal attacking each sample alone (the sparse values to the bisection's
    resolution)."""
    x, y, record, median = _samples(5, 2)
    batched = _attack(MODEL, x, y, record, median, batch_size=3)
    alone = AttackBatchResult.concatenate(
        [_attack(MODEL, x[i : i + 1], y[i : i + 1], record[i : i + 1], median, batch_size=1) for i in range(5)]
    )
    assert batched.found.tolist() == alone.found.tolist()
    assert batched.best_iteration.tolist() == alone.best_iteration.tolist()
    for name in ("first_record_delta", "best_record_delta", "first_delta", "best_delta"):
        np.testing.assert_allclose(getattr(batched, name), getattr(alone, name), rtol=0, atol=1e-5)
    assert np.array_equal(batched.sparse_record_delta != 0, alone.sparse_record_delta != 0)
    np.testing.assert_allclose(batched.sparse_record_delta, alone.sparse_record_delta, atol=2.0**-_SHRINK_ROUNDS)


def test_a_sample_without_a_measurement_it_may_alter_is_skipped_with_that_reason() -> None:
    """A record whose present entries all lie outside the mask is skipped (no cell it may change), not attacked."""
    _x, y, record, median = _samples(3)
    record = record.copy()
    record[0, :, 5:] = np.nan
    mask = cell_mask(features=range(5, 19))
    values = fill_record(record, median).astype(np.float32)
    result = _attack(MODEL, values, y, record, median, mask=mask)
    assert result.skip[0] == 2
    assert not result.found[0]


def test_missing_or_malformed_records_and_pgd_on_records_are_one_line() -> None:
    """No record, a record of the wrong shape, NaN bounds, and PGD on the record threat: one clear error each."""
    x, y, record, median = _samples(3)
    attack = L1Attack(MODEL, FAST, threat=RecordThreat(median))
    with pytest.raises(DataError, match=r"cells 'record' needs each sample's record"):
        attack.run(x, y)
    with pytest.raises(DataError, match=r"attack record must be a float32 array of shape \(3, 49, 19\)"):
        attack.run(x, y, record=record[:, 1:])
    with pytest.raises(ConfigError, match="max_change must be 19 values ≥ 0"):
        RecordThreat(median, max_change=np.full(19, np.nan))
    with pytest.raises(ConfigError, match="PGD perturbs the model input"):
        PgdAttack(MODEL, threat=RecordThreat(median))
