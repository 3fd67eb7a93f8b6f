"""Attack outcomes: the perturbation of one sample and what an attack found for it.

``Perturbation`` is δ for one sample in normalized units (the model sees ``x + δ`` with both in
``[0, 1]``). ``AttackResult`` holds, per sample, the first and the best success or a not-completed
value with its reason. ``AttackBatchResult`` is the columnar form of many results, the one that is
stored (``to_npz`` / ``from_npz``) and merged across shards (``concatenate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from lstm_adv.domain.errors import DataError, ValidationError
from lstm_adv.domain.shapes import CELL_SHAPE, N_CLASSES, N_FEATURES

MISCLASSIFIED = "misclassified"
#: Which successful iterate an example is: the first success, or the best (smallest L1) one.
EXAMPLES = ("first", "best")
#: Direction of a flip, by the prediction at δ = 0: 0→1 (survival → death) and 1→0.
DIRECTIONS = ("0to1", "1to0")
DIRECTION_LABELS = {"0to1": "0→1", "1to0": "1→0"}

_ARRAY_EQ = attrs.cmp_using(eq=np.array_equal)


def _readonly_copy(value: Any) -> np.ndarray:
    array = np.array(value, copy=True)
    array.setflags(write=False)
    return array


def _check_array(owner: str, name: str, value: np.ndarray, shape: tuple[int | None, ...], dtype: type) -> None:
    """Shape (``None`` = any length), dtype and, for floats, finiteness."""
    pairs = zip(value.shape, shape, strict=False)
    if value.ndim != len(shape) or any(want is not None and got != want for got, want in pairs):
        want_text = "(" + ", ".join("N" if w is None else str(w) for w in shape) + ")"
        raise ValidationError(f"{owner}.{name} must have shape {want_text}, got {tuple(value.shape)}")
    if value.dtype != np.dtype(dtype):
        raise ValidationError(f"{owner}.{name} must be {np.dtype(dtype).name}, got {value.dtype.name}")
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        raise ValidationError(f"{owner}.{name} must be finite; found NaN or infinity")


def _check_delta(instance: Perturbation, attribute: attrs.Attribute[np.ndarray], value: np.ndarray) -> None:
    _check_array("Perturbation", "delta", value, CELL_SHAPE, np.float32)
    if np.abs(value).max(initial=0.0) > 1.0:
        raise ValidationError(
            f"Perturbation.delta must lie in [-1, 1] (x and x + δ are both in [0, 1]), "
            f"got max |δ| = {float(np.abs(value).max())}"
        )


@attrs.frozen
class Perturbation:
    """δ for one sample in normalized units. Shape: (48, 19) float32, |δ| ≤ 1."""

    delta: np.ndarray = attrs.field(converter=_readonly_copy, validator=_check_delta, eq=_ARRAY_EQ)

    @property
    def l0(self) -> int:
        """Number of changed cells."""
        return int(np.count_nonzero(self.delta))

    @property
    def l1(self) -> float:
        """Σ_ij |δ_ij| (element-wise, not the induced matrix norm)."""
        return float(np.abs(self.delta, dtype=np.float64).sum())

    @property
    def linf(self) -> float:
        """max_ij |δ_ij|."""
        return float(np.abs(self.delta).max())

    def clinical(self, scaling_span: np.ndarray) -> np.ndarray:
        """δ in clinical units, ``δ · (p95 − p5)`` per feature. Shape: (48, 19) float64."""
        span = np.asarray(scaling_span, dtype=np.float64)
        if span.shape != (N_FEATURES,):
            raise ValidationError(f"scaling span must have shape ({N_FEATURES},), got {span.shape}")
        return self.delta.astype(np.float64) * span


def _check_logits(owner: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[np.ndarray], value: np.ndarray) -> None:
        _check_array(owner, attribute.name, value, (N_CLASSES,), np.float32)

    return check


def _check_iteration(instance: AttackSucceeded, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValidationError(f"AttackSucceeded.iteration must be ≥ 1, got {value}")


@attrs.frozen
class AttackSucceeded:
    """A successful iterate: the prediction at ``x + δ`` differs from the one at ``x``."""

    iteration: int = attrs.field(validator=_check_iteration)
    perturbation: Perturbation
    logits_before: np.ndarray = attrs.field(
        converter=_readonly_copy, validator=_check_logits("AttackSucceeded"), eq=_ARRAY_EQ
    )
    logits_after: np.ndarray = attrs.field(
        converter=_readonly_copy, validator=_check_logits("AttackSucceeded"), eq=_ARRAY_EQ
    )

    def __attrs_post_init__(self) -> None:
        if np.argmax(self.logits_before) == np.argmax(self.logits_after):
            raise ValidationError(
                "AttackSucceeded must flip the prediction; logits_before and logits_after "
                f"both predict class {int(np.argmax(self.logits_before))}"
            )

    @property
    def succeeded(self) -> bool:
        """Always True."""
        return True


def _check_reason(instance: AttackNotCompleted, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.strip():
        raise ValidationError("AttackNotCompleted.reason must be a non-empty sentence")


@attrs.frozen
class AttackNotCompleted:
    """No success for this sample, and why (e.g. ``misclassified``, ``no success within 1000 iterations``)."""

    reason: str = attrs.field(validator=_check_reason)
    logits_before: np.ndarray = attrs.field(
        converter=_readonly_copy, validator=_check_logits("AttackNotCompleted"), eq=_ARRAY_EQ
    )

    @property
    def succeeded(self) -> bool:
        """Always False."""
        return False


AttackOutcome = AttackSucceeded | AttackNotCompleted


def _check_binary(instance: AttackResult, attribute: attrs.Attribute[int], value: int) -> None:
    if value not in (0, 1):
        raise ValidationError(f"AttackResult.{attribute.name} must be 0 or 1, got {value}")


@attrs.frozen
class AttackResult:
    """Per sample: its index in the FeatureMatrix, true and predicted labels, first and best outcome."""

    sample_index: int
    label: int = attrs.field(validator=_check_binary)
    predicted: int = attrs.field(validator=_check_binary)
    first: AttackOutcome
    best: AttackOutcome

    def __attrs_post_init__(self) -> None:
        if self.sample_index < 0:
            raise ValidationError(f"AttackResult.sample_index must be ≥ 0, got {self.sample_index}")
        if isinstance(self.first, AttackSucceeded) != isinstance(self.best, AttackSucceeded):
            raise ValidationError("AttackResult.first and .best must both be successes or both not completed")
        if isinstance(self.first, AttackSucceeded) and isinstance(self.best, AttackSucceeded):
            if self.best.iteration < self.first.iteration:
                raise ValidationError(
                    f"AttackResult.best.iteration ({self.best.iteration}) must not precede "
                    f"first.iteration ({self.first.iteration})"
                )
            first_l1, best_l1 = self.first.perturbation.l1, self.best.perturbation.l1
            if best_l1 > first_l1 * (1 + 1e-5) + 1e-6:  # float32 sums on the device vs float64 here
                raise ValidationError(f"AttackResult.best.l1 ({best_l1}) must not exceed first.l1 ({first_l1})")

    @property
    def succeeded(self) -> bool:
        """Whether any iterate flipped the prediction."""
        return self.first.succeeded


def _check_batch(result: AttackBatchResult) -> None:
    n = result.sample_index.shape[0] if result.sample_index.ndim == 1 else -1
    owner = "AttackBatchResult"
    specs: dict[str, tuple[tuple[int | None, ...], type]] = {
        "sample_index": ((n,), np.int64),
        "label": ((n,), np.int64),
        "logits_before": ((n, N_CLASSES), np.float32),
        "attacked": ((n,), np.bool_),
        "found": ((n,), np.bool_),
        "first_iteration": ((n,), np.int64),
        "first_delta": ((n, *CELL_SHAPE), np.float32),
        "first_logits": ((n, N_CLASSES), np.float32),
        "best_iteration": ((n,), np.int64),
        "best_delta": ((n, *CELL_SHAPE), np.float32),
        "best_logits": ((n, N_CLASSES), np.float32),
    }
    for name, (shape, dtype) in specs.items():
        _check_array(owner, name, getattr(result, name), shape, dtype)
    if result.iterations < 1:
        raise ValidationError(f"{owner}.iterations must be ≥ 1, got {result.iterations}")
    if not np.isin(result.label, (0, 1)).all():
        raise ValidationError(f"{owner}.label must be 0 or 1")
    if (result.found & ~result.attacked).any():
        raise ValidationError(f"{owner}.found must imply attacked; a skipped sample cannot succeed")
    _check_iterations(result)
    if (np.abs(result.first_delta) > 1).any() or (np.abs(result.best_delta) > 1).any():
        raise ValidationError(f"{owner} deltas must lie in [-1, 1]")


def _check_iterations(result: AttackBatchResult) -> None:
    for name in ("first_iteration", "best_iteration"):
        it = getattr(result, name)
        found_ok = (it[result.found] >= 1).all() and (it[result.found] <= result.iterations).all()
        if not found_ok or (it[~result.found] != 0).any():
            raise ValidationError(
                f"AttackBatchResult.{name} must lie in [1, {result.iterations}] where found and be 0 elsewhere"
            )
    if (result.best_iteration < result.first_iteration).any():
        raise ValidationError("AttackBatchResult.best_iteration must not precede first_iteration")


@attrs.frozen
class AttackBatchResult:
    """Columnar results of one attack over N samples (the stored form).

    Shapes: index/label/flags/iterations (N,); logits (N, 2) float32; deltas (N, 48, 19) float32.
    Rows with ``found == False`` carry zero deltas, zero logits after, and iteration 0.
    """

    iterations: int
    sample_index: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    label: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    logits_before: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    attacked: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    found: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    first_iteration: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    first_delta: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    first_logits: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    best_iteration: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    best_delta: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    best_logits: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)

    def __attrs_post_init__(self) -> None:
        _check_batch(self)

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.sample_index.shape[0])

    @property
    def predicted(self) -> np.ndarray:
        """Predicted label at δ = 0. Shape: (N,) int64."""
        predicted: np.ndarray = self.logits_before.argmax(axis=1).astype(np.int64)
        return predicted

    @property
    def success_rate(self) -> float:
        """Successes among attacked samples (0.0 when none was attacked)."""
        attacked = int(self.attacked.sum())
        return float(self.found.sum()) / attacked if attacked else 0.0

    def l0(self, which: str = "best") -> np.ndarray:
        """Non-zero cells of the first or best δ per sample (0 where not found). Shape: (N,) int64."""
        counts: np.ndarray = np.count_nonzero(self._deltas(which), axis=(1, 2)).astype(np.int64)
        return counts

    def l1(self, which: str = "best") -> np.ndarray:
        """Σ|δ| of the first or best δ per sample (0 where not found). Shape: (N,) float64."""
        sums: np.ndarray = np.abs(self._deltas(which), dtype=np.float64).sum(axis=(1, 2))
        return sums

    def _deltas(self, which: str) -> np.ndarray:
        if which not in ("first", "best"):
            raise ValidationError(f"which must be 'first' or 'best', got {which!r}")
        deltas: np.ndarray = self.first_delta if which == "first" else self.best_delta
        return deltas

    def not_completed_reason(self, row: int) -> str:
        """Why row ``row`` has no success."""
        if not self.attacked[row]:
            return MISCLASSIFIED
        return f"no success within {self.iterations} iterations"

    def result(self, row: int) -> AttackResult:
        """The domain value of one row."""
        before = self.logits_before[row]
        first: AttackOutcome
        best: AttackOutcome
        if self.found[row]:
            first = AttackSucceeded(
                int(self.first_iteration[row]), Perturbation(self.first_delta[row]), before, self.first_logits[row]
            )
            best = AttackSucceeded(
                int(self.best_iteration[row]), Perturbation(self.best_delta[row]), before, self.best_logits[row]
            )
        else:
            first = best = AttackNotCompleted(self.not_completed_reason(row), before)
        return AttackResult(
            int(self.sample_index[row]), int(self.label[row]), int(np.argmax(before)), first=first, best=best
        )

    def results(self) -> list[AttackResult]:
        """Every row as an :class:`AttackResult`."""
        return [self.result(row) for row in range(self.n)]

    def to_npz(self, path: Path) -> None:
        """Write every column to a compressed ``.npz`` (deltas are sparse and compress well)."""
        arrays = {name: getattr(self, name) for name in _ARRAY_NAMES}
        np.savez_compressed(path, iterations=np.int64(self.iterations), **arrays)

    @classmethod
    def from_npz(cls, path: Path) -> AttackBatchResult:
        """Read what :meth:`to_npz` wrote; missing or extra columns are a :class:`DataError`."""
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            expected = {"iterations", *_ARRAY_NAMES}
            if keys != expected:
                raise DataError(
                    f"{path} is not an attack result file: missing {sorted(expected - keys)}, "
                    f"unexpected {sorted(keys - expected)}"
                )
            arrays = {name: data[name] for name in _ARRAY_NAMES}
            return cls(int(data["iterations"]), **arrays)

    @classmethod
    def concatenate(cls, parts: Sequence[AttackBatchResult]) -> AttackBatchResult:
        """Rows of ``parts`` in order (e.g. batches or shards). All parts must share the iteration budget."""
        if not parts:
            raise ValidationError("AttackBatchResult.concatenate needs at least one part")
        budgets = {p.iterations for p in parts}
        if len(budgets) != 1:
            raise ValidationError(f"AttackBatchResult parts must share one iteration budget, got {sorted(budgets)}")
        arrays = {name: np.concatenate([getattr(p, name) for p in parts]) for name in _ARRAY_NAMES}
        return cls(parts[0].iterations, **arrays)


_ARRAY_NAMES = tuple(f.name for f in attrs.fields(AttackBatchResult) if f.name != "iterations")
