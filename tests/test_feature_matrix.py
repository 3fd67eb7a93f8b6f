"""FeatureMatrix and ScalingStats: invariants, helpers and the stored form."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest
from hypothesis import given

from lstm_adv.domain.errors import ConfigError, DataError, ValidationError
from lstm_adv.domain.feature_matrix import FeatureMatrix, ScalingStats
from tests.strategies import PREPROCESS_NAMES, feature_matrices


def _matrix(n: int = 4) -> FeatureMatrix:
    scaling = ScalingStats(feature_names=PREPROCESS_NAMES, p5=np.zeros(19), p95=np.full(19, 10.0), median=np.ones(19))
    return FeatureMatrix(
        values=np.full((n, 48, 19), 0.5, dtype=np.float32),
        labels=np.array([0, 1, 0, 1][:n]),
        subject_ids=np.arange(n) + 1,
        hadm_ids=np.arange(n) + 10,
        icustay_ids=np.arange(n) + 20,
        feature_names=PREPROCESS_NAMES,
        split=np.array([0, 0, 1, 2][:n]),
        fold=np.array([0, 1, 0, -1][:n]),
        scaling=scaling,
    )


@given(feature_matrices())
def test_npz_round_trip(tmp_path_factory: pytest.TempPathFactory, matrix: FeatureMatrix) -> None:
    """from_npz(to_npz(m)) equals m, arrays, scaling and the observation mask (or its absence) included."""
    path = tmp_path_factory.mktemp("fm") / "features.npz"
    matrix.to_npz(path)
    back = FeatureMatrix.from_npz(path)
    assert back == matrix
    assert (back.observed is None) == (matrix.observed is None)
    if matrix.observed is not None:
        assert np.array_equal(back.observed, matrix.observed)
        assert np.array_equal(back.subset([0]).observed, matrix.observed[[0]])


def test_observation_mask_must_fit_the_values() -> None:
    """A mask of another shape or type is refused; a matrix without one says how to get it."""
    matrix = _matrix()
    with pytest.raises(ValidationError) as info:
        attrs.evolve(matrix, observed=np.ones((4, 48, 18), dtype=bool))
    assert str(info.value) == (
        "FeatureMatrix.observed must be a bool array of the values' shape (4, 48, 19), got bool (4, 48, 18)"
    )
    with pytest.raises(DataError) as missing:
        matrix.observation_mask()
    assert str(missing.value) == (
        "this feature matrix has no observation mask (it was built before the toolkit recorded one); "
        "re-run `lstm-adv preprocess` to use --cells observed"
    )


def test_wrong_shape_is_rejected_with_the_shape() -> None:
    """Values of the wrong shape name the expected and the actual shape."""
    with pytest.raises(ValidationError) as info:
        attrs.evolve(_matrix(), values=np.zeros((4, 48, 18), dtype=np.float32))
    assert str(info.value) == "FeatureMatrix.values must have shape (N, 48, 19), got (4, 48, 18)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"values": np.zeros((4, 48, 19))}, "FeatureMatrix.values must be float32, got float64"),
        (
            {"values": np.full((4, 48, 19), np.nan, dtype=np.float32)},
            "FeatureMatrix.values must be finite, got NaN or infinite entries",
        ),
        (
            {"values": np.full((4, 48, 19), 1.5, dtype=np.float32)},
            "FeatureMatrix.values must lie in [0, 1], got range [1.5, 1.5]",
        ),
        ({"labels": np.array([0, 2, 0, 1])}, "FeatureMatrix.labels must be 0 or 1, got [0, 1, 2]"),
        ({"labels": np.array([0, 1, 0])}, "FeatureMatrix.labels must have length N=4 (rows of values), got 3"),
        ({"split": np.array([0, 0, 1, 3])}, "FeatureMatrix.split codes must be 0, 1 or 2, got [0, 1, 3]"),
        ({"fold": np.array([0, 1, 0, 0])}, "FeatureMatrix.fold must be -1 exactly for test samples and >= 0 otherwise"),
        ({"fold": np.array([0, 2, 0, -1])}, "FeatureMatrix.fold must use every fold 0..K-1, got [0, 2]"),
        (
            {"subject_ids": np.array([1, 2, 3, 1])},
            "FeatureMatrix: subject 1 is in both train and test; splits must be disjoint by subject",
        ),
        ({"hadm_ids": np.array([1, 1, 2, 3])}, "FeatureMatrix.hadm_ids must be unique: one sample per admission"),
        ({"feature_names": PREPROCESS_NAMES[:18]}, "FeatureMatrix.feature_names must name 19 features, got 18"),
        ({"labels": np.array([0.0, 1.0, 0.0, 1.0])}, "FeatureMatrix.labels must be int64, got float64"),
    ],
)
def test_invariants_are_enforced(change: dict[str, object], message: str) -> None:
    """Each broken invariant raises a ValidationError naming the field, the rule and the value."""
    with pytest.raises(ValidationError) as info:
        attrs.evolve(_matrix(), **change)
    assert str(info.value) == message


def test_split_helpers_and_subset() -> None:
    """indices/split_mask select by split name; subset keeps rows and renumbers folds without gaps."""
    matrix = _matrix()
    assert matrix.indices("train").tolist() == [0, 1]
    assert matrix.split_mask("test").tolist() == [False, False, False, True]
    assert matrix.n_folds == 2
    part = matrix.subset([1, 3])
    assert part.hadm_ids.tolist() == [11, 13]
    assert part.fold.tolist() == [0, -1]
    assert part.n_folds == 1
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        matrix.indices("dev")


def test_scaling_maps_to_unit_interval_and_back() -> None:
    """scale winsorizes to [0, 1]; to_clinical turns a scaled change into clinical units; constant → 0."""
    p5 = np.zeros(19)
    p95 = np.full(19, 10.0)
    p95[0] = 0.0
    stats = ScalingStats(feature_names=PREPROCESS_NAMES, p5=p5, p95=p95, median=np.zeros(19))
    scaled = stats.scale(np.full((2, 19), 5.0))
    assert scaled[0, 1] == 0.5
    assert scaled[0, 0] == 0.0
    assert stats.scale(np.full(19, 99.0))[1] == 1.0
    assert stats.to_clinical(np.full(19, 0.1))[1] == pytest.approx(1.0)


def test_damaged_file_is_a_data_error(tmp_path: Path) -> None:
    """A file without the expected arrays is reported with its path and a fix."""
    path = tmp_path / "x.npz"
    np.savez(path, values=np.zeros(3))
    with pytest.raises(DataError, match="lacks array"):
        FeatureMatrix.from_npz(path)
