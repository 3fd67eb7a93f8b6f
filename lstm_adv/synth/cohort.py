"""The synthetic cohort as MIMIC-III tables: :func:`generate_cohort`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs
import numpy as np
import pandas as pd

from lstm_adv.config import SynthConfig
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.features import FeatureSpec
from lstm_adv.resources import load_feature_spec, resource
from lstm_adv.synth.events import Draws, categorical, chart_events, check_spec, lab_events, to_datetime
from lstm_adv.synth.physiology import PhysiologyTable
from lstm_adv.synth.timeline import MINUTES_PER_DAY, IntArray, Timeline, draw_timeline

log = logging.getLogger(__name__)

MAX_ADMISSIONS = 100_000
TABLES = ("patients", "admissions", "icustays", "chartevents", "labevents", "d_items", "d_labitems")
_DEMO = "mimic3_demo"


@attrs.frozen(eq=False)
class SyntheticCohort:
    """MIMIC-III-schema tables of a synthetic cohort, and each admission's true risk.

    ``tables`` maps the MIMIC-III table names of :data:`TABLES` to DataFrames with MIMIC's column
    names; ``truth`` has one row per admission: hadm_id, death_probability, label, severity.
    Columns nothing reads are left out and load as NULL: chartevents' storetime, cgid,
    resultstatus and stopped, and patients' dod_ssn. CareVue rows have NULL warning/error, as in MIMIC.
    """

    n_admissions: int
    seed: int
    tables: dict[str, pd.DataFrame]
    truth: pd.DataFrame

    @property
    def counts(self) -> dict[str, int]:
        """Rows per table."""
        return {name: len(frame) for name, frame in self.tables.items()}

    @property
    def prevalence(self) -> float:
        """Share of admissions that end in death."""
        return float(self.truth["label"].mean())


def check_request(n_admissions: int, seed: int) -> None:
    """Reject an impossible size or seed before anything is generated or written."""
    if not 1 <= n_admissions <= MAX_ADMISSIONS:
        raise ConfigError(
            f"synth admissions must be between 1 and {MAX_ADMISSIONS}, got {n_admissions}; pass e.g. --admissions 1000"
        )
    if seed < 0:
        raise ConfigError(f"synth seed must be a non-negative integer, got {seed}; pass e.g. --seed 0")


def generate_cohort(
    n_admissions: int, *, seed: int, config: SynthConfig | None = None, spec: FeatureSpec | None = None
) -> SyntheticCohort:
    """Generate ``n_admissions`` synthetic ICU admissions; the same arguments give identical tables."""
    config = config or SynthConfig()
    check_request(n_admissions, seed)
    spec = spec or load_feature_spec()
    check_spec(spec)
    table = PhysiologyTable.for_spec(spec)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
    timeline = draw_timeline(n_admissions, streams[0], config)
    draws = Draws.draw(timeline, len(spec.names), streams[1])
    chart = chart_events(timeline, spec, table, draws, config, streams[2])
    labs = lab_events(timeline, spec, table, draws, config, streams[3])
    tables = {
        "patients": _patients(timeline),
        "admissions": _admissions(timeline, streams[4]),
        "icustays": _icustays(timeline, streams[4]),
        "chartevents": _with_row_id(chart),
        "labevents": _with_row_id(labs),
        "d_items": _dictionary("D_ITEMS.csv.gz", chart["itemid"].unique()),
        "d_labitems": _dictionary("D_LABITEMS.csv.gz", labs["itemid"].unique()),
    }
    truth = pd.DataFrame(
        {
            "hadm_id": timeline.hadm_id,
            "death_probability": timeline.death_probability,
            "label": timeline.label,
            "severity": timeline.severity,
        }
    )
    log.info("generated %d admissions: %s", n_admissions, {k: len(v) for k, v in tables.items()})
    return SyntheticCohort(n_admissions=n_admissions, seed=seed, tables=tables, truth=truth)


def _with_row_id(frame: pd.DataFrame) -> pd.DataFrame:
    frame.insert(0, "row_id", np.arange(1, len(frame) + 1, dtype=np.int64))
    return frame


def _pick(rng: np.random.Generator, names: Sequence[str], weights: Sequence[float], n: int) -> pd.Categorical:
    p = np.asarray(weights, dtype=np.float64)
    return categorical(rng.choice(len(names), size=n, p=p / p.sum()), names)


def _patients(tl: Timeline) -> pd.DataFrame:
    n = len(tl.subject_id)
    died = np.zeros(n, dtype=bool)
    died[tl.adm_subject[tl.label == 1]] = True
    death_day = np.zeros(n, dtype=np.int64)
    death_day[tl.adm_subject[tl.label == 1]] = tl.dischtime[tl.label == 1]
    death_day -= death_day % MINUTES_PER_DAY
    dod = _masked_times(death_day, died)
    return pd.DataFrame(
        {
            "row_id": np.arange(1, n + 1, dtype=np.int64),
            "subject_id": tl.subject_id,
            "gender": categorical(np.where(tl.male, 0, 1), ["M", "F"]),
            "dob": to_datetime(tl.dob),
            "dod": dod,
            "dod_hosp": dod,
            "expire_flag": died.astype(np.int64),
        }
    )


def _masked_times(minutes: IntArray, keep: np.ndarray) -> np.ndarray:
    times = to_datetime(minutes)
    times[~keep] = np.datetime64("NaT")
    return times


def _admissions(tl: Timeline, rng: np.random.Generator) -> pd.DataFrame:
    n = tl.n_admissions
    died = tl.label == 1
    kind = rng.choice(3, size=n, p=[0.8, 0.15, 0.05])  # emergency, elective, urgent
    ed_minutes = tl.admittime - rng.integers(60, 480, n)
    survivor_goes = _pick(
        rng,
        ["HOME", "HOME HEALTH CARE", "SNF", "REHAB/DISTINCT PART HOSP", "LONG TERM CARE HOSPITAL"],
        [35, 25, 22, 12, 6],
        n,
    )
    discharge = survivor_goes.add_categories(["DEAD/EXPIRED"])
    discharge[died] = "DEAD/EXPIRED"
    return pd.DataFrame(
        {
            "row_id": np.arange(1, n + 1, dtype=np.int64),
            "subject_id": tl.subject_id[tl.adm_subject],
            "hadm_id": tl.hadm_id,
            "admittime": to_datetime(tl.admittime),
            "dischtime": to_datetime(tl.dischtime),
            "deathtime": _masked_times(tl.dischtime, died),
            "admission_type": categorical(kind, ["EMERGENCY", "ELECTIVE", "URGENT"]),
            "admission_location": categorical(
                np.choose(kind, [0, 1, 2]),
                ["EMERGENCY ROOM ADMIT", "PHYS REFERRAL/NORMAL DELI", "TRANSFER FROM HOSP/EXTRAM"],
            ),
            "discharge_location": discharge,
            "insurance": _pick(
                rng, ["Medicare", "Private", "Medicaid", "Government", "Self Pay"], [52, 33, 10, 3, 2], n
            ),
            "language": _pick(rng, ["ENGL", "SPAN", "RUSS", "PTUN"], [90, 5, 3, 2], n),
            "religion": _pick(
                rng,
                ["CATHOLIC", "NOT SPECIFIED", "PROTESTANT QUAKER", "JEWISH", "UNOBTAINABLE"],
                [35, 25, 15, 10, 15],
                n,
            ),
            "marital_status": _pick(rng, ["MARRIED", "SINGLE", "WIDOWED", "DIVORCED"], [48, 27, 15, 10], n),
            "ethnicity": _pick(
                rng,
                ["WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC OR LATINO", "ASIAN", "UNKNOWN/NOT SPECIFIED"],
                [70, 10, 4, 3, 13],
                n,
            ),
            "edregtime": _masked_times(ed_minutes, kind == 0),
            "edouttime": _masked_times(tl.admittime, kind == 0),
            "diagnosis": _pick(
                rng,
                [
                    "SEPSIS",
                    "PNEUMONIA",
                    "CONGESTIVE HEART FAILURE",
                    "CORONARY ARTERY DISEASE",
                    "GASTROINTESTINAL BLEED",
                    "INTRACRANIAL HEMORRHAGE",
                    "ALTERED MENTAL STATUS",
                    "RESPIRATORY FAILURE",
                ],
                [14, 14, 12, 16, 12, 10, 10, 12],
                n,
            ),
            "hospital_expire_flag": tl.label,
            "has_chartevents_data": np.ones(n, dtype=np.int64),
        }
    )


def _icustays(tl: Timeline, rng: np.random.Generator) -> pd.DataFrame:
    n = len(tl.icustay_id)
    carevue = tl.carevue[tl.adm_subject[tl.stay_adm]]
    units = ["MICU", "SICU", "CSRU", "CCU", "TSICU"]
    first_unit = rng.choice(len(units), size=n, p=[0.38, 0.16, 0.17, 0.15, 0.14])
    moved = rng.random(n) < 0.05
    last_unit = np.where(moved, rng.integers(0, len(units), n), first_unit)
    first_ward = rng.integers(1, 60, n)
    los = (tl.outtime - tl.intime) / MINUTES_PER_DAY
    return pd.DataFrame(
        {
            "row_id": np.arange(1, n + 1, dtype=np.int64),
            "subject_id": tl.subject_id[tl.adm_subject[tl.stay_adm]],
            "hadm_id": tl.hadm_id[tl.stay_adm],
            "icustay_id": tl.icustay_id,
            "dbsource": categorical(np.where(carevue, 0, 1), ["carevue", "metavision"]),
            "first_careunit": categorical(first_unit, units),
            "last_careunit": categorical(last_unit, units),
            "first_wardid": first_ward,
            "last_wardid": np.where(moved, rng.integers(1, 60, n), first_ward),
            "intime": to_datetime(tl.intime),
            "outtime": to_datetime(tl.outtime),
            "los": np.round(los, 4),
        }
    )


def _dictionary(name: str, itemids: np.ndarray) -> pd.DataFrame:
    """The rows of a MIMIC-III dictionary table (from the shipped demo) for ``itemids``."""
    source = resource(_DEMO).joinpath(name)
    if not source.is_file():
        raise DataError(f"the dictionary {name} is missing from the shipped demo data; reinstall lstm-adv")
    with source.open("rb") as handle:
        frame = pd.read_csv(handle, compression="gzip")
    frame.columns = [str(c).lower() for c in frame.columns]
    rows = frame[frame["itemid"].isin(itemids)].sort_values("itemid", kind="stable")
    missing = sorted(set(itemids.tolist()) - set(rows["itemid"].tolist()))
    if missing:
        raise DataError(f"the dictionary {name} has no rows for itemid(s) {missing}; reinstall lstm-adv")
    return rows.reset_index(drop=True)
