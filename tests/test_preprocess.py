"""The preprocess stage: binning, the window rule, splits, filling, scaling, the run and its errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.config import PreprocessConfig
from lstm_adv.domain.errors import ConfigError, DataError, FeatureSpecError, RunKindError
from lstm_adv.domain.feature_matrix import FeatureMatrix
from lstm_adv.domain.record import fill_series
from lstm_adv.preprocess import build_feature_matrix, run_preprocess
from lstm_adv.query import QueryTables
from lstm_adv.resources import load_feature_spec
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore
from tests.strategies import PREPROCESS_NAMES, make_query_tables, query_table_inputs

SPEC = load_feature_spec()
CONFIG = PreprocessConfig(n_folds=2)
Frames = tuple[pd.DataFrame, dict[str, pd.DataFrame]]


def _build(frames: Frames) -> FeatureMatrix:
    tables = QueryTables.from_frames(frames[0], frames[1], SPEC, origin="query tables")
    try:
        matrix, _ = build_feature_matrix(tables, SPEC, config=CONFIG)
    except DataError as exc:  # tiny random cohorts: too few patients or a feature never measured in train
        assume("n_folds" not in str(exc) and "never measured" not in str(exc) and "window rule" not in str(exc))
        raise
    return matrix


def _buildable(frames: Frames) -> FeatureMatrix:
    try:
        return _build(frames)
    except DataError:
        assume(False)
        raise


# --- properties -------------------------------------------------------------------------------------


@given(query_table_inputs)
def test_values_are_finite_in_unit_box_with_expected_shapes(frames: Frames) -> None:
    """Every output value is finite and in [0, 1]; arrays have shape (N, 48, 19) and (N,)."""
    matrix = _buildable(frames)
    assert matrix.values.dtype == np.float32
    assert np.isfinite(matrix.values).all()
    assert matrix.values.min() >= 0.0
    assert matrix.values.max() <= 1.0
    n = matrix.n_samples
    assert matrix.values.shape == (n, 48, 19)
    assert matrix.labels.shape == matrix.split.shape == matrix.fold.shape == (n,)


@given(query_table_inputs, st.randoms(use_true_random=False))
def test_row_order_does_not_change_the_output(frames: Frames, rnd: Any) -> None:
    """Shuffling the rows of every input table gives the identical FeatureMatrix."""
    matrix = _buildable(frames)
    admissions, tables = frames
    seed = rnd.randint(0, 2**31)
    shuffled = (
        admissions.sample(frac=1.0, random_state=seed),
        {name: t.sample(frac=1.0, random_state=seed + 1) for name, t in tables.items()},
    )
    assert _build(shuffled) == matrix


@given(query_table_inputs, st.integers(0, 2**31), st.integers(1, 200))
def test_nothing_after_hour_48_matters(frames: Frames, seed: int, n_extra: int) -> None:
    """Changing or adding measurements at or after the window end leaves the output unchanged."""
    matrix = _buildable(frames)
    admissions, tables = frames
    rng = np.random.default_rng(seed)
    starts = admissions.set_index("hadm_id")["window_start"]
    changed = {}
    for name, table in tables.items():
        late = table["charttime"].to_numpy() >= starts.loc[table["hadm_id"]].to_numpy() + np.timedelta64(48, "h")
        table = table.assign(value=np.where(late, rng.normal(500, 300, len(table)), table["value"]))
        extra_adm = admissions.sample(n=n_extra, replace=True, random_state=seed)
        extra = pd.DataFrame(
            {
                "hadm_id": extra_adm["hadm_id"].to_numpy(),
                "charttime": extra_adm["window_start"].to_numpy()
                + rng.integers(48 * 60, 100 * 60, n_extra).astype("timedelta64[m]"),
                "feature": rng.choice(np.array(PREPROCESS_NAMES, dtype=object), n_extra),
                "value": rng.normal(-50, 100, n_extra),
            }
        )
        changed[name] = pd.concat([table, extra], ignore_index=True)
    assert _build((admissions, changed)) == matrix


@given(query_table_inputs, st.integers(0, 2**31))
def test_validation_and_test_values_never_change_the_statistics(frames: Frames, seed: int) -> None:
    """Scaling statistics depend only on the training split's values."""
    matrix = _buildable(frames)
    admissions, tables = frames
    held_out = matrix.hadm_ids[matrix.split > 0]
    rng = np.random.default_rng(seed)
    changed = {
        name: t.assign(value=np.where(t["hadm_id"].isin(held_out), rng.normal(0, 1000, len(t)), t.value))
        for name, t in tables.items()
    }
    assert _build((admissions, changed)).scaling == matrix.scaling


@given(query_table_inputs)
def test_splits_are_disjoint_by_subject_and_stratified(frames: Frames) -> None:
    """No subject is in two splits; each split's share of patients is near its target fraction."""
    matrix = _buildable(frames)
    owners = pd.DataFrame({"subject": matrix.subject_ids, "split": matrix.split}).groupby("subject")["split"]
    assert (owners.nunique() == 1).all()
    assert (matrix.fold[matrix.split == 2] == -1).all()
    assert set(matrix.fold[matrix.split < 2].tolist()) == {0, 1}


@given(query_table_inputs)
def test_vectorized_path_equals_naive_reference(frames: Frames) -> None:
    """The vectorized build equals a row-by-row reference implementation of the preprocessing steps."""
    matrix = _buildable(frames)
    admissions, tables = frames
    expected_ids, values = _naive(admissions, pd.concat(tables.values()), matrix)
    assert matrix.hadm_ids.tolist() == expected_ids
    np.testing.assert_allclose(matrix.values, values, atol=1e-6)


def _naive(admissions: pd.DataFrame, long: pd.DataFrame, matrix: FeatureMatrix) -> tuple[list[int], np.ndarray]:
    start = dict(zip(admissions["hadm_id"], admissions["window_start"], strict=True))
    groups: dict[tuple[int, str], dict[int, list[float]]] = {}
    for row in long.itertuples():
        hour = math.floor((row.charttime - start[row.hadm_id]) / pd.Timedelta(hours=1))
        if -24 <= hour < 48:
            groups.setdefault((row.hadm_id, row.feature), {}).setdefault(hour, []).append(row.value)
    means = {key: {h: sum(v) / len(v) for h, v in d.items()} for key, d in groups.items()}
    kept = []
    for hadm in sorted(start):
        hours = [h for (a, _), d in means.items() if a == hadm for h in d if h >= 0]
        if hours and min(hours) <= 3 and max(hours) >= 46:
            kept.append(int(hadm))
    train = set(matrix.hadm_ids[matrix.split == 0].tolist())
    values = np.zeros((len(kept), 48, 19))
    for j, name in enumerate(PREPROCESS_NAMES):
        pool = [m for (a, f), d in means.items() if f == name and a in train for h, m in d.items() if h >= 0]
        p5, median, p95 = np.percentile(pool, [5, 50, 95])
        for i, hadm in enumerate(kept):
            series = _naive_series(means.get((hadm, name), {}), median)
            values[i, :, j] = np.clip((np.clip(series, p5, p95) - p5) / ((p95 - p5) or 1.0), 0, 1)
    return kept, values


def _naive_series(bins: dict[int, float], median: float) -> list[float]:
    observed = sorted(h for h in bins if h >= 0)
    before = [h for h in bins if h < 0]
    out = []
    for t in range(48):
        prev = [h for h in observed if h <= t]
        nxt = [h for h in observed if h >= t]
        if prev and nxt:
            a, b = prev[-1], nxt[0]
            out.append(bins[a] if a == b else bins[a] + (bins[b] - bins[a]) * (t - a) / (b - a))
        elif prev:
            out.append(bins[prev[-1]])
        elif before:
            out.append(bins[max(before)])
        elif nxt:
            out.append(bins[nxt[0]])
        else:
            out.append(median)
    return out


# --- examples ----------------------------------------------------------------------------------------


def _frames_at(offsets_min: dict[int, list[int]], n_subjects: int | None = None) -> Frames:
    """One admission per key, heartrate measured at the given minute offsets; all features at hour 1."""
    admissions, _ = make_query_tables(0, len(offsets_min), n_subjects or len(offsets_min))
    admissions = admissions.assign(hadm_id=np.arange(len(offsets_min), dtype=np.int64) + 1)
    rows = [(i + 1, m, "heartrate", 80.0 + m / 60) for i, mins in enumerate(offsets_min.values()) for m in mins]
    rows += [(i + 1, 90, name, 1.0 + j) for i in range(len(offsets_min)) for j, name in enumerate(PREPROCESS_NAMES)]
    long = pd.DataFrame(rows, columns=["hadm_id", "minutes", "feature", "value"])
    starts = admissions.set_index("hadm_id")["window_start"]
    long["charttime"] = starts.loc[long["hadm_id"]].to_numpy() + long.pop("minutes").to_numpy().astype("timedelta64[m]")
    empty = long.iloc[:0]
    return admissions, {"vitals": long, "labs": empty, "bloodgas": empty}


def test_window_rule_boundaries_and_counts() -> None:
    """Kept iff measured in hour bin <= 3 and in bin >= 46; hour 48:00 is outside; each drop is counted."""
    frames = _frames_at(
        {
            0: [46 * 60],
            1: [47 * 60 + 59],
            2: [45 * 60 + 59],
            3: [48 * 60],
            4: [46 * 60],
            5: [46 * 60],
            6: [46 * 60],
        }
    )
    admissions, tables = frames
    vitals = tables["vitals"]
    # hadm 5: the hour-1 measurements move to hour 4.5, so its first measurement is after hour 3
    early_5 = (vitals["hadm_id"] == 5) & (vitals["charttime"] < admissions["window_start"][4] + pd.Timedelta(hours=4))
    vitals.loc[early_5, "charttime"] += pd.Timedelta(hours=3)
    tables["vitals"] = vitals[vitals["hadm_id"] != 6].reset_index(drop=True)  # hadm 6: nothing measured
    qt = QueryTables.from_frames(admissions, tables, SPEC, origin="t")
    matrix, report = build_feature_matrix(qt, SPEC, config=CONFIG)
    assert sorted(matrix.hadm_ids.tolist()) == [1, 2, 7]
    assert report.flow[:5] == (
        ("admissions in", 7),
        ("dropped: no measurement in the window", 1),
        ("dropped: first measurement after hour 3", 1),
        ("dropped: last measurement before hour 46", 2),
        ("samples out", 3),
    )


@given(st.integers(0, 10_000))
def test_observation_mask_marks_exactly_the_bins_that_held_a_measurement(seed: int) -> None:
    """observed[i, k, j] is true iff some row of sample i's feature j fell into hour k of the window."""
    admissions, tables = make_query_tables(seed, 40, 30)
    qt = QueryTables.from_frames(admissions, tables, SPEC, origin="t")
    matrix, _ = build_feature_matrix(qt, SPEC, config=CONFIG)
    expected = np.zeros(matrix.values.shape, dtype=bool)
    starts = admissions.set_index("hadm_id")["window_start"]
    row_of = {hadm: i for i, hadm in enumerate(matrix.hadm_ids.tolist())}
    for frame in tables.values():
        for hadm, time, feature in zip(frame["hadm_id"], frame["charttime"], frame["feature"], strict=True):
            hour = (time - starts[hadm]) // pd.Timedelta(hours=1)
            if hadm in row_of and 0 <= hour < 48:
                expected[row_of[hadm], hour, PREPROCESS_NAMES.index(feature)] = True
    assert np.array_equal(matrix.observation_mask(), expected)
    assert np.allclose(matrix.measured_fraction(), expected.mean(axis=(0, 1)))


def test_fill_interpolates_carries_forward_and_fills_the_start() -> None:
    """Gaps are interpolated, the end carried forward, the start filled from before the window or back-filled."""
    observed = np.full((3, 48, 1), np.nan)
    observed[:, 2, 0] = 10.0
    observed[:, 5, 0] = 16.0
    observed[2] = np.nan
    before = np.array([[4.0], [np.nan], [np.nan]])
    filled = fill_series(observed, before, np.array([7.0]))
    assert filled[0, :6, 0].tolist() == [4.0, 4.0, 10.0, 12.0, 14.0, 16.0]
    assert filled[1, :2, 0].tolist() == [10.0, 10.0]
    assert (filled[:2, 6:, 0] == 16.0).all()
    assert (filled[2] == 7.0).all()


def _without_vitals_frames(seed: int) -> tuple[Frames, list[int]]:
    """Query tables where three admissions that pass the window rule lost every vital-sign row.

    They keep a lab measurement in hour 0 and hour 47, so the window rule still keeps them.
    """
    admissions, tables = make_query_tables(seed, 40, 30)
    chosen = admissions["hadm_id"].iloc[:3].tolist()
    vitals = tables["vitals"]
    starts = admissions.set_index("hadm_id")["window_start"]
    labs = pd.DataFrame(
        {
            "hadm_id": np.repeat(chosen, 2),
            "charttime": np.repeat(starts.loc[chosen].to_numpy(), 2)
            + np.tile(np.array([30, 47 * 60 + 30]), 3).astype("timedelta64[m]"),
            "feature": "sodium",
            "value": 140.0,
        }
    )
    tables = {
        **tables,
        "vitals": vitals[~vitals["hadm_id"].isin(chosen)].reset_index(drop=True),
        "labs": pd.concat([tables["labs"], labs], ignore_index=True),
    }
    return (admissions, tables), chosen


def _independent_coverage(frames: Frames, kept: np.ndarray) -> tuple[np.ndarray, list[int], int]:
    """Measured share of cells, never-measured samples per feature, samples without vitals: with pandas."""
    admissions, tables = frames
    rows = pd.concat(tables.values(), ignore_index=True)
    rows = rows[rows["hadm_id"].isin(kept)]
    start = rows["hadm_id"].map(admissions.set_index("hadm_id")["window_start"])
    rows = rows.assign(hour=np.floor((rows["charttime"] - start) / pd.Timedelta(hours=1)))
    window = rows[(rows["hour"] >= 0) & (rows["hour"] < 48)]
    cells = window.drop_duplicates(["hadm_id", "hour", "feature"]).groupby("feature").size()
    measured = (cells.reindex(PREPROCESS_NAMES).fillna(0) / (len(kept) * 48)).to_numpy()
    seen = rows[(rows["hour"] >= -24) & (rows["hour"] < 48)][["hadm_id", "feature"]].drop_duplicates()
    never = [len(kept) - int((seen["feature"] == name).sum()) for name in PREPROCESS_NAMES]
    vital_names = [f.name for f in SPEC.by_source("vital")]
    with_vitals = seen.loc[seen["feature"].isin(vital_names), "hadm_id"].nunique()
    return measured, never, len(kept) - with_vitals


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coverage_counts_match_an_independent_computation(seed: int) -> None:
    """Measured share per feature, never-measured samples per feature and samples without vitals equal pandas'."""
    frames, chosen = _without_vitals_frames(seed)
    qt = QueryTables.from_frames(*frames, SPEC, origin="t")
    matrix, report = build_feature_matrix(qt, SPEC, config=CONFIG)
    summary = report.summary(matrix)
    measured, never, without = _independent_coverage(frames, matrix.hadm_ids)
    assert set(chosen) <= set(matrix.hadm_ids.tolist())
    assert summary.coverage is not None
    np.testing.assert_allclose([summary.coverage[n].measured_fraction for n in PREPROCESS_NAMES], measured)
    assert [summary.coverage[n].unmeasured_samples for n in PREPROCESS_NAMES] == never
    assert summary.samples_without_vitals == without >= 3


def test_unmeasured_vitals_are_dropped_as_a_counted_step_when_asked() -> None:
    """With drop_unmeasured_vitals the samples without vitals leave the matrix in a flow step of their own."""
    frames, chosen = _without_vitals_frames(0)
    qt = QueryTables.from_frames(*frames, SPEC, origin="t")
    kept_matrix, kept_report = build_feature_matrix(qt, SPEC, config=CONFIG)
    config = attrs.evolve(CONFIG, drop_unmeasured_vitals=True)
    matrix, report = build_feature_matrix(qt, SPEC, config=config)
    flow = dict(report.flow)
    assert list(flow)[:6] == [
        "admissions in",
        "dropped: no measurement in the window",
        "dropped: first measurement after hour 3",
        "dropped: last measurement before hour 46",
        "dropped: no vital sign measured (window or look-back)",
        "samples out",
    ]
    assert flow["dropped: no vital sign measured (window or look-back)"] == kept_report.samples_without_vitals
    assert flow["samples out"] == matrix.n_samples == kept_matrix.n_samples - kept_report.samples_without_vitals
    assert not set(chosen) & set(matrix.hadm_ids.tolist())
    assert report.samples_without_vitals == 0
    assert report.window_rule.endswith(", and >= 1 vital-sign measurement in the window or its look-back")


# --- the run and bad input ----------------------------------------------------------------------------


def _query_run(store: RunStore, frames: Frames, *, skip: str | None = None, kind: str = "query") -> Run:
    admissions, tables = frames
    with store.create(kind) as writer:
        admissions.to_parquet(writer.file("admissions.parquet"))
        for name, table in tables.items():
            if name != skip:
                table.to_parquet(writer.file(f"{name}.parquet"))
        return writer.commit()


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    """An empty run store."""
    return RunStore(tmp_path / "runs")


def test_run_stores_the_matrix_and_counts(store: RunStore) -> None:
    """run_preprocess writes features.npz and a summary with flow, splits, missingness; parent = query run."""
    parent = _query_run(store, make_query_tables(1, 40, 30))
    run = run_preprocess(store, str(parent.id), load_config(overrides={"preprocess.n_folds": 2}))
    matrix = FeatureMatrix.from_npz(run.file("features.npz"))
    summary = run.manifest.summary
    assert run.manifest.parents == (parent.id,)
    assert summary.shape == (matrix.n_samples, 48, 19)
    assert summary.flow[-4].count == matrix.n_samples
    assert sum(s.positives for s in summary.splits.values()) == int(matrix.labels.sum())
    assert set(summary.missingness) == set(PREPROCESS_NAMES)


def test_cli_preprocess_and_runs_show(tmp_path: Path) -> None:
    """`lstm-adv preprocess --data <id>` prints the new id; `runs show` prints shape, balance, missingness."""
    store = RunStore(tmp_path / "runs")
    parent = _query_run(store, make_query_tables(2, 40, 30))
    runner = CliRunner()
    result = runner.invoke(app, ["--home", str(tmp_path), "preprocess", "--data", str(parent.id), "--folds", "2"])
    assert result.exit_code == 0, result.output
    run_id = result.output.strip().splitlines()[-1].removeprefix("features run ")
    assert "class balance" in result.output  # the stage prints its summary
    shown = runner.invoke(app, ["--home", str(tmp_path), "runs", "show", run_id])
    assert shown.exit_code == 0, shown.output
    assert "shape   (" in shown.output
    assert "class balance" in shown.output
    assert "heartrate" in shown.output


def _break(frames: Frames, table: str, **columns: Any) -> Frames:
    admissions, tables = frames
    tables = dict(tables)
    tables[table] = tables[table].assign(**columns)
    return admissions, tables


BAD_INPUTS = [
    (
        "empty cohort",
        lambda f: (f[0].iloc[:0], f[1]),
        None,
        "{origin}: the cohort is empty (admissions.parquet has no rows); nothing to preprocess — "
        "check the query's inclusion rules and source data",
    ),
    (
        "missing column",
        lambda f: (f[0], {**f[1], "labs": f[1]["labs"].drop(columns="value")}),
        None,
        "{origin}: labs.parquet has no column 'value'; expected columns: hadm_id, charttime, feature, value",
    ),
    (
        "non-numeric",
        lambda f: _break(f, "vitals", value="high"),
        None,
        "{origin}: vitals.parquet column 'value' must hold numbers, got dtype {dtype}",
    ),
    (
        "nan",
        lambda f: _break(f, "vitals", value=np.r_[np.nan, f[1]["vitals"]["value"].to_numpy()[1:]]),
        None,
        "{origin}: vitals.parquet column 'value' has 1 missing value(s)",
    ),
    (
        "inf",
        lambda f: _break(f, "labs", value=np.r_[np.inf, f[1]["labs"]["value"].to_numpy()[1:]]),
        None,
        "{origin}: labs.parquet column 'value' has 1 infinite value(s)",
    ),
    (
        "unknown feature",
        lambda f: _break(f, "labs", feature="pulse"),
        None,
        "{origin}: labs.parquet has unknown feature name(s) pulse; known: " + ", ".join(PREPROCESS_NAMES),
    ),
    (
        "missing table",
        lambda f: f,
        "bloodgas",
        "run {id} has no file 'bloodgas.parquet'; the run folder {path} is incomplete",
    ),
]


@pytest.mark.parametrize(("case", "damage", "skip", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gives_one_clear_error_and_no_run(
    store: RunStore, case: str, damage: Any, skip: str | None, message: str
) -> None:
    """Each malformed query run raises one DataError naming run, file and column, and writes no run."""
    parent = _query_run(store, damage(make_query_tables(3, 20, 15)), skip=skip)
    with pytest.raises(DataError) as info:
        run_preprocess(store, str(parent.id), load_config())
    dtype = pd.read_parquet(parent.path / "vitals.parquet")["value"].dtype if case == "non-numeric" else ""
    assert str(info.value) == message.format(
        origin=f"query run {parent.id}", id=parent.id, path=parent.path, dtype=dtype
    )
    assert store.list("features") == []
    assert not any((store.root / ".tmp").iterdir())


def test_parent_of_the_wrong_kind_is_refused(store: RunStore) -> None:
    """A parent that is not a query run raises RunKindError and writes no run."""
    parent = _query_run(store, make_query_tables(4, 20, 15), kind="synth")
    with pytest.raises(RunKindError) as info:
        run_preprocess(store, str(parent.id), load_config())
    assert str(info.value) == f"run {parent.id} is a synth run; this needs a query run"
    assert store.list("features") == []


def test_window_hours_other_than_48_is_a_config_error() -> None:
    """The FeatureMatrix time axis is 48 hours; another cohort.window_hours is refused."""
    admissions, tables = make_query_tables(5, 20, 15)
    qt = QueryTables.from_frames(admissions, tables, SPEC, origin="t")
    with pytest.raises(ConfigError, match=r"cohort.window_hours must be 48 for a FeatureMatrix, got 24"):
        build_feature_matrix(qt, SPEC, config=CONFIG, window_hours=24)


# --- the demo ----------------------------------------------------------------------------------------

DEMO = Path("/work/shared/data/mimic3-demo")


def _demo_expected_flow() -> tuple[dict[str, int], dict[int, int]]:
    """Cohort, window and window rule recomputed from the demo CSVs with pandas (independent of the SQL)."""
    data = Path(__file__).resolve().parents[1] / "lstm_adv" / "resources" / "mimic3-demo"
    folder = data if (data / "ICUSTAYS.csv.gz").exists() else DEMO
    read = lambda name, **kw: pd.read_csv(folder / f"{name}.csv.gz", **kw)  # noqa: E731
    stays = (
        read("ICUSTAYS", parse_dates=["intime", "outtime"])
        .merge(
            read("ADMISSIONS", parse_dates=["admittime", "dischtime"])[
                ["hadm_id", "admittime", "dischtime", "hospital_expire_flag"]
            ],
            on="hadm_id",
        )
        .merge(read("PATIENTS", parse_dates=["dob"])[["subject_id", "dob"]], on="subject_id")
    )
    birthday_later = stays.intime.dt.month * 100 + stays.intime.dt.day < stays.dob.dt.month * 100 + stays.dob.dt.day
    age = stays.intime.dt.year - stays.dob.dt.year - birthday_later
    days = lambda a, b: (stays[b] - stays[a]).dt.total_seconds() / 86400  # noqa: E731
    included = stays[(age >= 18) & (days("admittime", "dischtime") >= 1) & (days("intime", "outtime") >= 1)]
    cohort = included.groupby("hadm_id").agg(start=("intime", "min"), label=("hospital_expire_flag", "first"))
    parts = []
    columns = ["hadm_id", "itemid", "charttime", "valuenum"]
    chart = read("CHARTEVENTS", usecols=[*columns, "error"], parse_dates=["charttime"])
    chart = chart[chart.error.fillna(0) != 1]
    lab = read("LABEVENTS", usecols=columns, parse_dates=["charttime"])
    for feature in SPEC.features:
        source = chart if feature.source == "vital" else lab
        rows = source[source.itemid.isin(feature.all_itemids)].dropna(subset=["valuenum", "hadm_id"])
        fahrenheit = rows.itemid.isin(feature.fahrenheit_itemids)
        v = rows.valuenum
        ok_f = fahrenheit & (v > feature.fahrenheit_lower) & (v < feature.fahrenheit_upper)
        lower = (v >= feature.lower) if feature.lower_inclusive else (v > feature.lower)
        upper = (v <= feature.upper) if feature.upper_inclusive else (v < feature.upper)
        parts.append(rows[ok_f | (~fahrenheit & lower & upper)][["hadm_id", "charttime"]])
    times = pd.concat(parts).merge(cohort, left_on="hadm_id", right_index=True).reset_index(drop=True)
    times["hour"] = np.floor((times.charttime - times.start).dt.total_seconds() / 3600)
    inside = times[(times.hour >= 0) & (times.hour < 48)]
    span = inside.groupby("hadm_id").hour.agg(["min", "max"]).reindex(cohort.index)
    measured = span["min"].notna()
    early = measured & (span["min"] <= 3)
    keep = early & (span["max"] >= 46)
    flow = {
        "admissions in": len(cohort),
        "dropped: no measurement in the window": int((~measured).sum()),
        "dropped: first measurement after hour 3": int((measured & ~early).sum()),
        "dropped: last measurement before hour 46": int((early & ~keep).sum()),
        "samples out": int(keep.sum()),
    }
    return flow, {int(h): int(label) for h, label in cohort.label[keep].items()}


@pytest.mark.db
@pytest.mark.slow
def test_demo_counts_match_an_independent_computation(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """On the demo, the count after each filter step equals a pandas recomputation from the demo CSVs."""
    query = pytest.importorskip("lstm_adv.query")
    try:
        dsn = request.getfixturevalue("demo_dsn")
    except pytest.FixtureLookupError:
        pytest.skip("the demo_dsn fixture (embedded PostgreSQL with the demo) is not available")
    config = load_config()
    store = RunStore(tmp_path / "runs")
    parent = query.run_cohort_query(dsn, schema="mimiciii", config=config, store=store)
    run = run_preprocess(store, str(parent.id), config)
    flow, labels = _demo_expected_flow()
    got = {row.step: row.count for row in run.manifest.summary.flow}
    assert {step: got[step] for step in flow} == flow
    matrix = FeatureMatrix.from_npz(run.file("features.npz"))
    assert dict(zip(matrix.hadm_ids.tolist(), matrix.labels.tolist(), strict=True)) == labels
    for code, name in enumerate(("train", "validation", "test")):
        assert got[f"positives in {name}"] == int(matrix.labels[matrix.split == code].sum())


@pytest.mark.db
@pytest.mark.slow
def test_demo_coverage_matches_an_independent_computation_under_both_shipped_definitions(
    demo_dsn: str, tmp_path: Path
) -> None:
    """On the demo, each definition's coverage counts equal pandas' over its query tables; serum potassium is
    measured far more often; the admission without chart data is counted without vitals."""
    from lstm_adv.query import run_cohort_query

    store = RunStore(tmp_path / "runs")
    measured = {}
    for name in ("features.toml", "features_serum.toml"):
        config = load_config(overrides={"cohort.features_file": name})
        query = run_cohort_query(demo_dsn, schema="mimiciii", config=config, store=store)
        run = run_preprocess(store, str(query.id), config)
        summary, matrix = run.manifest.summary, FeatureMatrix.from_npz(run.file("features.npz"))
        frames = (
            pd.read_parquet(query.file("admissions.parquet")),
            {t: pd.read_parquet(query.file(f"{t}.parquet")) for t in ("vitals", "labs", "bloodgas")},
        )
        expected, never, without = _independent_coverage(frames, matrix.hadm_ids)
        assert summary.features.name == name
        np.testing.assert_allclose([summary.coverage[n].measured_fraction for n in PREPROCESS_NAMES], expected)
        assert [summary.coverage[n].unmeasured_samples for n in PREPROCESS_NAMES] == never
        assert summary.samples_without_vitals == without >= 1
        assert 193924 in matrix.hadm_ids.tolist()
        measured[name] = summary.coverage
    assert measured["features_serum.toml"]["potassium"].measured_fraction > 2 * (
        measured["features.toml"]["potassium"].measured_fraction
    )
    assert measured["features_serum.toml"]["heartrate"] == measured["features.toml"]["heartrate"]


def test_preprocess_refuses_definitions_other_than_the_query_runs(store: RunStore, tmp_path: Path) -> None:
    """A features file that differs from the one the query run stored is one line naming both; no run is written."""
    from lstm_adv.resources import read_feature_definitions
    from lstm_adv.results.summaries import QuerySummary

    admissions, tables = make_query_tables(6, 20, 15)
    shipped = read_feature_definitions()
    with store.create("query") as writer:
        admissions.to_parquet(writer.file("admissions.parquet"))
        for name, table in tables.items():
            table.to_parquet(writer.file(f"{name}.parquet"))
        writer.summary = QuerySummary(flow=(), tables={}, schema="s", source="x", features=shipped)
        parent = writer.commit()
    serum = read_feature_definitions("features_serum.toml")
    with pytest.raises(FeatureSpecError) as info:
        run_preprocess(store, str(parent.id), load_config(overrides={"cohort.features_file": "features_serum.toml"}))
    assert str(info.value) == (
        f"query run {parent.id} was made with the feature definitions of features.toml (sha256 "
        f"{shipped.sha256[:12]}), not features_serum.toml ({serum.sha256[:12]}); preprocessing uses the definitions "
        "the data were made with: drop --features, or re-run `lstm-adv query --features features_serum.toml`"
    )
    assert store.list("features") == []
    run = run_preprocess(store, str(parent.id), load_config(overrides={"preprocess.n_folds": 2}))
    assert run.manifest.summary.features == shipped
