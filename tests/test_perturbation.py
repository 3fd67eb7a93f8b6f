"""Perturbation, attack outcomes and the columnar AttackBatchResult."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

from lstm_adv.domain.errors import DataError, ValidationError
from lstm_adv.domain.perturbation import (
    AttackBatchResult,
    AttackNotCompleted,
    AttackResult,
    AttackSucceeded,
    Perturbation,
)
from tests.strategies import attack_batch_results, perturbation_deltas

BEFORE = np.array([1.0, -1.0], dtype=np.float32)
AFTER = np.array([-1.0, 1.0], dtype=np.float32)


@given(perturbation_deltas())
def test_norms_match_their_elementwise_definitions(delta: np.ndarray) -> None:
    """L0 counts changed cells, L1 sums |δ_ij| over all cells, L∞ is the largest |δ_ij|."""
    p = Perturbation(delta)
    naive = [abs(float(v)) for v in delta.ravel()]
    assert p.l0 == sum(v != 0 for v in naive)
    assert p.l1 == pytest.approx(sum(naive), rel=1e-9, abs=1e-9)
    assert p.linf == max(naive)


def test_l1_is_the_elementwise_sum_not_the_induced_matrix_norm() -> None:
    """Two cells of 0.5 in different columns give L1 = 1.0 (the induced 1-norm would give 0.5)."""
    delta = np.zeros((48, 19), dtype=np.float32)
    delta[0, 0] = delta[1, 1] = 0.5
    assert Perturbation(delta).l1 == 1.0


def test_clinical_units_scale_each_feature_by_its_span() -> None:
    """δ in clinical units is δ times (p95 − p5) of its feature."""
    delta = np.zeros((48, 19), dtype=np.float32)
    delta[3, 2] = 0.25
    span = np.arange(19, dtype=np.float64) + 1.0
    clinical = Perturbation(delta).clinical(span)
    assert clinical[3, 2] == 0.25 * 3.0
    assert np.count_nonzero(clinical) == 1


def test_perturbation_is_read_only_and_copied() -> None:
    """Changing the source array later does not change a Perturbation; its array cannot be written."""
    delta = np.zeros((48, 19), dtype=np.float32)
    p = Perturbation(delta)
    delta[0, 0] = 0.5
    assert p.l0 == 0
    with pytest.raises(ValueError, match="read-only"):
        p.delta[0, 0] = 1.0


def test_perturbation_rejects_wrong_shape() -> None:
    """A δ of the wrong shape is rejected with the expected and actual shapes."""
    with pytest.raises(ValidationError) as info:
        Perturbation(np.zeros((48, 18), dtype=np.float32))
    assert str(info.value) == "Perturbation.delta must have shape (48, 19), got (48, 18)"


def test_perturbation_rejects_wrong_dtype_and_non_finite_values() -> None:
    """δ must be float32 and finite."""
    with pytest.raises(ValidationError) as info:
        Perturbation(np.zeros((48, 19)))
    assert str(info.value) == "Perturbation.delta must be float32, got float64"
    bad = np.zeros((48, 19), dtype=np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(ValidationError) as info:
        Perturbation(bad)
    assert str(info.value) == "Perturbation.delta must be finite; found NaN or infinity"


def test_perturbation_rejects_values_outside_unit_range() -> None:
    """|δ| > 1 cannot keep both x and x + δ in [0, 1]."""
    bad = np.zeros((48, 19), dtype=np.float32)
    bad[0, 0] = -1.5
    with pytest.raises(ValidationError) as info:
        Perturbation(bad)
    assert str(info.value) == (
        "Perturbation.delta must lie in [-1, 1] (x and x + δ are both in [0, 1]), got max |δ| = 1.5"
    )


def test_success_must_flip_the_prediction() -> None:
    """An AttackSucceeded whose logits predict the same class before and after is rejected."""
    with pytest.raises(ValidationError) as info:
        AttackSucceeded(3, Perturbation(np.zeros((48, 19), np.float32)), BEFORE, BEFORE)
    assert str(info.value) == (
        "AttackSucceeded must flip the decision; logits_before and logits_after both decide class 0 at threshold 0.5"
    )


def test_success_is_judged_at_the_models_threshold() -> None:
    """Logits that keep the argmax but cross the rule's boundary (t = 0.2: z₁ − z₀ ≥ log(0.25)) are a flip."""
    before = np.array([1.0, -1.0], dtype=np.float32)  # z₁ − z₀ = −2 < log(0.25) ≈ −1.39: survives at t = 0.2
    after = np.array([0.5, -0.5], dtype=np.float32)  # z₁ − z₀ = −1 ≥ −1.39: dies at t = 0.2 (argmax: survives)
    delta = np.zeros((48, 19), np.float32)
    assert AttackSucceeded(1, Perturbation(delta), before, after, threshold=0.2).succeeded
    with pytest.raises(ValidationError):
        AttackSucceeded(1, Perturbation(delta), before, after)


def test_result_needs_first_and_best_of_the_same_kind() -> None:
    """First and best are both successes or both not completed."""
    success = AttackSucceeded(2, Perturbation(np.zeros((48, 19), np.float32)), BEFORE, AFTER)
    failure = AttackNotCompleted("misclassified", BEFORE)
    with pytest.raises(ValidationError) as info:
        AttackResult(0, 1, 0, first=success, best=failure, sparse=success)
    assert str(info.value) == "AttackResult.first, .best and .sparse must all be successes or all not completed"


def test_best_cannot_be_larger_than_first() -> None:
    """The best success has an L1 no larger than the first success."""
    small, large = np.zeros((48, 19), np.float32), np.zeros((48, 19), np.float32)
    small[0, 0], large[0, 0] = 0.1, 0.2
    first = AttackSucceeded(2, Perturbation(small), BEFORE, AFTER)
    best = AttackSucceeded(5, Perturbation(large), BEFORE, AFTER)
    with pytest.raises(ValidationError, match=r"best\.l1 .* must not exceed first\.l1"):
        AttackResult(0, 1, 0, first=first, best=best, sparse=best)


def test_not_completed_needs_a_reason() -> None:
    """An empty reason is rejected."""
    with pytest.raises(ValidationError) as info:
        AttackNotCompleted(" ", BEFORE)
    assert str(info.value) == "AttackNotCompleted.reason must be a non-empty sentence"


@given(attack_batch_results())
def test_batch_result_npz_round_trip(result: AttackBatchResult) -> None:
    """to_npz followed by from_npz gives an equal AttackBatchResult."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "attack.npz"
        result.to_npz(path)
        assert AttackBatchResult.from_npz(path) == result


@given(attack_batch_results())
def test_rows_become_results_with_reasons(result: AttackBatchResult) -> None:
    """Found rows become successes carrying their stored δ; the others carry the reason they failed."""
    for row, item in enumerate(result.results()):
        assert item.sample_index == result.sample_index[row]
        assert item.predicted == result.predicted[row]
        if result.found[row]:
            assert isinstance(item.best, AttackSucceeded)
            assert np.array_equal(item.best.perturbation.delta, result.best_delta[row])
            assert item.best.iteration == result.best_iteration[row]
        elif result.skip[row] == 1:
            assert item.first == AttackNotCompleted("misclassified", result.logits_before[row])
        elif result.skip[row] == 2:
            assert "no cell it may change" in item.first.reason
        else:
            assert isinstance(item.first, AttackNotCompleted)
            assert item.first.reason == f"no success within {result.iterations} iterations"


@given(attack_batch_results(), attack_batch_results())
def test_concatenate_keeps_rows_in_order(a: AttackBatchResult, b: AttackBatchResult) -> None:
    """Concatenating two parts with one budget gives their rows in order; different budgets are an error."""
    if a.iterations != b.iterations:
        with pytest.raises(ValidationError, match="must share one iteration budget and threshold"):
            AttackBatchResult.concatenate([a, b])
        return
    both = AttackBatchResult.concatenate([a, b])
    assert both.n == a.n + b.n
    assert both.results() == a.results() + b.results()


def test_from_npz_rejects_a_foreign_file(tmp_path: Path) -> None:
    """A .npz without the attack columns is a DataError naming what is missing."""
    path = tmp_path / "other.npz"
    np.savez(path, values=np.zeros(3))
    with pytest.raises(DataError, match="is not an attack result file of this version: missing"):
        AttackBatchResult.from_npz(path)


def test_batch_result_rejects_success_of_a_skipped_sample() -> None:
    """A row marked found but not attacked breaks an invariant."""
    zeros_delta = np.zeros((1, 48, 19), np.float32)
    with pytest.raises(ValidationError) as info:
        AttackBatchResult(
            5,
            0.5,
            sample_index=np.array([0]),
            label=np.array([0]),
            logits_before=BEFORE[None],
            predicted=np.array([0]),
            skip=np.array([1], dtype=np.int8),
            found=np.array([True]),
            first_iteration=np.array([1]),
            first_delta=zeros_delta,
            first_logits=AFTER[None],
            best_iteration=np.array([1]),
            best_delta=zeros_delta,
            best_logits=AFTER[None],
            sparse_delta=zeros_delta,
            sparse_logits=AFTER[None],
        )
    assert str(info.value) == "AttackBatchResult.found must imply attacked; a skipped sample cannot succeed"


def test_batch_result_rejects_inconsistent_lengths() -> None:
    """Every column must have the same number of rows."""
    zeros_delta = np.zeros((2, 48, 19), np.float32)
    with pytest.raises(ValidationError) as info:
        AttackBatchResult(
            5,
            0.5,
            sample_index=np.array([0]),
            label=np.array([0]),
            logits_before=BEFORE[None],
            predicted=np.array([0]),
            skip=np.array([0], dtype=np.int8),
            found=np.array([False]),
            first_iteration=np.array([0]),
            first_delta=zeros_delta,
            first_logits=np.zeros((1, 2), np.float32),
            best_iteration=np.array([0]),
            best_delta=zeros_delta,
            best_logits=np.zeros((1, 2), np.float32),
            sparse_delta=np.zeros((1, 48, 19), np.float32),
            sparse_logits=np.zeros((1, 2), np.float32),
        )
    assert str(info.value) == "AttackBatchResult.first_delta must have shape (1, 48, 19), got (2, 48, 19)"


@settings(max_examples=5)
@given(attack_batch_results())
def test_batch_result_is_stored_through_the_run_store(result: AttackBatchResult) -> None:
    """An AttackBatchResult written into an attack run reads back equal from the committed run."""
    import tempfile

    from lstm_adv.results.store import RunStore

    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(Path(folder))
        with store.create("attack", config={}) as writer:
            result.to_npz(writer.file("attack.npz"))
        run = store.get(str(writer.id), kind="attack")
        assert AttackBatchResult.from_npz(run.file("attack.npz")) == result
