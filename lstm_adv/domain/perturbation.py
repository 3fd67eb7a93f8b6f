"""Attack outcomes: the perturbation of one sample and what an attack found for it.

``Perturbation`` is δ for one sample in normalized units (the model sees ``x + δ`` with both in
``[0, 1]``) and, for the record threat, the change of the sample's record that made it (altered
measurements, :mod:`lstm_adv.domain.record`); its L0 counts the attack's unit (altered measurements
for the record threat, changed cells otherwise). ``AttackResult`` holds, per sample, the first, the
best (smallest L1) and the sparse (minimal-support) success, or a not-completed value with its
reason. ``AttackBatchResult`` is the columnar form of many results, the one that is stored
(``to_npz`` / ``from_npz``) and merged across shards (``concatenate``). Predictions and flips are
decisions at the model's rule (its threshold t).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import DataError, ValidationError
from lstm_adv.domain.record import RECORD_SHAPE
from lstm_adv.domain.shapes import CELL_SHAPE, N_CLASSES, N_FEATURES

MISCLASSIFIED = "misclassified"
NO_CELL = "no cell it may change (no measured cell in the allowed features and hours)"
#: Why a sample was not attacked, by code (0: it was attacked).
SKIP_REASONS = {1: MISCLASSIFIED, 2: NO_CELL}
#: Which successful example: the first success, the best (smallest L1) one, and the sparse one (the
#: smallest set of the best example's cells that still flips the decision).
EXAMPLES = ("first", "best", "sparse")
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


def _check_record_delta(instance: Perturbation, attribute: attrs.Attribute[Any], value: np.ndarray | None) -> None:
    if value is not None:
        _check_array("Perturbation", "record_delta", value, RECORD_SHAPE, np.float32)


def _optional_copy(value: Any) -> np.ndarray | None:
    return None if value is None else _readonly_copy(value)


@attrs.frozen
class Perturbation:
    """δ for one sample in normalized units. Shape: (48, 19) float32, |δ| ≤ 1; ``record_delta`` (49, 19)
    float32: the record change that made δ (record threat only; the pre-window bin, then hours 0 … 47)."""

    delta: np.ndarray = attrs.field(converter=_readonly_copy, validator=_check_delta, eq=_ARRAY_EQ)
    record_delta: np.ndarray | None = attrs.field(
        default=None, converter=_optional_copy, validator=_check_record_delta, eq=_ARRAY_EQ
    )

    @property
    def l0(self) -> int:
        """Size in the attack's unit: altered measurements (record threat), else changed cells."""
        return int(np.count_nonzero(self.delta if self.record_delta is None else self.record_delta))

    @property
    def input_l0(self) -> int:
        """Number of changed cells of the model input."""
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
    """A successful iterate: the decision at ``x + δ`` (threshold ``threshold``) differs from the one at ``x``."""

    iteration: int = attrs.field(validator=_check_iteration)
    perturbation: Perturbation
    logits_before: np.ndarray = attrs.field(
        converter=_readonly_copy, validator=_check_logits("AttackSucceeded"), eq=_ARRAY_EQ
    )
    logits_after: np.ndarray = attrs.field(
        converter=_readonly_copy, validator=_check_logits("AttackSucceeded"), eq=_ARRAY_EQ
    )
    threshold: float = 0.5

    def __attrs_post_init__(self) -> None:
        rule = DecisionRule("argmax" if self.threshold == 0.5 else "threshold", self.threshold)
        before, after = int(rule.predict(self.logits_before)), int(rule.predict(self.logits_after))
        if before == after:
            raise ValidationError(
                "AttackSucceeded must flip the decision; logits_before and logits_after both decide class "
                f"{before} at threshold {self.threshold:g}"
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
    """Per sample: its index in the FeatureMatrix, true and predicted labels, first, best and sparse outcome."""

    sample_index: int
    label: int = attrs.field(validator=_check_binary)
    predicted: int = attrs.field(validator=_check_binary)
    first: AttackOutcome
    best: AttackOutcome
    sparse: AttackOutcome

    def __attrs_post_init__(self) -> None:
        if self.sample_index < 0:
            raise ValidationError(f"AttackResult.sample_index must be ≥ 0, got {self.sample_index}")
        kinds = {isinstance(o, AttackSucceeded) for o in (self.first, self.best, self.sparse)}
        if len(kinds) != 1:
            raise ValidationError("AttackResult.first, .best and .sparse must all be successes or all not completed")
        first, best, sparse = self.first, self.best, self.sparse
        if isinstance(first, AttackSucceeded) and isinstance(best, AttackSucceeded):
            if best.iteration < first.iteration:
                raise ValidationError(
                    f"AttackResult.best.iteration ({best.iteration}) must not precede first.iteration "
                    f"({first.iteration})"
                )
            first_l1, best_l1 = first.perturbation.l1, best.perturbation.l1
            if best_l1 > first_l1 * (1 + 1e-5) + 1e-6:  # float32 sums on the device vs float64 here
                raise ValidationError(f"AttackResult.best.l1 ({best_l1}) must not exceed first.l1 ({first_l1})")
            if isinstance(sparse, AttackSucceeded) and sparse.perturbation.l0 > best.perturbation.l0:
                raise ValidationError(
                    f"AttackResult.sparse.l0 ({sparse.perturbation.l0}) must not exceed best.l0 "
                    f"({best.perturbation.l0})"
                )

    @property
    def succeeded(self) -> bool:
        """Whether any iterate flipped the decision."""
        return self.first.succeeded


_COLUMNS: dict[str, tuple[tuple[str, ...], type]] = {
    "sample_index": (("n",), np.int64),
    "label": (("n",), np.int64),
    "logits_before": (("n", "c"), np.float32),
    "predicted": (("n",), np.int64),
    "skip": (("n",), np.int8),
    "found": (("n",), np.bool_),
    "first_iteration": (("n",), np.int64),
    "first_delta": (("n", "h", "f"), np.float32),
    "first_logits": (("n", "c"), np.float32),
    "best_iteration": (("n",), np.int64),
    "best_delta": (("n", "h", "f"), np.float32),
    "best_logits": (("n", "c"), np.float32),
    "sparse_delta": (("n", "h", "f"), np.float32),
    "sparse_logits": (("n", "c"), np.float32),
}


#: The record threat's columns: first, best and sparse record change. Shape: (N, 49, 19) float32.
RECORD_COLUMNS = tuple(f"{which}_record_delta" for which in EXAMPLES)


def _check_batch(result: AttackBatchResult) -> None:
    n = result.sample_index.shape[0] if result.sample_index.ndim == 1 else -1
    sizes = {"n": n, "c": N_CLASSES, "h": CELL_SHAPE[0], "f": CELL_SHAPE[1]}
    owner = "AttackBatchResult"
    for name, (dims, dtype) in _COLUMNS.items():
        _check_array(owner, name, getattr(result, name), tuple(sizes[d] for d in dims), dtype)
    if result.iterations < 1:
        raise ValidationError(f"{owner}.iterations must be ≥ 1, got {result.iterations}")
    if not 0.0 < result.threshold < 1.0:
        raise ValidationError(f"{owner}.threshold must lie strictly between 0 and 1, got {result.threshold}")
    if not np.isin(result.label, (0, 1)).all() or not np.isin(result.predicted, (0, 1)).all():
        raise ValidationError(f"{owner}.label and .predicted must be 0 or 1")
    if not np.isin(result.skip, (0, *SKIP_REASONS)).all():
        raise ValidationError(f"{owner}.skip must be 0 (attacked) or a reason code {sorted(SKIP_REASONS)}")
    if (result.found & ~result.attacked).any():
        raise ValidationError(f"{owner}.found must imply attacked; a skipped sample cannot succeed")
    _check_iterations(result)
    for name in ("first_delta", "best_delta", "sparse_delta"):
        if (np.abs(getattr(result, name)) > 1).any():
            raise ValidationError(f"{owner}.{name} must lie in [-1, 1]")
    records = [getattr(result, name) for name in RECORD_COLUMNS]
    if any(r is None for r in records) and any(r is not None for r in records):
        raise ValidationError(
            f"{owner}: {', '.join(RECORD_COLUMNS)} must be given together (record threat) or not at all"
        )
    for name, value in zip(RECORD_COLUMNS, records, strict=True):
        if value is not None:
            _check_array(owner, name, value, (n, *RECORD_SHAPE), np.float32)


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

    Shapes: index/label/predicted/skip/flags/iterations (N,); logits (N, 2) float32; deltas (N, 48, 19)
    float32. ``predicted`` is the decision at δ = 0 at the model's ``threshold``; ``skip`` is 0 for an
    attacked sample and a :data:`SKIP_REASONS` code otherwise. Rows with ``found == False`` carry zero
    deltas, zero logits after, and iteration 0. The sparse example is the smallest set of the best
    example's cells that still flips the decision (found at the best example's iteration).
    """

    iterations: int
    threshold: float
    sample_index: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    label: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    logits_before: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    predicted: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    skip: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    found: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    first_iteration: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    first_delta: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    first_logits: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    best_iteration: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    best_delta: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    best_logits: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    sparse_delta: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    sparse_logits: np.ndarray = attrs.field(converter=np.asarray, eq=_ARRAY_EQ)
    first_record_delta: np.ndarray | None = attrs.field(default=None, eq=_ARRAY_EQ)
    best_record_delta: np.ndarray | None = attrs.field(default=None, eq=_ARRAY_EQ)
    sparse_record_delta: np.ndarray | None = attrs.field(default=None, eq=_ARRAY_EQ)

    def __attrs_post_init__(self) -> None:
        _check_batch(self)

    @property
    def record_space(self) -> bool:
        """Whether the attack altered records (the record threat): then L0 counts altered measurements."""
        return self.first_record_delta is not None

    @property
    def unit(self) -> str:
        """What L0 counts: ``measurement`` (altered measurements, record threat) or ``cell``."""
        return "measurement" if self.record_space else "cell"

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.sample_index.shape[0])

    @property
    def attacked(self) -> np.ndarray:
        """Which samples were attacked (not skipped). Shape: (N,) bool."""
        attacked: np.ndarray = self.skip == 0
        return attacked

    @property
    def rule(self) -> DecisionRule:
        """The decision rule the attack used."""
        return DecisionRule("argmax" if self.threshold == 0.5 else "threshold", self.threshold)

    @property
    def success_rate(self) -> float:
        """Successes among attacked samples (0.0 when none was attacked)."""
        attacked = int(self.attacked.sum())
        return float(self.found.sum()) / attacked if attacked else 0.0

    def deltas(self, which: str = "best") -> np.ndarray:
        """The first, best or sparse δ per sample (zeros where not found). Shape: (N, 48, 19)."""
        if which not in EXAMPLES:
            raise ValidationError(f"which must be one of {', '.join(EXAMPLES)}, got {which!r}")
        deltas: np.ndarray = getattr(self, f"{which}_delta")
        return deltas

    def record_deltas(self, which: str = "best") -> np.ndarray:
        """The first, best or sparse record change per sample (record threat only). Shape: (N, 49, 19)."""
        self.deltas(which)  # checks ``which``
        deltas: np.ndarray | None = getattr(self, f"{which}_record_delta")
        if deltas is None:
            raise ValidationError("this attack changed model-input cells, not records: it has no record deltas")
        return deltas

    def variables(self, which: str = "best") -> np.ndarray:
        """What the attack changed: record deltas (record threat), else the input deltas. Shape: (N, 48 or 49, 19)."""
        return self.record_deltas(which) if self.record_space else self.deltas(which)

    def l0(self, which: str = "best") -> np.ndarray:
        """Size of the first, best or sparse example in the attack's unit (altered measurements for the record
        threat, changed cells otherwise; 0 where not found). Shape: (N,) int64."""
        counts: np.ndarray = np.count_nonzero(self.variables(which), axis=(1, 2)).astype(np.int64)
        return counts

    def input_l0(self, which: str = "best") -> np.ndarray:
        """Changed cells of the model input per sample (0 where not found). Shape: (N,) int64."""
        counts: np.ndarray = np.count_nonzero(self.deltas(which), axis=(1, 2)).astype(np.int64)
        return counts

    def l1(self, which: str = "best") -> np.ndarray:
        """Σ|δ| of the first, best or sparse example in the attack's variable (the record change for the
        record threat; 0 where not found). Shape: (N,) float64."""
        sums: np.ndarray = np.abs(self.variables(which), dtype=np.float64).sum(axis=(1, 2))
        return sums

    def not_completed_reason(self, row: int) -> str:
        """Why row ``row`` has no success."""
        code = int(self.skip[row])
        return SKIP_REASONS[code] if code else f"no success within {self.iterations} iterations"

    def result(self, row: int) -> AttackResult:
        """The domain value of one row."""
        before = self.logits_before[row]
        outcomes: list[AttackOutcome] = []
        if self.found[row]:
            for which, iteration in (
                ("first", self.first_iteration[row]),
                ("best", self.best_iteration[row]),
                ("sparse", self.best_iteration[row]),
            ):
                delta, logits = getattr(self, f"{which}_delta")[row], getattr(self, f"{which}_logits")[row]
                record = self.record_deltas(which)[row] if self.record_space else None
                perturbation = Perturbation(delta, record)
                outcomes.append(AttackSucceeded(int(iteration), perturbation, before, logits, self.threshold))
        else:
            outcomes = [AttackNotCompleted(self.not_completed_reason(row), before)] * 3
        first, best, sparse = outcomes
        return AttackResult(
            int(self.sample_index[row]),
            int(self.label[row]),
            int(self.predicted[row]),
            first=first,
            best=best,
            sparse=sparse,
        )

    def results(self) -> list[AttackResult]:
        """Every row as an :class:`AttackResult`."""
        return [self.result(row) for row in range(self.n)]

    def _arrays(self) -> dict[str, Any]:
        names = _ARRAY_NAMES + (RECORD_COLUMNS if self.record_space else ())
        return {name: getattr(self, name) for name in names}

    def to_npz(self, path: Path) -> None:
        """Write every column to a compressed ``.npz`` (deltas are sparse and compress well)."""
        np.savez_compressed(
            path, iterations=np.int64(self.iterations), threshold=np.float64(self.threshold), **self._arrays()
        )

    @classmethod
    def from_npz(cls, path: Path) -> AttackBatchResult:
        """Read what :meth:`to_npz` wrote; missing or extra columns are a :class:`DataError`."""
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            expected = {"iterations", "threshold", *_ARRAY_NAMES}
            if keys & set(RECORD_COLUMNS):
                expected |= set(RECORD_COLUMNS)
            if keys != expected:
                raise DataError(
                    f"{path} is not an attack result file of this version: missing {sorted(expected - keys)}, "
                    f"unexpected {sorted(keys - expected)}; re-run the attack"
                )
            arrays = {name: data[name] for name in sorted(expected - {"iterations", "threshold"})}
            return cls(int(data["iterations"]), float(data["threshold"]), **arrays)

    @classmethod
    def concatenate(cls, parts: Sequence[AttackBatchResult]) -> AttackBatchResult:
        """Rows of ``parts`` in order (e.g. batches or shards). All parts share the iteration budget and rule."""
        if not parts:
            raise ValidationError("AttackBatchResult.concatenate needs at least one part")
        budgets = {(p.iterations, p.threshold) for p in parts}
        if len(budgets) != 1:
            raise ValidationError(
                f"AttackBatchResult parts must share one iteration budget and threshold, got {sorted(budgets)}"
            )
        if len({p.unit for p in parts}) != 1:
            raise ValidationError("AttackBatchResult parts must share one threat (records or model-input cells)")
        names = parts[0]._arrays()
        arrays = {name: np.concatenate([getattr(p, name) for p in parts]) for name in names}
        return cls(parts[0].iterations, parts[0].threshold, **arrays)

    def take(self, rows: np.ndarray) -> AttackBatchResult:
        """The rows ``rows`` (e.g. sorted by sample index)."""
        arrays = {name: value[rows] for name, value in self._arrays().items()}
        return AttackBatchResult(self.iterations, self.threshold, **arrays)


_ARRAY_NAMES = tuple(_COLUMNS)
