"""Evaluation metrics against scikit-learn, and the vectorized bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve as sk_calibration

from lstm_adv import metrics
from lstm_adv.domain.errors import DataError
from tests.strategies import scores_and_labels


def _fixed() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 400)
    p = np.round(np.clip(rng.random(400) * 0.7 + 0.25 * y, 0.0, 1.0), 2)  # rounded: many ties
    return y, p


def test_ranking_metrics_match_scikit_learn() -> None:
    """AUROC and AUPRC equal scikit-learn's roc_auc_score and average_precision_score, ties included."""
    y, p = _fixed()
    assert metrics.auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert metrics.auprc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)


def test_threshold_metrics_match_scikit_learn() -> None:
    """Precision, recall, F1, Brier and the confusion matrix equal scikit-learn's at a fixed threshold."""
    y, p = _fixed()
    predicted = p >= 0.5
    stats = metrics.threshold_counts(y, p, 0.5)
    assert stats["f1"] == pytest.approx(skm.f1_score(y, predicted))
    assert stats["precision"] == pytest.approx(skm.precision_score(y, predicted))
    assert stats["recall"] == pytest.approx(skm.recall_score(y, predicted))
    assert metrics.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p))
    assert np.array_equal(metrics.confusion_matrix(y, p, 0.5), skm.confusion_matrix(y, predicted))


def test_calibration_curve_matches_scikit_learn() -> None:
    """The calibration curve equals scikit-learn's uniform-bin curve (empty bins dropped)."""
    y, p = _fixed()
    curve = metrics.calibration_curve(y, p, n_bins=10)
    fraction, mean_predicted = sk_calibration(y, p, n_bins=10, strategy="uniform")
    assert np.allclose(curve.fraction_positive, fraction)
    assert np.allclose(curve.mean_predicted, mean_predicted)
    assert sum(curve.count) == y.size


def test_undefined_precision_is_zero() -> None:
    """With no predicted positives precision and F1 are 0, as scikit-learn's zero_division=0."""
    stats = metrics.threshold_counts(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4]), 0.9)
    assert stats == {"f1": 0.0, "precision": 0.0, "recall": 0.0}


def test_chosen_threshold_maximizes_f1() -> None:
    """choose_threshold returns a score whose F1 is the best over every candidate threshold."""
    y, p = _fixed()
    best = max(skm.f1_score(y, p >= t) for t in np.unique(p))
    assert skm.f1_score(y, p >= metrics.choose_threshold(y, p)) == pytest.approx(best)


@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40).filter(
        lambda rows: len({label for label, _ in rows}) == 2
    )
)
def test_ranking_metrics_match_scikit_learn_on_any_input(rows: list[tuple[int, int]]) -> None:
    """Oracle: the bootstrap's vectorized AUROC/AUPRC/Brier (its point estimate, a row of ones) equal
    scikit-learn on arbitrary small inputs with ties."""
    y = np.array([label for label, _ in rows])
    p = np.array([score / 5 for _, score in rows])
    ones = np.ones((1, y.size))
    assert metrics._auroc(p, y, ones)[0] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert metrics._auprc(p, y, ones)[0] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert metrics._brier(p, y, ones)[0] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    kwargs = {"threshold": 0.5, "bootstrap_samples": 0, "confidence": 0.95, "calibration_bins": 5, "seed": 0}
    evaluated = metrics.evaluate_predictions(y, p, **kwargs)  # type: ignore[arg-type]
    assert evaluated.auroc.value == pytest.approx(metrics.auroc(y, p), abs=1e-12)
    assert evaluated.auprc.value == pytest.approx(metrics.auprc(y, p), abs=1e-12)


def test_bootstrap_weights_equal_explicit_resamples() -> None:
    """Oracle: scoring a resample through count weights equals scoring the resampled arrays themselves."""
    y, p = _fixed()
    idx = np.random.default_rng(3).integers(0, y.size, y.size)
    weights = np.bincount(idx, minlength=y.size)[None, :].astype(float)
    assert metrics._auroc(p, y, weights)[0] == pytest.approx(skm.roc_auc_score(y[idx], p[idx]))
    assert metrics._auprc(p, y, weights)[0] == pytest.approx(skm.average_precision_score(y[idx], p[idx]))
    assert metrics._brier(p, y, weights)[0] == pytest.approx(skm.brier_score_loss(y[idx], p[idx]))


def test_bootstrap_intervals_contain_point_estimates() -> None:
    """Every 95 % interval contains its point estimate and is seeded (same seed, same interval)."""
    y, p = _fixed()
    kwargs = {"threshold": 0.5, "bootstrap_samples": 500, "confidence": 0.95, "calibration_bins": 10, "seed": 1}
    first = metrics.evaluate_predictions(y, p, **kwargs)  # type: ignore[arg-type]
    for name in ("auroc", "auprc", "f1", "precision", "recall", "brier"):
        interval = getattr(first, name)
        assert interval.low <= interval.value <= interval.high, name
        assert interval.low < interval.high, name
    assert metrics.evaluate_predictions(y, p, **kwargs) == first  # type: ignore[arg-type]
    assert first.n == 400
    assert first.prevalence == pytest.approx(y.mean())


def test_single_class_is_a_data_error() -> None:
    """AUROC of a single class is refused with a message naming both counts."""
    with pytest.raises(DataError) as info:
        metrics.auroc(np.zeros(5, dtype=int), np.linspace(0, 1, 5))
    assert str(info.value) == "auroc: needs both classes; got 5 negatives and 0 positives"


@given(scores_and_labels())
def test_curve_points_match_scikit_learn(data: tuple[list[float], list[int]]) -> None:
    """ROC and PR points equal scikit-learn's (without its point dropping) on random scores with ties."""
    p, y = np.asarray(data[0]), np.asarray(data[1])
    points = metrics.curve_points(y, p)
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(points["roc_x"], fpr)
    np.testing.assert_allclose(points["roc_y"], tpr)
    precision, recall, _ = skm.precision_recall_curve(y, p, drop_intermediate=False)
    # scikit-learn lists PR points from the lowest threshold up and appends (recall 0, precision 1).
    np.testing.assert_allclose(points["pr_x"], recall[:-1][::-1])
    np.testing.assert_allclose(points["pr_y"], precision[:-1][::-1])
