"""The record and the fill: the numpy fill (the reference) makes every stored model input, the torch twin
equals it, and one altered measurement moves only the cells between its neighbours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lstm_adv.attacks.record import FillPlan
from lstm_adv.attacks.record import fill_record as torch_fill
from lstm_adv.config import PreprocessConfig
from lstm_adv.domain.errors import DataError
from lstm_adv.domain.feature_matrix import FeatureMatrix
from lstm_adv.domain.record import PREWINDOW, fill_record
from lstm_adv.preprocess import build_feature_matrix
from lstm_adv.query.tables import QueryTables
from lstm_adv.resources import load_feature_spec
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import RunStore
from tests.strategies import query_table_inputs, tiny_feature_matrix

MEDIAN = np.linspace(0.2, 0.8, 19)
SPEC = load_feature_spec()
CONFIG = PreprocessConfig(n_folds=2)


def _both(record: np.ndarray, median: np.ndarray = MEDIAN) -> tuple[np.ndarray, np.ndarray]:
    """The numpy reference and the torch twin of one batch of records."""
    reference = fill_record(record, median)
    values = torch.from_numpy(record.astype(np.float32))
    twin = torch_fill(values, ~torch.isnan(values), torch.from_numpy(median).float()).numpy()
    return reference, twin


@st.composite
def records(draw: st.DrawFn) -> np.ndarray:
    """Records of 1–6 samples: values in [-0.5, 1.5] (outside the box too), each entry present with a drawn
    probability (0: never measured, 1: every hour), pre-window bins present or not."""
    n = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.sampled_from((0.0, 0.02, 0.1, 0.5, 1.0)))
    rng = np.random.default_rng(seed)
    record = rng.uniform(-0.5, 1.5, size=(n, 49, 19)).astype(np.float32)
    present = rng.random(record.shape) < density
    present[:, PREWINDOW] = rng.random((n, 19)) < 0.5
    record[~present] = np.nan
    return record


def test_torch_fill_equals_the_reference_on_the_edge_cases() -> None:
    """No measurement (median or pre-window bin), one measurement, a pre-window bin only, measurements at
    hours 0 and 47, and values outside the box: the twin equals the reference; the reference fills as
    preprocessing's rules say."""
    record = np.full((6, 49, 19), np.nan, dtype=np.float32)
    record[1, 1 + 20, 0] = 0.3  # one measurement at hour 20, no pre-window bin: the whole series
    record[2, PREWINDOW, 0] = 0.9  # a pre-window bin only: the whole series
    record[3, 1 + 0, 0], record[3, 1 + 47, 0] = 0.1, 0.57  # hours 0 and 47: interpolated between
    record[4, PREWINDOW, 0], record[4, 1 + 10, 0] = 0.2, 1.4  # back-fill from before, then above p95
    record[5, 1 + 30, 0], record[5, 1 + 40, 0] = -0.6, 0.4  # below p5: clipped where it lies
    reference, twin = _both(record)
    np.testing.assert_allclose(twin, reference, atol=1e-6)
    assert (reference[0, :, 0] == MEDIAN[0]).all()
    assert (reference[1, :, 0] == np.float32(0.3)).all()
    assert (reference[2, :, 0] == np.float32(0.9)).all()
    np.testing.assert_allclose(reference[3, :, 0], np.linspace(0.1, 0.57, 48), atol=1e-6)
    assert (reference[4, :10, 0] == np.float32(0.2)).all()
    assert (reference[4, 10:, 0] == 1.0).all()
    assert (reference[5, :31, 0] == 0.0).all()
    assert reference[5, 35, 0] == pytest.approx(0.0)
    assert reference[5, 38, 0] == pytest.approx(-0.6 + 1.0 * 8 / 10, abs=1e-6)


@given(records())
def test_the_twin_equals_the_reference_and_stays_in_the_box(record: np.ndarray) -> None:
    """For any record the torch fill equals the numpy reference within 1e-6, and both lie in [0, 1]."""
    reference, twin = _both(record)
    np.testing.assert_allclose(twin, reference, atol=1e-6)
    assert reference.min() >= 0.0
    assert reference.max() <= 1.0


@given(records(), st.integers(0, 2**32 - 1))
def test_one_altered_measurement_moves_only_the_cells_between_its_neighbours(record: np.ndarray, seed: int) -> None:
    """Changing one present entry changes only its feature's cells strictly between the previous and the next
    measured hour (the pre-window bin: only cells before the first in-window measurement)."""
    rng = np.random.default_rng(seed)
    present = np.argwhere(~np.isnan(record))
    if present.size == 0:
        return
    sample, row, feature = present[rng.integers(len(present))]
    altered = record.copy()
    altered[sample, row, feature] = np.float32(rng.uniform(-0.5, 1.5))
    moved = fill_record(altered, MEDIAN) != fill_record(record, MEDIAN)
    hours = np.flatnonzero(~np.isnan(record[sample, 1:, feature]))
    if row == PREWINDOW:
        low, high = -1, hours.min() if hours.size else 48
    else:
        hour = row - 1
        low, high = max(hours[hours < hour], default=-1), min(hours[hours > hour], default=48)
    allowed = np.zeros_like(moved)
    allowed[sample, low + 1 : high, feature] = True
    assert not (moved & ~allowed).any()


@given(query_table_inputs)
def test_the_stored_matrix_is_the_fill_of_its_record(frames: Any) -> None:
    """Preprocessing's values equal the numpy fill of the stored record exactly, and the torch fill within 1e-6;
    the record is measured exactly where the observation mask says, before any winsorizing."""
    tables = QueryTables.from_frames(frames[0], frames[1], SPEC, origin="query tables")
    try:
        matrix, _ = build_feature_matrix(tables, SPEC, config=CONFIG)
    except DataError:
        return  # tiny random cohorts: too few patients, or a feature never measured in train
    record = matrix.record_values()
    median = matrix.scaling.scaled_median
    assert np.array_equal(fill_record(record, median).astype(np.float32), matrix.values)
    twin = torch_fill(torch.from_numpy(record), torch.from_numpy(~np.isnan(record)), torch.from_numpy(median).float())
    np.testing.assert_allclose(twin.numpy(), matrix.values, atol=1e-6)
    assert np.array_equal(~np.isnan(record[:, 1:]), matrix.observation_mask())


def test_a_plan_reads_only_present_entries() -> None:
    """Absent entries never reach the input: NaN or any value there gives the same fill."""
    record = tiny_feature_matrix(12).record_values()
    present = torch.from_numpy(~np.isnan(record))
    plan = FillPlan.from_present(present)
    median = torch.full((19,), 0.5)
    zeros = plan.apply(torch.from_numpy(np.nan_to_num(record, nan=0.0)), median)
    large = plan.apply(torch.from_numpy(np.nan_to_num(record, nan=123.0)), median)
    assert torch.equal(zeros, large)


def test_a_features_file_without_a_record_says_to_rerun_preprocess(tmp_path: Path) -> None:
    """A matrix stored before records were kept reads with record None, and asking for it is one line."""
    matrix = tiny_feature_matrix(10)
    old = attrs.evolve(matrix, record=None)
    path = tmp_path / "features.npz"
    old.to_npz(path)
    loaded = FeatureMatrix.from_npz(path)
    assert loaded.record is None
    with pytest.raises(DataError, match=r"has no record .* re-run `lstm-adv preprocess` to use --cells record"):
        loaded.record_values()
    matrix.to_npz(path)
    assert FeatureMatrix.from_npz(path) == matrix


def _runs_fill_equal(store: RunStore, features_run: Any) -> None:
    matrix = FeatureMatrix.from_npz(features_run.file("features.npz"))
    record = matrix.record_values()
    median = matrix.scaling.scaled_median
    assert np.array_equal(fill_record(record, median).astype(np.float32), matrix.values)
    twin = torch_fill(torch.from_numpy(record), torch.from_numpy(~np.isnan(record)), torch.from_numpy(median).float())
    assert float(np.abs(twin.numpy() - matrix.values).max()) <= 1e-6
    # the record keeps values outside p5–p95 as they are (not winsorized)
    assert np.nanmax(record) > 1.0
    assert np.nanmin(record) < 0.0


@pytest.mark.db
def test_on_the_demo_every_sample_fills_equal(demo_dsn: str, tmp_path: Path) -> None:
    """On the MIMIC-III demo, the stored values are the fill of the stored record; the twin agrees within 1e-6."""
    from lstm_adv.preprocess import run_preprocess
    from lstm_adv.query import run_cohort_query

    store = RunStore(tmp_path / "runs")
    config = load_config()
    query = run_cohort_query(demo_dsn, schema="mimiciii", config=config, store=store)
    _runs_fill_equal(store, run_preprocess(store, str(query.id), config))


@pytest.mark.db
def test_on_a_synthetic_cohort_every_sample_fills_equal(pg_server: Any, tmp_path: Path) -> None:
    """On a 400-admission synthetic cohort too."""
    from lstm_adv.preprocess import run_preprocess
    from lstm_adv.query import run_cohort_query
    from lstm_adv.synth import run_synth

    store = RunStore(tmp_path / "runs")
    config = load_config(overrides={"synth.admissions": 400, "synth.seed": 4, "synth.schema": "synth_record_test"})
    run_synth(pg_server.dsn, config=config, store=store, source="embedded")
    query = run_cohort_query(pg_server.dsn, schema="synth_record_test", config=config, store=store)
    _runs_fill_equal(store, run_preprocess(store, str(query.id), config))
