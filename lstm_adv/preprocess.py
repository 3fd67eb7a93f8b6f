"""Preprocess stage: a query run's long-format measurements become a :class:`FeatureMatrix` run.

Steps, all vectorized over measurement rows (no Python loop over admissions or rows):

1. **Hourly bins.** Hour ``k`` of an admission holds the mean of its measurements in
   ``[window_start + k h, window_start + (k + 1) h)``, ``k = 0 … 47``; ``window_start`` comes from the
   query run (``cohort.window_start``: the admission's earliest ICU intime by default). Measurements at
   or after the window end are ignored, whatever the query exported. Bins ``-lookback_hours … -1``
   (before the window) are only used to fill the start.
2. **Window rule.** An admission is kept iff it has at least one measurement (of any feature) in an
   hour bin ``<= first_hour_max`` *and* at least one in an hour bin ``>= last_hour_min`` (defaults 3
   and 46: measured within the first 4 hours and within the last 2 hours of the 48 h window).
   The rules are applied in order and each one's drops are counted: no measurement in the window;
   first measurement after ``first_hour_max``; last measurement before ``last_hour_min``. With
   ``drop_unmeasured_vitals``, samples none of whose vital signs was measured in the window or its
   look-back are dropped next (another counted step); by default they are kept and counted.
3. **Splits.** Patients (``subject_id``) are split train / validation / test, stratified by the
   patient's label (the max over their samples), seeded; K folds over train + validation patients,
   also stratified (round robin over patients sorted by label and a seeded key).
4. **Statistics** come from the training split only, over the observed hourly bin means in the
   window (clinical units): per feature p5, median and p95.
5. **Record.** The last pre-window bin and the 48 in-window bins of each (sample, feature), scaled
   ``(x - p5) / (p95 - p5)`` (0 when p95 == p5) but not winsorized, NaN where nothing was measured:
   the sample's record (:mod:`lstm_adv.domain.record`), stored with the matrix so that an attack can
   alter measurements and recompute the model input exactly as here.
6. **Fill and winsorize** each (sample, feature) series of the record along time, never looking past
   the window: linear interpolation between observed bins; carry the last observed bin forward to the
   end; before the first observed bin use the last pre-window bin if there is one, else the first
   observed bin; a series with no observation in the window uses the last pre-window bin, else the
   training median; then clip to [0, 1] (winsorizing at p5/p95). The fill is affine in the values, so
   this equals filling in clinical units, winsorizing and scaling.
7. **Coverage.** The observation mask (cells whose hour held a measurement) is stored with the
   matrix; the summary gives per feature the measured share of cells and the samples whose series
   was never measured (window and look-back empty: all 48 hours are the training median).

Performance (``bench/bench_preprocess.py``): rows are never sorted as a whole. Each row gets an integer
cell code, ``np.bincount`` gives every bin's count and sum on a dense (N, lookback + 48, F) grid, and
only bins with three or more rows are re-summed in ascending value order (what makes a mean independent
of the input row order). Filling and scaling run over chunks of samples with flat-index gathers.
"""

from __future__ import annotations

import logging

import attrs
import numpy as np
import numpy.typing as npt

from lstm_adv.config import Config, PreprocessConfig
from lstm_adv.domain.errors import ConfigError, DataError, FeatureSpecError
from lstm_adv.domain.feature_matrix import SPLITS, FeatureMatrix, ScalingStats
from lstm_adv.domain.features import FeatureDefinitions, FeatureSpec
from lstm_adv.domain.record import fill_record
from lstm_adv.domain.shapes import N_HOURS as WINDOW_HOURS
from lstm_adv.query.run import window_start_rule
from lstm_adv.query.tables import QueryTables, nanoseconds
from lstm_adv.resources import read_feature_definitions
from lstm_adv.results import artifacts
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import FeatureCoverage, FeatureScaling, FeaturesSummary, QuerySummary, SplitCounts, Step

log = logging.getLogger(__name__)

HOUR_NS = 3_600_000_000_000
WINDOW_START_DEFAULT = window_start_rule("all")
# Query runs made before the window start was recorded started it among the included stays.
WINDOW_START_UNRECORDED = window_start_rule("included")
NO_VITALS_STEP = "dropped: no vital sign measured (window or look-back)"

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


# --- building -------------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class HourlyGrid:
    """Hourly bin means on a dense grid, NaN where a bin has no measurement.

    Shape: means (N, lookback + 48, F); hour ``k`` of the window is ``means[:, lookback + k]``.
    """

    means: F64
    lookback_hours: int

    @property
    def window(self) -> F64:
        """The in-window bins (a view). Shape: (N, 48, F)."""
        return self.means[:, self.lookback_hours :]

    def select(self, mask: npt.NDArray[np.bool_]) -> HourlyGrid:
        """The samples where ``mask`` holds."""
        return HourlyGrid(self.means[mask], self.lookback_hours)

    def unmeasured(self) -> npt.NDArray[np.bool_]:
        """Which (sample, feature) series hold no measurement in the window or its look-back. Shape: (N, F).

        Filling gives such a series the training median for all 48 hours.
        """
        return np.asarray(np.isnan(self.means).all(axis=1), dtype=bool)

    def last_before(self) -> F64:
        """The last non-empty bin before the window per (sample, feature), NaN where none. Shape: (N, F)."""
        pre = self.means[:, : self.lookback_hours]
        n, hours, f = pre.shape
        if hours == 0:
            return np.full((n, f), np.nan)
        seen = ~np.isnan(pre)
        last = hours - 1 - np.argmax(seen[:, ::-1], axis=1)  # (N, F); 0 where nothing is seen
        flat = (np.arange(n)[:, None] * hours + last) * f + np.arange(f)[None, :]
        return np.where(seen.any(axis=1), pre.reshape(-1)[flat], np.nan)


@attrs.frozen
class PreprocessReport:
    """Counts of each step, for the run's manifest."""

    flow: tuple[tuple[str, int], ...]
    measurements: tuple[tuple[str, int], ...]
    window_rule: str
    missingness: tuple[tuple[str, float], ...]
    unmeasured_samples: tuple[int, ...]
    samples_without_vitals: int

    def summary(self, matrix: FeatureMatrix, *, features: FeatureDefinitions | None = None) -> FeaturesSummary:
        """The summary of a features run (read by ``runs show`` and the data report)."""
        n, hours, features_count = matrix.values.shape
        measured = matrix.measured_fraction()
        return FeaturesSummary(
            flow=tuple(Step(step, count) for step, count in self.flow),
            measurements=tuple(Step(step, count) for step, count in self.measurements),
            window_rule=self.window_rule,
            shape=(n, hours, features_count),
            n_folds=matrix.n_folds,
            splits=_split_summary(matrix),
            missingness=dict(self.missingness),
            scaling={
                name: FeatureScaling(p5=float(p5), median=float(med), p95=float(p95))
                for name, p5, med, p95 in zip(
                    matrix.feature_names, matrix.scaling.p5, matrix.scaling.median, matrix.scaling.p95, strict=True
                )
            },
            coverage={
                name: FeatureCoverage(measured_fraction=float(share), unmeasured_samples=int(count))
                for name, share, count in zip(matrix.feature_names, measured, self.unmeasured_samples, strict=True)
            },
            samples_without_vitals=self.samples_without_vitals,
            features=features,
        )


def _split_summary(matrix: FeatureMatrix) -> dict[str, SplitCounts]:
    result = {}
    for name in SPLITS:
        mask = matrix.split_mask(name)
        result[name] = SplitCounts(
            samples=int(mask.sum()),
            positives=int(matrix.labels[mask].sum()),
            subjects=int(np.unique(matrix.subject_ids[mask]).size),
        )
    return result


def window_rule_text(config: PreprocessConfig, *, start: str = WINDOW_START_DEFAULT) -> str:
    """The window rule in words, as stored in the manifest; ``start`` says where the window starts."""
    rule = (
        f"keep an admission iff it has >= 1 measurement (any feature) in an hour bin <= {config.first_hour_max} "
        f"and >= 1 in an hour bin >= {config.last_hour_min} of the window [0, {WINDOW_HOURS}) h from {start}"
    )
    if config.drop_unmeasured_vitals:
        rule += ", and >= 1 vital-sign measurement in the window or its look-back"
    return rule


def build_feature_matrix(
    tables: QueryTables,
    spec: FeatureSpec,
    *,
    config: PreprocessConfig,
    window_hours: int = WINDOW_HOURS,
    lookback_hours: int = 24,
    window_start: str = WINDOW_START_DEFAULT,
) -> tuple[FeatureMatrix, PreprocessReport]:
    """Bin, filter, split, fill and scale the measurements of ``tables`` into a FeatureMatrix.

    Shape: values (N, 48, 19) with N the admissions passing the window rule, ordered by ``hadm_id``.
    ``window_start`` says in words where the query started each window (for the report).
    """
    if window_hours != WINDOW_HOURS:
        raise ConfigError(f"cohort.window_hours must be {WINDOW_HOURS} for a FeatureMatrix, got {window_hours}")
    grid, measurement_counts = _hourly_grid(tables, lookback_hours, n_features=len(spec.names))
    keep, flow = _select_samples(grid, spec, config)
    kept = tables.admissions.loc[keep].reset_index(drop=True)
    grid = grid.select(keep)
    labels = kept["label"].to_numpy(dtype=np.int64)
    subjects = kept["subject_id"].to_numpy(dtype=np.int64)
    split, fold = assign_splits(subjects, labels, config, origin=tables.origin)
    scaling = _training_statistics(grid.window[split == 0], spec, origin=tables.origin)
    record = scaled_record(grid.window, grid.last_before(), scaling)
    matrix = FeatureMatrix(
        values=fill_and_scale(record, scaling),
        labels=labels,
        subject_ids=subjects,
        hadm_ids=kept["hadm_id"].to_numpy(dtype=np.int64),
        icustay_ids=kept["first_icustay_id"].to_numpy(dtype=np.int64),
        feature_names=spec.names,
        split=split,
        fold=fold,
        scaling=scaling,
        observed=~np.isnan(grid.window),
        record=record,
    )
    flow += tuple((f"positives in {name}", int(labels[split == code].sum())) for code, name in enumerate(SPLITS))
    unmeasured = grid.unmeasured()
    report = PreprocessReport(
        flow=flow,
        measurements=measurement_counts,
        window_rule=window_rule_text(config, start=window_start),
        # share of (sample, hour) bins of each feature without a measurement in the window
        missingness=tuple(zip(spec.names, map(float, np.isnan(grid.window).mean(axis=(0, 1))), strict=True)),
        unmeasured_samples=tuple(int(n) for n in unmeasured.sum(axis=0)),
        samples_without_vitals=int(_without_vitals(unmeasured, spec).sum()),
    )
    return matrix, report


def _select_samples(
    grid: HourlyGrid, spec: FeatureSpec, config: PreprocessConfig
) -> tuple[npt.NDArray[np.bool_], tuple[tuple[str, int], ...]]:
    """The window rule, then (with ``drop_unmeasured_vitals``) the drop of samples without vitals, counted."""
    keep, flow = _apply_window_rule(grid, config)
    if not config.drop_unmeasured_vitals:
        return keep, flow
    dropped = keep & _without_vitals(grid.unmeasured(), spec)
    keep = keep & ~dropped
    # the new step goes before "samples out", which keeps its place at the end
    return keep, (*flow[:-1], (NO_VITALS_STEP, int(dropped.sum())), ("samples out", int(keep.sum())))


def _without_vitals(unmeasured: npt.NDArray[np.bool_], spec: FeatureSpec) -> npt.NDArray[np.bool_]:
    """Samples none of whose vital-sign series was measured (window or look-back). Shape: (N, F) → (N,)."""
    vital = np.array([feature.source == "vital" for feature in spec.features])
    if not vital.any():
        return np.zeros(unmeasured.shape[0], dtype=bool)
    return np.asarray(unmeasured[:, vital].all(axis=1), dtype=bool)


def _hourly_grid(
    tables: QueryTables, lookback_hours: int, *, n_features: int
) -> tuple[HourlyGrid, tuple[tuple[str, int], ...]]:
    """Means per (sample, hour, feature) for hours -lookback … 47 on a dense grid, and the row counts.

    Each used row gets an integer cell code ``(sample * span + lookback + hour) * F + feature``, so the
    grid is one ``np.bincount`` away (no sort of all rows, no groupby).
    """
    n_samples, span = len(tables.admissions), WINDOW_HOURS + lookback_hours
    code, value, counts_out = _cell_codes(tables, lookback_hours, n_features=n_features)
    means = _bin_means(code, value, n_samples * span * n_features)
    return HourlyGrid(means.reshape(n_samples, span, n_features), lookback_hours), counts_out


def _cell_codes(
    tables: QueryTables, lookback_hours: int, *, n_features: int
) -> tuple[I64, F64, tuple[tuple[str, int], ...]]:
    """Cell code and value of each row used (see :func:`_hourly_grid`), and the counts of rows used and ignored.

    Shape: (M_used,) each. A function of its own so that its row-sized temporaries are freed on return.
    """
    m = tables.measurements
    hadm = tables.admissions["hadm_id"].to_numpy(dtype=np.int64)
    start_ns = nanoseconds(tables.admissions["window_start"])
    sample = _sample_index(hadm, m.hadm_id)
    known = sample >= 0
    hour = np.floor_divide(m.time_ns - start_ns[sample], HOUR_NS)  # unknown rows (-1) get a dummy start
    early, late = hour < -lookback_hours, hour >= WINDOW_HOURS
    use = known & ~early & ~late
    counts_out = (
        ("measurement rows in", int(m.value.size)),
        ("ignored: admission not in the cohort", int((~known).sum())),
        (f"ignored: more than {lookback_hours} h before the window", int((known & early).sum())),
        ("ignored: at or after the window end", int((known & late).sum())),
        ("used: before the window (start fill)", int((use & (hour < 0)).sum())),
        ("used: in the window", int((use & (hour >= 0)).sum())),
    )
    del known, early, late
    # code = (sample * span + lookback + hour) * F + feature, in place: row-sized arrays dominate the memory
    code = sample
    code *= WINDOW_HOURS + lookback_hours
    code += hour
    del hour
    code += lookback_hours
    code *= n_features
    code += m.feature
    return code[use], m.value[use], counts_out


def _sample_index(hadm: I64, row_hadm: I64) -> I64:
    """Position of each row's admission in the sorted ``hadm``, -1 for admissions not in it. Shape: (M,).

    A lookup table indexed by ``hadm_id - min`` when the ids are dense enough (MIMIC's are), as one
    gather is several times faster than a binary search per row; ``searchsorted`` otherwise.
    """
    if hadm.size == 0:
        return np.full(row_hadm.size, -1, dtype=np.int64)
    low, high = int(hadm[0]), int(hadm[-1])
    if high - low < max(16 * hadm.size, 1 << 20):
        table = np.full(high - low + 2, -1, dtype=np.int64)  # the last slot answers every id out of range
        table[hadm - low] = np.arange(hadm.size)
        offset = row_hadm - low
        offset[(offset < 0) | (offset > high - low)] = high - low + 1
        return table[offset]
    sample = np.minimum(np.searchsorted(hadm, row_hadm), hadm.size - 1)
    return np.where(hadm[sample] == row_hadm, sample, -1)


def _bin_means(code: I64, value: F64, n_cells: int) -> F64:
    """Mean of the values of each cell code, NaN for empty cells; independent of the row order. Shape: (n_cells,).

    ``np.bincount`` adds each cell's values in row order, starting from 0. A sum of one or two values
    does not depend on that order (``0 + a + b == 0 + b + a`` exactly), but one of three or more
    does, so those cells are summed again in a canonical order: ascending value.
    """
    counts = np.bincount(code, minlength=n_cells)
    sums = np.bincount(code, weights=value, minlength=n_cells).astype(np.float64, copy=False)
    few = np.minimum(counts, 3).astype(np.uint8)  # a small copy: the per-row lookup below stays in cache
    crowded = few[code] == 3
    del few
    if crowded.any():
        cells, compact = np.unique(code[crowded], return_inverse=True)
        crowded_value = value[crowded]
        by_value = np.argsort(crowded_value)
        # bincount adds in row order, here ascending value: each cell's sum is order independent
        sums[cells] = np.bincount(compact[by_value], weights=crowded_value[by_value], minlength=cells.size)
    empty = counts == 0
    counts[empty] = 1
    sums /= counts
    sums[empty] = np.nan
    return sums


def _apply_window_rule(
    grid: HourlyGrid, config: PreprocessConfig
) -> tuple[npt.NDArray[np.bool_], tuple[tuple[str, int], ...]]:
    """Which admissions pass the window rule (see the module docstring), and the drops of each rule."""
    hour_measured: npt.NDArray[np.bool_] = ~np.all(np.isnan(grid.window), axis=2)  # (N, 48): any feature
    measured = hour_measured.any(axis=1)
    first = np.argmax(hour_measured, axis=1)
    last = WINDOW_HOURS - 1 - np.argmax(hour_measured[:, ::-1], axis=1)
    early_ok = measured & (first <= config.first_hour_max)
    keep = early_ok & (last >= config.last_hour_min)
    flow = (
        ("admissions in", int(measured.size)),
        ("dropped: no measurement in the window", int((~measured).sum())),
        (f"dropped: first measurement after hour {config.first_hour_max}", int((measured & ~early_ok).sum())),
        (f"dropped: last measurement before hour {config.last_hour_min}", int((early_ok & ~keep).sum())),
        ("samples out", int(keep.sum())),
    )
    return keep, flow


def assign_splits(
    subject_ids: I64, labels: I64, config: PreprocessConfig, *, origin: str = "cohort"
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    """Split codes (0/1/2) and folds (0..K-1, -1 for test) per sample, by patient, stratified, seeded.

    Shape: (N,) each. A patient's stratum is the max label over their samples.
    """
    subjects, inverse = np.unique(subject_ids, return_inverse=True)
    stratum = np.zeros(subjects.size, dtype=np.int64)
    np.maximum.at(stratum, inverse, labels)
    rng = np.random.default_rng(config.seed)
    split_key, fold_key = rng.random(subjects.size), rng.random(subjects.size)
    order = np.lexsort((split_key, stratum))
    sorted_stratum = stratum[order]
    class_start = np.searchsorted(sorted_stratum, sorted_stratum, side="left")
    class_size = np.searchsorted(sorted_stratum, sorted_stratum, side="right") - class_start
    rank = np.arange(subjects.size) - class_start
    n_train = np.floor(config.train_fraction * class_size + 0.5)
    n_validation = np.floor(config.validation_fraction * class_size + 0.5)
    subject_split = np.empty(subjects.size, dtype=np.int8)
    subject_split[order] = np.where(rank < n_train, 0, np.where(rank < n_train + n_validation, 1, 2))
    subject_fold = _assign_folds(subject_split, stratum, fold_key, config.n_folds, origin=origin)
    return subject_split[inverse], subject_fold[inverse]


def _assign_folds(
    subject_split: npt.NDArray[np.int8], stratum: I64, key: F64, n_folds: int, *, origin: str
) -> npt.NDArray[np.int8]:
    """Round robin over train+validation patients sorted by (stratum, key): stratified folds."""
    pool = np.flatnonzero(subject_split < 2)
    if pool.size < n_folds:
        raise DataError(
            f"{origin}: only {pool.size} patient(s) in train + validation, fewer than preprocess.n_folds={n_folds}; "
            "lower preprocess.n_folds or use a larger cohort"
        )
    ordered = pool[np.lexsort((key[pool], stratum[pool]))]
    fold = np.full(subject_split.size, -1, dtype=np.int8)
    fold[ordered] = np.arange(ordered.size) % n_folds
    return fold


def _training_statistics(window: F64, spec: FeatureSpec, *, origin: str) -> ScalingStats:
    """p5, median, p95 per feature over the observed in-window bin means of the training samples.

    Shape: window (N_train, 48, F).
    """
    by_feature = window.reshape(-1, len(spec.names)).T  # (F, N_train * 48)
    stats = np.empty((3, len(spec.names)))
    for code, name in enumerate(spec.names):  # 19 features, not rows
        values = by_feature[code][~np.isnan(by_feature[code])]
        if values.size == 0:
            raise DataError(
                f"{origin}: feature {name!r} is never measured in the training split's windows; "
                "its scaling statistics cannot be computed — use a larger cohort"
            )
        stats[:, code] = np.percentile(values, [5, 50, 95])
    return ScalingStats(feature_names=spec.names, p5=stats[0], median=stats[1], p95=stats[2])


FILL_CHUNK = 4096  # samples filled at once: bounds the temporaries to ~30 MB each


def scaled_record(window: F64, before: F64, scaling: ScalingStats) -> npt.NDArray[np.float32]:
    """The record of each sample (:mod:`lstm_adv.domain.record`): the pre-window bin, then the in-window bin
    means, scaled but not winsorized, NaN where nothing was measured.

    Shape: window (N, 48, F), before (N, F) → (N, 49, F) float32.
    """
    bins = np.concatenate([before[:, None, :], window], axis=1)
    return scaling.scale_unwinsorized(bins).astype(np.float32)


def fill_and_scale(record: npt.NDArray[np.float32], scaling: ScalingStats) -> npt.NDArray[np.float32]:
    """The model input of each record (:func:`~lstm_adv.domain.record.fill_record`), a chunk of samples at a
    time. Shape: record (N, 49, F) → (N, 48, F) float32 in [0, 1]."""
    values = np.empty((record.shape[0], WINDOW_HOURS, record.shape[2]), dtype=np.float32)
    median = scaling.scaled_median
    for first in range(0, record.shape[0], FILL_CHUNK):  # chunks of samples bound the memory
        part = slice(first, first + FILL_CHUNK)
        values[part] = fill_record(record[part], median)
    return values


# --- the run ------------------------------------------------------------------------------------


def run_preprocess(store: RunStore, query_ref: str | None, config: Config) -> Run:
    """Build the FeatureMatrix of a query run (``query_ref`` or the latest) and store it as a features run.

    The feature definitions are those the query run was made with (see :func:`query_definitions`);
    they are stored in the features run's summary too.
    """
    parent = store.resolve(query_ref, "query")
    definitions = query_definitions(parent, config.cohort.features_file)
    spec = definitions.to_spec()
    tables = QueryTables.from_run(parent, spec)
    summary = parent.manifest.summary
    recorded_start = summary.window_start if isinstance(summary, QuerySummary) else None
    matrix, report = build_feature_matrix(
        tables,
        spec,
        config=config.preprocess,
        window_hours=config.cohort.window_hours,
        lookback_hours=config.cohort.lookback_hours,
        window_start=recorded_start or WINDOW_START_UNRECORDED,
    )
    with store.create("features", parents=[parent.id], config=config_as_dict(config)) as writer:
        artifacts.save_features(writer.path, matrix)
        writer.summary = report.summary(matrix, features=definitions)
        run = writer.commit()
    log.info("features run %s: %d samples from %d admissions", run.id, matrix.n_samples, len(tables.admissions))
    return run


def query_definitions(query: Run, features_file: str = "") -> FeatureDefinitions:
    """The feature definitions a query run's data were made with.

    Those stored in the run; for a run made before they were stored, ``features_file`` (default: the
    shipped features.toml). A ``features_file`` that differs from the stored definitions is a
    :class:`FeatureSpecError`: the data cannot be read with other definitions than their own.
    """
    summary = query.manifest.summary
    recorded = summary.features if isinstance(summary, QuerySummary) else None
    if recorded is None:
        return read_feature_definitions(features_file)
    if features_file:
        given = read_feature_definitions(features_file)
        if given.sha256 != recorded.sha256:
            raise FeatureSpecError(
                f"query run {query.id} was made with the feature definitions of {recorded.name} "
                f"(sha256 {recorded.sha256[:12]}), not {given.name} ({given.sha256[:12]}); preprocessing uses "
                f"the definitions the data were made with: drop --features, or re-run `lstm-adv query --features "
                f"{given.name}`"
            )
    return recorded
