"""The synthetic MIMIC-III generator, its oracle AUROC, and `lstm-adv synth` against a real PostgreSQL."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from psycopg import sql
from typer.testing import CliRunner

from lstm_adv.cli import app
from lstm_adv.config import SynthConfig
from lstm_adv.database.connection import connect
from lstm_adv.domain.errors import ConfigError, DatabaseError, DataError
from lstm_adv.metrics import auroc, oracle_auroc
from lstm_adv.query import run_cohort_query
from lstm_adv.resources import load_feature_spec
from lstm_adv.results.artifacts import find_synth_run, load_truth
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import RunStore
from lstm_adv.synth import SyntheticCohort, generate_cohort, run_synth

runner = CliRunner(env={"COLUMNS": "200"})

# MIMIC-III v1.4 column headers (data/mimic3-demo/README.md), restated here on purpose.
MIMIC_COLUMNS = {
    "patients": "row_id,subject_id,gender,dob,dod,dod_hosp,dod_ssn,expire_flag",
    "admissions": "row_id,subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,"
    "discharge_location,insurance,language,religion,marital_status,ethnicity,edregtime,edouttime,diagnosis,"
    "hospital_expire_flag,has_chartevents_data",
    "icustays": "row_id,subject_id,hadm_id,icustay_id,dbsource,first_careunit,last_careunit,first_wardid,"
    "last_wardid,intime,outtime,los",
    "chartevents": "row_id,subject_id,hadm_id,icustay_id,itemid,charttime,storetime,cgid,value,valuenum,valueuom,"
    "warning,error,resultstatus,stopped",
    "labevents": "row_id,subject_id,hadm_id,itemid,charttime,value,valuenum,valueuom,flag",
    "d_items": "row_id,itemid,label,abbreviation,dbsource,linksto,category,unitname,param_type,conceptid",
    "d_labitems": "row_id,itemid,label,fluid,category,loinc_code",
}
QUERY_NEEDS = {
    "patients": {"subject_id", "dob"},
    "admissions": {"hadm_id", "subject_id", "admittime", "dischtime", "deathtime", "hospital_expire_flag"},
    "icustays": {"subject_id", "hadm_id", "icustay_id", "intime", "outtime", "los"},
    "chartevents": {"hadm_id", "icustay_id", "itemid", "charttime", "value", "valuenum", "valueuom", "error"},
    "labevents": {"subject_id", "hadm_id", "itemid", "charttime", "value", "valuenum", "valueuom"},
}
YEAR_S = 365.2425 * 86400


@pytest.fixture(scope="module")
def cohort() -> SyntheticCohort:
    """3000 admissions with the default settings."""
    return generate_cohort(3000, seed=11)


def test_the_same_seed_gives_identical_tables() -> None:
    """Two generations with one seed are equal table by table; another seed gives other data."""
    first, second = generate_cohort(300, seed=5), generate_cohort(300, seed=5)
    for name, frame in first.tables.items():
        pd.testing.assert_frame_equal(frame, second.tables[name], check_exact=True)
    pd.testing.assert_frame_equal(first.truth, second.truth, check_exact=True)
    other = generate_cohort(300, seed=6)
    assert not other.truth.equals(first.truth)


def test_mortality_is_about_ten_percent(cohort: SyntheticCohort) -> None:
    """Realized deaths and mean true probability are both near the configured 10 %."""
    assert cohort.prevalence == pytest.approx(0.10, abs=0.02)
    assert cohort.truth["death_probability"].mean() == pytest.approx(0.10, abs=0.01)
    flags = cohort.tables["admissions"].set_index("hadm_id")["hospital_expire_flag"]
    assert (flags.loc[cohort.truth["hadm_id"]].to_numpy() == cohort.truth["label"].to_numpy()).all()


def test_configured_mortality_is_honoured() -> None:
    """A different mortality setting moves the prevalence with it."""
    rare = generate_cohort(3000, seed=2, config=SynthConfig(mortality=0.03))
    assert rare.truth["death_probability"].mean() == pytest.approx(0.03, abs=0.005)


def test_tables_have_mimic_columns(cohort: SyntheticCohort) -> None:
    """Every table's columns are MIMIC-III columns, in MIMIC's order, including all the queries read."""
    for name, header in MIMIC_COLUMNS.items():
        columns = list(cohort.tables[name].columns)
        expected = header.split(",")
        assert columns == [c for c in expected if c in columns], name
        assert QUERY_NEEDS.get(name, set()) <= set(columns), name


def test_itemids_are_the_feature_itemids(cohort: SyntheticCohort) -> None:
    """Chart events use only vital itemids, lab events only lab/blood-gas itemids, and all 19 features occur."""
    spec = load_feature_spec()
    by_source = {s: {i for f in spec.by_source(s) for i in f.all_itemids} for s in ("vital", "lab", "bloodgas")}
    chart_items = set(cohort.tables["chartevents"]["itemid"].unique())
    lab_items = set(cohort.tables["labevents"]["itemid"].unique())
    assert chart_items <= by_source["vital"]
    assert lab_items == by_source["lab"] | by_source["bloodgas"]
    assert {678, 223761, 676, 211, 220045} <= chart_items  # both charting systems, °F and °C
    assert set(cohort.tables["d_items"]["itemid"]) == chart_items
    assert set(cohort.tables["d_labitems"]["itemid"]) == lab_items


def test_units_follow_mimic(cohort: SyntheticCohort) -> None:
    """valueuom is MIMIC's unit of each itemid and value is valuenum as text."""
    chart = cohort.tables["chartevents"]
    units = chart.groupby("itemid", observed=True)["valueuom"].unique()
    assert list(units[220045]) == ["bpm"]
    assert list(units[678]) == ["Deg. F"]
    assert list(units[220050]) == ["mmHg"]
    labs = cohort.tables["labevents"]
    assert set(labs.loc[labs["itemid"] == 50820, "valueuom"]) == {"units"}
    sample = pd.concat([chart.head(500), labs.head(500)])
    assert (sample["value"].astype(str).astype(float) == sample["valuenum"]).all()


def test_temperatures_are_plausible_in_both_units(cohort: SyntheticCohort) -> None:
    """°F items chart ~98.6, °C items ~37, and both agree after conversion."""
    chart = cohort.tables["chartevents"]
    chart = chart[chart["error"].fillna(0) == 0]
    fahrenheit = chart.loc[chart["itemid"].isin([678, 223761]) & (chart["valuenum"] > 0), "valuenum"]
    celsius = chart.loc[chart["itemid"].isin([676, 223762]) & (chart["valuenum"] > 0), "valuenum"]
    assert 97.5 < fahrenheit.median() < 100.0
    assert 36.5 < celsius.median() < 37.8


def _ages(cohort: SyntheticCohort) -> pd.Series:
    stays = cohort.tables["icustays"].merge(cohort.tables["patients"], on="subject_id")
    return (stays["intime"] - stays["dob"]).dt.total_seconds() / YEAR_S


def test_ages_over_89_are_shifted_as_mimic_does(cohort: SyntheticCohort) -> None:
    """About 5 % of stays show ages of 300+, none lies between 90 and 299, a few are under 18."""
    ages = _ages(cohort)
    shifted = ages >= 300
    assert 0.02 < shifted.mean() < 0.09
    assert (ages[shifted] < 315).all()  # readmissions years later age on from ~300
    assert not ((ages > 90) & (ages < 300)).any()
    assert (ages < 18).sum() > 0
    assert ages[~shifted & (ages >= 18)].median() == pytest.approx(64, abs=5)


def test_some_admissions_have_several_icu_stays_and_some_patients_several_admissions(
    cohort: SyntheticCohort,
) -> None:
    """Multi-stay admissions and readmitted patients both occur."""
    stays_per_admission = cohort.tables["icustays"].groupby("hadm_id").size()
    admissions_per_patient = cohort.tables["admissions"].groupby("subject_id").size()
    assert 0.05 < (stays_per_admission >= 2).mean() < 0.2
    assert (admissions_per_patient >= 2).sum() > 50


def test_times_are_consistent(cohort: SyntheticCohort) -> None:
    """Stays lie inside their admission in order, deaths end the admission and the patient's record."""
    adm = cohort.tables["admissions"]
    stays = cohort.tables["icustays"].merge(adm, on=["hadm_id", "subject_id"])
    assert (stays["admittime"] <= stays["intime"]).all()
    assert (stays["intime"] < stays["outtime"]).all()
    assert (stays["outtime"] <= stays["dischtime"]).all()
    ordered = stays.sort_values(["hadm_id", "intime"])
    previous_out = ordered.groupby("hadm_id")["outtime"].shift()
    assert (previous_out.isna() | (previous_out < ordered["intime"])).all()
    died = adm["hospital_expire_flag"] == 1
    assert (adm.loc[died, "deathtime"] == adm.loc[died, "dischtime"]).all()
    assert adm.loc[~died, "deathtime"].isna().all()
    last = adm.sort_values("admittime").groupby("subject_id").tail(1)
    assert set(adm.loc[died, "hadm_id"]) <= set(last["hadm_id"])
    np.testing.assert_allclose(
        cohort.tables["icustays"]["los"],
        (cohort.tables["icustays"]["outtime"] - cohort.tables["icustays"]["intime"]).dt.total_seconds() / 86400,
        atol=1e-4,
    )


def test_every_cohort_rule_has_something_to_drop(cohort: SyntheticCohort) -> None:
    """Some stays are under 1 day, some hospital stays under 1 day, some patients under 18 (but most pass)."""
    stays = cohort.tables["icustays"].merge(cohort.tables["admissions"], on=["hadm_id", "subject_id"])
    icu_days = stays["los"]
    hospital_days = (stays["dischtime"] - stays["admittime"]).dt.total_seconds() / 86400
    assert 0.05 < (icu_days < 1).mean() < 0.3
    assert 0.003 < (hospital_days < 1).mean() < 0.05
    assert 0.7 < ((icu_days >= 1) & (hospital_days >= 1) & (_ages(cohort) >= 18)).mean() < 0.9


def test_measurement_frequencies_are_plausible(cohort: SyntheticCohort) -> None:
    """Heart rate is charted about hourly, routine labs every 4-24 h, blood gases for fewer admissions."""
    chart = cohort.tables["chartevents"]
    hr = chart[chart["itemid"].isin([211, 220045])].sort_values(["icustay_id", "charttime"])
    hr_gap = hr.groupby("icustay_id")["charttime"].diff().dt.total_seconds().div(60).dropna()
    assert 50 < hr_gap.median() < 70
    labs = cohort.tables["labevents"]
    bun = labs[labs["itemid"] == 51006].sort_values(["hadm_id", "charttime"])
    bun_gap = bun.groupby("hadm_id")["charttime"].diff().dt.total_seconds().div(3600).dropna()
    assert 4 <= bun_gap.median() <= 24
    with_gas = labs.loc[labs["itemid"] == 50820, "hadm_id"].nunique()
    with_bun = bun["hadm_id"].nunique()
    assert 0.2 < with_gas / with_bun < 0.8


def test_severity_shapes_the_physiology(cohort: SyntheticCohort) -> None:
    """Deaths have higher lactate, BUN and heart rate and lower systolic pressure and pH than survivors."""
    labels = cohort.truth.set_index("hadm_id")["label"]
    labs = cohort.tables["labevents"]
    chart = cohort.tables["chartevents"]
    chart = chart[(chart["error"].fillna(0) == 0) & (chart["valuenum"] > 0)]

    def means(frame: pd.DataFrame, itemids: list[int]) -> pd.Series:
        rows = frame[frame["itemid"].isin(itemids)]
        per_admission = rows.groupby("hadm_id")["valuenum"].mean()
        return per_admission.groupby(labels.reindex(per_admission.index)).mean()

    assert means(labs, [50813])[1] > 1.2 * means(labs, [50813])[0]  # lactate
    assert means(labs, [51006])[1] > 1.2 * means(labs, [51006])[0]  # bun
    assert means(labs, [50820])[1] < means(labs, [50820])[0]  # ph
    assert means(chart, [211, 220045])[1] > means(chart, [211, 220045])[0] + 5  # heart rate
    sysbp = means(chart, [51, 455, 442, 6701, 220050, 220179])
    assert sysbp[1] < sysbp[0] - 5


def test_oracle_auroc_is_high_but_not_perfect(cohort: SyntheticCohort) -> None:
    """The true probability ranks deaths well above chance, and no higher than 1."""
    truth = cohort.truth
    value = oracle_auroc(truth, truth["hadm_id"], truth["label"])
    assert 0.85 < value < 0.97


def test_oracle_auroc_follows_the_given_admissions(cohort: SyntheticCohort) -> None:
    """The oracle uses the given subset and order of admissions, not the whole truth table."""
    truth = cohort.truth.sample(frac=1.0, random_state=0)
    subset = truth.iloc[:1000]
    expected = auroc(subset["label"].to_numpy(), subset["death_probability"].to_numpy())
    reordered = subset.iloc[::-1]
    assert oracle_auroc(cohort.truth, reordered["hadm_id"], reordered["label"]) == pytest.approx(expected)


def test_oracle_auroc_rejects_unknown_admissions(cohort: SyntheticCohort) -> None:
    """An admission the generator did not make is named in the error."""
    with pytest.raises(DataError) as info:
        oracle_auroc(cohort.truth, [100001, 999999], [0, 1])
    assert str(info.value) == (
        "oracle AUROC: 1 admission(s) are not in the synthetic truth, e.g. hadm_id 999999; "
        "use the synth run that generated the schema the data were queried from"
    )


@pytest.mark.parametrize(
    ("admissions", "seed", "message"),
    [
        (0, 0, "synth admissions must be between 1 and 100000, got 0; pass e.g. --admissions 1000"),
        (100_001, 0, "synth admissions must be between 1 and 100000, got 100001; pass e.g. --admissions 1000"),
        (10, -1, "synth seed must be a non-negative integer, got -1; pass e.g. --seed 0"),
    ],
)
def test_bad_requests_are_refused(admissions: int, seed: int, message: str) -> None:
    """An impossible size or seed is a ConfigError with the fix."""
    with pytest.raises(ConfigError) as info:
        generate_cohort(admissions, seed=seed)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mortality": 1.0}, "synth.mortality must be finite and in (0, 1), got 1.0"),
        ({"vital_hours": 0.0}, "synth.vital_hours must be finite and in (0, 8760], got 0.0"),
        ({"severity_effect": -1.0}, "synth.severity_effect must be finite and in [0, 20], got -1.0"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, float], message: str) -> None:
    """Impossible generator settings are a ConfigError naming the key, as soon as the settings are made."""
    with pytest.raises(ConfigError) as info:
        SynthConfig(**settings)
    assert str(info.value) == message


def test_a_single_admission_works() -> None:
    """The smallest cohort still has all tables."""
    tiny = generate_cohort(1, seed=0)
    assert len(tiny.tables["admissions"]) == 1
    assert len(tiny.tables["icustays"]) >= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--admissions", "0"], "synth.admissions must be an integer ≥ 1, got 0"),
        (
            ["--admissions", "100001"],
            "synth admissions must be between 1 and 100000, got 100001; pass e.g. --admissions 1000",
        ),
        (["--seed", "-3"], "synth.seed must be an integer ≥ 0, got -3"),
        (
            ["--schema", "My Schema"],
            "synth schema must be a lower-case SQL name (letters, digits, _; at most 63), "
            "got 'My Schema'; pass e.g. --schema synthetic",
        ),
    ],
)
def test_cli_refuses_bad_input_without_writing_a_run(tmp_path: Path, args: list[str], message: str) -> None:
    """`lstm-adv synth` with bad options prints one error line, exits 1 and writes no run (nor starts a server)."""
    result = runner.invoke(app, ["--home", str(tmp_path), "synth", *args])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert RunStore(tmp_path / "runs").list() == []
    assert not (tmp_path / "pg").exists()


# --- against PostgreSQL ---------------------------------------------------------------------------------


def _config(schema: str, admissions: int = 400, seed: int = 3) -> Any:
    return load_config(overrides={"synth.admissions": admissions, "synth.seed": seed, "synth.schema": schema})


@pytest.mark.db
def test_run_synth_loads_every_table_and_records_a_run(pg_server: Any, tmp_path: Path) -> None:
    """All tables arrive with the generated row counts; the run holds the truth and its summary."""
    store = RunStore(tmp_path / "runs")
    config = _config("synth_load_test")
    run = run_synth(pg_server.dsn, config=config, store=store, source="embedded")
    expected = generate_cohort(400, seed=3).counts
    with connect(pg_server.dsn) as conn:
        for table, rows in expected.items():
            count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("synth_load_test", table)))
            assert count.fetchone() == (rows,), table
        truth_rows = conn.execute("SELECT count(*), sum(label) FROM synth_load_test.synth_truth").fetchone()
    truth = load_truth(run)
    assert truth_rows == (400, int(truth["label"].sum()))
    summary = run.manifest.summary
    assert run.kind == "synth"
    assert run.manifest.parents == ()
    assert summary.tables == {**expected, "synth_truth": 400}
    assert summary.schema == "synth_load_test"
    assert summary.seed == 3
    assert summary.source == "embedded"
    assert summary.prevalence == pytest.approx(truth["label"].mean())


@pytest.mark.db
@pytest.mark.slow
def test_query_runs_unchanged_on_the_synthetic_schema(pg_server: Any, tmp_path: Path) -> None:
    """`lstm-adv synth` then the cohort query: every step keeps most stays, labels match the truth."""
    store = RunStore(tmp_path / "runs")
    result = runner.invoke(
        app,
        [
            "--home",
            str(tmp_path),
            "synth",
            "--admissions",
            "500",
            "--seed",
            "4",
            "--schema",
            "synth_query_test",
            "--dsn",
            pg_server.dsn,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "next: lstm-adv query --schema synth_query_test" in result.output
    synth_run = store.latest("synth")
    config = load_config()
    query_run = run_cohort_query(pg_server.dsn, schema="synth_query_test", config=config, store=store)
    flow = [step.count for step in query_run.manifest.summary.flow]
    assert all(later < earlier for earlier, later in itertools.pairwise(flow[:4]))
    assert flow[3] > 0.7 * flow[0]
    assert find_synth_run(store, query_run) == synth_run
    admissions = pd.read_parquet(query_run.file("admissions.parquet"))
    truth = load_truth(synth_run).set_index("hadm_id")
    assert (admissions["label"].to_numpy() == truth.loc[admissions["hadm_id"], "label"].to_numpy()).all()
    oracle = oracle_auroc(load_truth(synth_run), admissions["hadm_id"], admissions["label"])
    assert 0.8 < oracle <= 1.0
    vitals = pd.read_parquet(query_run.file("vitals.parquet"))
    assert set(vitals["feature"]) == {"heartrate", "sysbp", "diasbp", "tempc", "resprate", "spo2"}
    assert 35 < vitals.loc[vitals["feature"] == "tempc", "value"].median() < 39


@pytest.mark.db
def test_a_schema_with_other_tables_is_not_replaced(pg_server: Any, tmp_path: Path) -> None:
    """A schema holding tables synth did not write (real MIMIC-III, say) is refused and left alone."""
    with connect(pg_server.dsn) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS precious")
        conn.execute("CREATE TABLE IF NOT EXISTS precious.chartevents (row_id INT)")
        conn.commit()
    store = RunStore(tmp_path / "runs")
    with pytest.raises(DatabaseError) as info:
        run_synth(pg_server.dsn, config=_config("precious", admissions=20), store=store)
    assert str(info.value) == (
        "schema 'precious' already holds tables that `lstm-adv synth` did not write (chartevents); "
        "choose another --schema, the synthetic tables would replace them"
    )
    assert store.list() == []
    with connect(pg_server.dsn) as conn:
        assert conn.execute("SELECT to_regclass('precious.chartevents')").fetchone() != (None,)
