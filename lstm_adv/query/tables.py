"""Reading a query run: its admissions and measurement tables, validated, as arrays.

The query stage (:mod:`lstm_adv.query.run`) writes ``admissions.parquet`` and one long-format table per
measurement source (``vitals``, ``labs``, ``bloodgas``: hadm_id, charttime, feature, value);
:class:`QueryTables` reads them back for preprocessing, checking columns, types and values, one table
at a time so that the peak memory stays near one table's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lstm_adv.domain.errors import DataError
from lstm_adv.domain.features import FeatureSpec
from lstm_adv.results.artifacts import MEASUREMENT_TABLES
from lstm_adv.results.store import Run

ADMISSION_COLUMNS = {
    "subject_id": "int",
    "hadm_id": "int",
    "window_start": "datetime",
    "first_icustay_id": "int",
    "label": "int",
}
MEASUREMENT_COLUMNS = {"hadm_id": "int", "charttime": "datetime", "feature": "str", "value": "float"}
_KIND_NAMES = {"int": "integers", "datetime": "timestamps", "str": "feature names", "float": "numbers"}

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@attrs.frozen(eq=False)
class Measurements:
    """Long-format measurements as arrays. Shape of each: (M,)."""

    hadm_id: I64
    time_ns: I64
    feature: npt.NDArray[np.int8]
    value: F64


@attrs.frozen(eq=False)
class QueryTables:
    """A query run's admissions and measurements, validated. Admissions are sorted by ``hadm_id``."""

    admissions: pd.DataFrame
    measurements: Measurements
    rows_per_table: dict[str, int]
    origin: str

    @classmethod
    def from_frames(
        cls, admissions: pd.DataFrame, tables: Mapping[str, pd.DataFrame], spec: FeatureSpec, *, origin: str
    ) -> QueryTables:
        """Validate DataFrames in the query-run format (see ``lstm_adv.query``) and combine the measurements."""
        admissions = _checked_admissions(admissions, origin)
        parts = {}
        for name in MEASUREMENT_TABLES:
            if name not in tables:
                raise DataError(f"{origin} has no table {name!r}; re-run `lstm-adv query`")
            parts[name] = _measurement_arrays(tables[name], spec, origin=origin, table=name)
        return cls._combine(admissions, parts, origin)

    @classmethod
    def from_run(cls, run: Run, spec: FeatureSpec) -> QueryTables:
        """Read and validate the parquet files of a query run."""
        origin = f"query run {run.id}"
        admissions = _read_parquet(run, "admissions", ADMISSION_COLUMNS, origin=origin, dictionary=False)
        admissions = _checked_admissions(admissions, origin)
        # one table at a time: each DataFrame is dropped as soon as it is converted to arrays (peak memory)
        parts = {
            name: _measurement_arrays(
                _read_parquet(run, name, MEASUREMENT_COLUMNS, origin=origin, dictionary=True),
                spec,
                origin=origin,
                table=name,
            )
            for name in MEASUREMENT_TABLES
        }
        tables = cls._combine(admissions, parts, origin)
        pa.default_memory_pool().release_unused()  # Arrow's allocator may keep the freed read buffers
        return tables

    @classmethod
    def _combine(cls, admissions: pd.DataFrame, parts: Mapping[str, Measurements], origin: str) -> QueryTables:
        measurements = Measurements(
            *(np.concatenate([getattr(p, f.name) for p in parts.values()]) for f in attrs.fields(Measurements))
        )
        return cls(
            admissions=admissions.sort_values("hadm_id", kind="stable").reset_index(drop=True),
            measurements=measurements,
            rows_per_table={name: int(part.value.size) for name, part in parts.items()},
            origin=origin,
        )


def _checked_admissions(admissions: pd.DataFrame, origin: str) -> pd.DataFrame:
    """``admissions`` after checking its columns, that it is not empty, its ids unique and labels 0/1."""
    _check_columns(admissions, ADMISSION_COLUMNS, origin=origin, table="admissions")
    if len(admissions) == 0:
        raise DataError(
            f"{origin}: the cohort is empty (admissions.parquet has no rows); nothing to preprocess — "
            "check the query's inclusion rules and source data"
        )
    if admissions["hadm_id"].duplicated().any():
        raise DataError(f"{origin}: admissions.parquet has repeated hadm_id values; expected one row per admission")
    if not admissions["label"].isin((0, 1)).all():
        raise DataError(f"{origin}: admissions.parquet column 'label' must be 0 or 1")
    return admissions


def _measurement_arrays(frame: pd.DataFrame, spec: FeatureSpec, *, origin: str, table: str) -> Measurements:
    """The checked columns of one measurement table as arrays."""
    _check_columns(frame, MEASUREMENT_COLUMNS, origin=origin, table=table)
    return _to_arrays(frame, spec, origin=origin, table=table)


def _read_parquet(run: Run, table: str, columns: Mapping[str, str], *, origin: str, dictionary: bool) -> pd.DataFrame:
    path = run.file(f"{table}.parquet")
    try:
        present = set(pq.read_schema(path).names)
        missing = [c for c in columns if c not in present]
        if missing:
            raise DataError(_missing_column(origin, table, missing[0], columns))
        read_dictionary = ["feature"] if dictionary else None
        arrow = pq.read_table(path, columns=list(columns), read_dictionary=read_dictionary)
        frame: pd.DataFrame = arrow.to_pandas(self_destruct=True)  # frees Arrow buffers as they are converted
        del arrow
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{origin}: {table}.parquet cannot be read: {exc}") from None
    return frame


def _missing_column(origin: str, table: str, column: str, columns: Mapping[str, str]) -> str:
    return f"{origin}: {table}.parquet has no column {column!r}; expected columns: {', '.join(columns)}"


def _check_columns(frame: pd.DataFrame, columns: Mapping[str, str], *, origin: str, table: str) -> None:
    for column, kind in columns.items():
        if column not in frame.columns:
            raise DataError(_missing_column(origin, table, column, columns))
        series = frame[column]
        if not _has_kind(series, kind):
            raise DataError(
                f"{origin}: {table}.parquet column {column!r} must hold {_KIND_NAMES[kind]}, got dtype {series.dtype}"
            )
        missing = int(series.isna().sum())
        if missing:
            raise DataError(f"{origin}: {table}.parquet column {column!r} has {missing} missing value(s)")
    if "value" in columns:
        bad = int((~np.isfinite(frame["value"].to_numpy(dtype=np.float64))).sum())
        if bad:
            raise DataError(f"{origin}: {table}.parquet column 'value' has {bad} infinite value(s)")


def _has_kind(series: pd.Series[Any], kind: str) -> bool:
    dtype = series.dtype
    if kind == "int":
        return pd.api.types.is_integer_dtype(dtype)
    if kind == "float":
        return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if kind == "datetime":
        return pd.api.types.is_datetime64_any_dtype(dtype)
    return isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype)


def _to_arrays(frame: pd.DataFrame, spec: FeatureSpec, *, origin: str, table: str) -> Measurements:
    return Measurements(
        hadm_id=frame["hadm_id"].to_numpy(dtype=np.int64),
        time_ns=nanoseconds(frame["charttime"]),
        feature=_feature_codes(frame["feature"], spec, origin=origin, table=table),
        value=frame["value"].to_numpy(dtype=np.float64),
    )


def _feature_codes(series: pd.Series[Any], spec: FeatureSpec, *, origin: str, table: str) -> npt.NDArray[np.int8]:
    names = list(spec.names)
    if isinstance(series.dtype, pd.CategoricalDtype):
        categorical = series.cat.set_categories(names)
    else:
        categorical = pd.Series(pd.Categorical(series, categories=names), index=series.index)
    codes = np.asarray(categorical.cat.codes, dtype=np.int8)
    if (codes < 0).any():
        unknown = sorted({str(v) for v in series[codes < 0].unique()})
        raise DataError(
            f"{origin}: {table}.parquet has unknown feature name(s) {', '.join(unknown[:5])}; known: {', '.join(names)}"
        )
    return codes


def nanoseconds(series: pd.Series[Any]) -> I64:
    """Timestamps as int64 nanoseconds (time zone dropped). Shape: (M,)."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        series = series.dt.tz_convert(None)
    return series.to_numpy(dtype="datetime64[ns]").view(np.int64)
