"""The model input: hourly, filled and scaled measurements of every kept admission, with its split.

A :class:`FeatureMatrix` holds ``values`` of shape (N, 48, 19) in [0, 1], the labels, the ids of each
sample, the train / validation / test split and the cross-validation fold of each sample, and the
:class:`ScalingStats` that map scaled values back to clinical units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from lstm_adv.domain.errors import ConfigError, DataError, ValidationError
from lstm_adv.domain.record import PREWINDOW, RECORD_ROWS, record_present
from lstm_adv.domain.shapes import N_FEATURES, SPLIT_ALIASES
from lstm_adv.domain.shapes import N_HOURS as WINDOW_HOURS

SPLITS = ("train", "validation", "test")
#: Other names accepted for a split (``val`` = ``validation``); ``all`` selects every sample.
SELECTIONS = (*SPLITS, "all")


def split_name(name: str) -> str:
    """The canonical name of a split or selection (``val`` → ``validation``); unknown names are errors."""
    canonical = SPLIT_ALIASES.get(name, name)
    if canonical not in SELECTIONS:
        raise ConfigError(f"unknown split {name!r}; choose one of train, validation (or val), test, all")
    return canonical


TEST_FOLD = -1

_array_eq = attrs.cmp_using(eq=np.array_equal)
_nan_array_eq = attrs.cmp_using(
    eq=lambda a, b: a is b or (a is not None and b is not None and np.array_equal(a, b, equal_nan=True))
)


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def _check_names(instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    owner = type(instance).__name__
    if len(value) != N_FEATURES:
        raise ValidationError(f"{owner}.{attribute.name} must name {N_FEATURES} features, got {len(value)}")
    if len(set(value)) != len(value):
        raise ValidationError(f"{owner}.{attribute.name} must be unique, got {', '.join(value)}")


def _check_stat(instance: ScalingStats, attribute: attrs.Attribute[Any], value: npt.NDArray[np.float64]) -> None:
    if value.shape != (N_FEATURES,):
        raise ValidationError(f"ScalingStats.{attribute.name} must have shape ({N_FEATURES},), got {value.shape}")
    if not np.isfinite(value).all():
        raise ValidationError(f"ScalingStats.{attribute.name} must be finite, got {value.tolist()}")


def _float64(value: Any) -> npt.NDArray[np.float64]:
    return np.asarray(value, dtype=np.float64)


@attrs.frozen
class ScalingStats:
    """Training-split statistics per feature, in clinical units. Shape of each array: (19,).

    ``p5`` and ``p95`` bound the winsorization and define the scale; ``median`` fills series never
    measured in (or before) the window.
    """

    feature_names: tuple[str, ...] = attrs.field(converter=_names, validator=_check_names)
    p5: npt.NDArray[np.float64] = attrs.field(converter=_float64, validator=_check_stat, eq=_array_eq)
    p95: npt.NDArray[np.float64] = attrs.field(converter=_float64, validator=_check_stat, eq=_array_eq)
    median: npt.NDArray[np.float64] = attrs.field(converter=_float64, validator=_check_stat, eq=_array_eq)

    def __attrs_post_init__(self) -> None:
        bad = np.flatnonzero(self.p95 < self.p5)
        if bad.size:
            name = self.feature_names[int(bad[0])]
            raise ValidationError(f"ScalingStats.p95 must be >= p5, got p5 > p95 for feature {name!r}")

    @property
    def span(self) -> npt.NDArray[np.float64]:
        """``p95 - p5`` per feature: one scaled unit in clinical units. Shape: (19,)."""
        return self.p95 - self.p5

    def to_clinical(self, delta: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """A change in scaled units as a change in clinical units: ``delta * (p95 - p5)``. Shape: (..., 19)."""
        return np.asarray(delta, dtype=np.float64) * self.span

    def scale(self, clinical: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Winsorize at p5/p95 and map to [0, 1]; a constant feature (p95 == p5) maps to 0. Shape: (..., 19)."""
        span = np.where(self.span > 0, self.span, 1.0)
        clipped = np.clip(np.asarray(clinical, dtype=np.float64), self.p5, self.p95)
        result: npt.NDArray[np.float64] = np.clip((clipped - self.p5) / span, 0.0, 1.0)
        return result

    def scale_unwinsorized(self, clinical: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``(x - p5) / (p95 - p5)`` without winsorizing (a value outside p5–p95 stays outside [0, 1]); 0 for a
        constant feature, as :meth:`scale` gives. The units of a record (:mod:`lstm_adv.domain.record`).
        Shape: (..., 19)."""
        positive = self.span > 0
        shifted = np.asarray(clinical, dtype=np.float64) - self.p5
        # shifted * 0 keeps NaN (not measured) as NaN for a constant feature
        result: npt.NDArray[np.float64] = np.where(
            positive, shifted / np.where(positive, self.span, 1.0), shifted * 0.0
        )
        return result

    @property
    def scaled_median(self) -> npt.NDArray[np.float64]:
        """The training median in scaled units (in [0, 1]): what a never-measured series is filled with.

        Shape: (19,)."""
        return self.scale_unwinsorized(self.median)


def _check_values(instance: FeatureMatrix, attribute: attrs.Attribute[Any], value: npt.NDArray[Any]) -> None:
    if value.ndim != 3 or value.shape[1:] != (WINDOW_HOURS, N_FEATURES):
        raise ValidationError(
            f"FeatureMatrix.values must have shape (N, {WINDOW_HOURS}, {N_FEATURES}), got {value.shape}"
        )
    if value.dtype != np.float32:
        raise ValidationError(f"FeatureMatrix.values must be float32, got {value.dtype}")
    if not np.isfinite(value).all():
        raise ValidationError("FeatureMatrix.values must be finite, got NaN or infinite entries")
    if value.size and (value.min() < 0.0 or value.max() > 1.0):
        raise ValidationError(f"FeatureMatrix.values must lie in [0, 1], got range [{value.min()}, {value.max()}]")


def _check_vector(dtype: type[np.generic]) -> Any:
    def check(instance: FeatureMatrix, attribute: attrs.Attribute[Any], value: npt.NDArray[Any]) -> None:
        if value.ndim != 1:
            raise ValidationError(f"FeatureMatrix.{attribute.name} must have shape (N,), got {value.shape}")
        if value.dtype != dtype:
            raise ValidationError(f"FeatureMatrix.{attribute.name} must be {np.dtype(dtype)}, got {value.dtype}")

    return check


def _as_int(value: Any, dtype: type[np.generic]) -> npt.NDArray[Any]:
    array = np.asarray(value)
    if array.dtype.kind in "iub":
        return array.astype(dtype, copy=False)
    return array  # left as is: the validator reports the wrong dtype


def _int64(value: Any) -> npt.NDArray[Any]:
    return _as_int(value, np.int64)


def _int8(value: Any) -> npt.NDArray[Any]:
    return _as_int(value, np.int8)


@attrs.frozen
class FeatureMatrix:
    """Scaled hourly inputs with labels, ids, splits and folds. Shape: values (N, 48, 19), the rest (N,).

    ``observed`` (N, 48, 19) marks the cells whose hour bin held at least one real measurement (before
    any filling); ``None`` only for a matrix stored before masks were recorded.

    ``record`` (N, 49, 19) float32 is what ``values`` were filled from (:mod:`lstm_adv.domain.record`): the
    pre-window bin and the 48 hourly bin means, scaled but not winsorized, NaN where nothing was measured;
    ``values`` equal :func:`~lstm_adv.domain.record.fill_record` of it. ``None`` only for a matrix stored
    before records were kept.

    ``split`` codes index :data:`SPLITS` (0 train, 1 validation, 2 test); ``fold`` is the
    cross-validation fold in [0, K) of train and validation samples and -1 for test samples.
    """

    values: npt.NDArray[np.float32] = attrs.field(validator=_check_values, eq=_array_eq)
    labels: npt.NDArray[np.int64] = attrs.field(converter=_int64, validator=_check_vector(np.int64), eq=_array_eq)
    subject_ids: npt.NDArray[np.int64] = attrs.field(converter=_int64, validator=_check_vector(np.int64), eq=_array_eq)
    hadm_ids: npt.NDArray[np.int64] = attrs.field(converter=_int64, validator=_check_vector(np.int64), eq=_array_eq)
    icustay_ids: npt.NDArray[np.int64] = attrs.field(converter=_int64, validator=_check_vector(np.int64), eq=_array_eq)
    feature_names: tuple[str, ...] = attrs.field(converter=_names, validator=_check_names)
    split: npt.NDArray[np.int8] = attrs.field(converter=_int8, validator=_check_vector(np.int8), eq=_array_eq)
    fold: npt.NDArray[np.int8] = attrs.field(converter=_int8, validator=_check_vector(np.int8), eq=_array_eq)
    scaling: ScalingStats = attrs.field(validator=attrs.validators.instance_of(ScalingStats))
    observed: npt.NDArray[np.bool_] | None = attrs.field(default=None, eq=_array_eq)
    record: npt.NDArray[np.float32] | None = attrs.field(default=None, eq=_nan_array_eq)

    def __attrs_post_init__(self) -> None:
        n = self.values.shape[0]
        for name in ("labels", "subject_ids", "hadm_ids", "icustay_ids", "split", "fold"):
            length = getattr(self, name).shape[0]
            if length != n:
                raise ValidationError(f"FeatureMatrix.{name} must have length N={n} (rows of values), got {length}")
        self._check_codes()
        if self.scaling.feature_names != self.feature_names:
            raise ValidationError("FeatureMatrix.scaling.feature_names must equal FeatureMatrix.feature_names")
        if np.unique(self.hadm_ids).size != n:
            raise ValidationError("FeatureMatrix.hadm_ids must be unique: one sample per admission")
        if self.observed is not None and (self.observed.shape != self.values.shape or self.observed.dtype != np.bool_):
            raise ValidationError(
                f"FeatureMatrix.observed must be a bool array of the values' shape {self.values.shape}, got "
                f"{self.observed.dtype} {self.observed.shape}"
            )
        self._check_record()

    def _check_record(self) -> None:
        if self.record is None:
            return
        want = (self.values.shape[0], RECORD_ROWS, N_FEATURES)
        if self.record.shape != want or self.record.dtype != np.float32:
            raise ValidationError(
                f"FeatureMatrix.record must be a float32 array of shape {want}, got {self.record.dtype} "
                f"{self.record.shape}"
            )
        if np.isinf(self.record).any():
            raise ValidationError("FeatureMatrix.record must hold finite values or NaN (not measured), got infinity")
        if self.observed is not None and not np.array_equal(
            record_present(self.record)[:, PREWINDOW + 1 :], self.observed
        ):
            raise ValidationError("FeatureMatrix.record must be measured exactly where FeatureMatrix.observed is true")

    def _check_codes(self) -> None:
        if not np.isin(self.labels, (0, 1)).all():
            raise ValidationError(f"FeatureMatrix.labels must be 0 or 1, got {sorted(set(self.labels.tolist()))}")
        if not np.isin(self.split, (0, 1, 2)).all():
            codes = sorted(set(self.split.tolist()))
            raise ValidationError(f"FeatureMatrix.split codes must be 0, 1 or 2, got {codes}")
        is_test = self.split == 2
        if (self.fold[is_test] != TEST_FOLD).any() or (self.fold[~is_test] < 0).any():
            raise ValidationError("FeatureMatrix.fold must be -1 exactly for test samples and >= 0 otherwise")
        present = np.unique(self.fold[~is_test])
        if not np.array_equal(present, np.arange(present.size)):
            raise ValidationError(f"FeatureMatrix.fold must use every fold 0..K-1, got {present.tolist()}")
        subjects = [np.unique(self.subject_ids[self.split == code]) for code in range(3)]
        for a, b in ((0, 1), (0, 2), (1, 2)):
            shared = np.intersect1d(subjects[a], subjects[b])
            if shared.size:
                raise ValidationError(
                    f"FeatureMatrix: subject {int(shared[0])} is in both {SPLITS[a]} and {SPLITS[b]}; "
                    "splits must be disjoint by subject"
                )

    @property
    def n_samples(self) -> int:
        """N, the number of samples."""
        return int(self.values.shape[0])

    @property
    def n_folds(self) -> int:
        """K, the number of cross-validation folds over train and validation."""
        folds = self.fold[self.fold >= 0]
        return int(folds.max()) + 1 if folds.size else 0

    def split_mask(self, name: str) -> npt.NDArray[np.bool_]:
        """Which samples belong to split ``name`` (train, validation or val, test, or all). Shape: (N,)."""
        canonical = split_name(name)
        if canonical == "all":
            return np.ones(self.n_samples, dtype=bool)
        mask: npt.NDArray[np.bool_] = self.split == SPLITS.index(canonical)
        return mask

    def indices(self, name: str) -> npt.NDArray[np.int64]:
        """Row indices of split ``name`` (or ``all``), ascending. Shape: (n,)."""
        return np.flatnonzero(self.split_mask(name)).astype(np.int64)

    def subset(self, indices: npt.ArrayLike) -> FeatureMatrix:
        """The samples at ``indices`` (same scaling; folds kept as they are)."""
        idx = np.asarray(indices, dtype=np.int64)
        fold = self.fold[idx]
        kept = np.unique(fold[fold >= 0])
        # renumber folds so the subset still uses 0..K'-1 without gaps
        fold = np.where(fold >= 0, np.searchsorted(kept, fold), TEST_FOLD).astype(np.int8)
        return attrs.evolve(
            self,
            values=self.values[idx],
            labels=self.labels[idx],
            subject_ids=self.subject_ids[idx],
            hadm_ids=self.hadm_ids[idx],
            icustay_ids=self.icustay_ids[idx],
            split=self.split[idx],
            fold=fold,
            observed=None if self.observed is None else self.observed[idx],
            record=None if self.record is None else self.record[idx],
        )

    def to_npz(self, path: Path) -> None:
        """Write the stored form (an uncompressed ``.npz`` without pickled objects)."""
        extra: dict[str, Any] = {} if self.observed is None else {"observed": np.packbits(self.observed, axis=None)}
        if self.record is not None:
            extra["record"] = self.record
        with Path(path).open("wb") as handle:
            np.savez(
                handle,
                **extra,
                values=self.values,
                labels=self.labels,
                subject_ids=self.subject_ids,
                hadm_ids=self.hadm_ids,
                icustay_ids=self.icustay_ids,
                feature_names=np.array(self.feature_names, dtype=str),
                split=self.split,
                fold=self.fold,
                scaling_p5=self.scaling.p5,
                scaling_p95=self.scaling.p95,
                scaling_median=self.scaling.median,
            )

    @classmethod
    def from_npz(cls, path: Path) -> FeatureMatrix:
        """Read the stored form written by :meth:`to_npz`; a damaged file is a :class:`DataError`."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"feature matrix file {path} cannot be read: {exc}") from None
        missing = sorted(set(_NPZ_KEYS) - set(arrays))
        if missing:
            raise DataError(f"feature matrix file {path} lacks array(s) {', '.join(missing)}; rebuild it")
        names = tuple(arrays["feature_names"].tolist())
        scaling = ScalingStats(
            feature_names=names, p5=arrays["scaling_p5"], p95=arrays["scaling_p95"], median=arrays["scaling_median"]
        )
        return cls(
            values=arrays["values"],
            labels=arrays["labels"],
            subject_ids=arrays["subject_ids"],
            hadm_ids=arrays["hadm_ids"],
            icustay_ids=arrays["icustay_ids"],
            feature_names=names,
            split=arrays["split"],
            fold=arrays["fold"],
            scaling=scaling,
            observed=_unpacked(arrays.get("observed"), arrays["values"].shape, path),
            record=arrays.get("record"),
        )

    def observation_mask(self) -> npt.NDArray[np.bool_]:
        """The observation mask, or a :class:`DataError` saying how to get one (features run before it existed).

        Shape: (N, 48, 19), true where the hour bin held at least one real measurement.
        """
        if self.observed is None:
            raise DataError(
                "this feature matrix has no observation mask (it was built before the toolkit recorded one); "
                "re-run `lstm-adv preprocess` to use --cells observed"
            )
        return self.observed

    def record_values(self) -> npt.NDArray[np.float32]:
        """The record the values were filled from, or a :class:`DataError` saying how to get one.

        Shape: (N, 49, 19) float32, NaN where nothing was measured (see :mod:`lstm_adv.domain.record`).
        """
        if self.record is None:
            raise DataError(
                "this feature matrix has no record (it was built before the toolkit kept the hourly measurements "
                "the fill was computed from); re-run `lstm-adv preprocess` to use --cells record"
            )
        return self.record

    def measured_fraction(self) -> npt.NDArray[np.float64]:
        """Per feature, the share of (sample, hour) cells that held a measurement. Shape: (19,)."""
        fraction: npt.NDArray[np.float64] = self.observation_mask().mean(axis=(0, 1), dtype=np.float64)
        return fraction


def _unpacked(packed: npt.NDArray[Any] | None, shape: tuple[int, ...], path: Path) -> npt.NDArray[np.bool_] | None:
    """The stored (bit-packed) observation mask, or None for a file written before masks were stored."""
    if packed is None:
        return None
    size = int(np.prod(shape))
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != (size + 7) // 8:
        raise DataError(f"feature matrix file {path}: the observation mask does not fit the values; rebuild it")
    return np.unpackbits(packed, count=size).astype(bool).reshape(shape)


_NPZ_KEYS = (
    "values",
    "labels",
    "subject_ids",
    "hadm_ids",
    "icustay_ids",
    "feature_names",
    "split",
    "fold",
    "scaling_p5",
    "scaling_p95",
    "scaling_median",
)
