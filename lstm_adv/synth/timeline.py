"""Who the synthetic patients are and when things happen to them: subjects, admissions, ICU stays.

Everything is drawn as whole arrays (one element per subject, admission or stay); times are
integer minutes since 1970-01-01, in MIMIC-III's shifted years 2100-2200.
"""

from __future__ import annotations

import attrs
import numpy as np
from numpy.typing import NDArray

from lstm_adv.config import SynthConfig

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

MINUTES_PER_DAY = 24 * 60
MINUTES_PER_YEAR = 365.2425 * MINUTES_PER_DAY
_YEAR_2100 = int(np.datetime64("2100-01-01T00:00", "m").astype(np.int64))

# Shares drawn to resemble MIMIC-III (ICU admissions of adults).
_P_NEW_SUBJECT = 0.82  # a survivor's next admission belongs to another patient
_P_SHIFTED_AGE = 0.05  # patients older than 89, whose dob MIMIC moves ~300 years back
_P_MINOR = 0.01  # under 18 (dropped by the cohort's age rule)
_P_CAREVUE = 0.55  # 2001-2008 patients charted in CareVue, later ones in MetaVision
_P_SHORT_ADMISSION = 0.015  # hospital stays under one day
_STAYS_PER_ADMISSION = np.array([1, 2, 3])
_P_STAYS_PER_ADMISSION = np.array([0.89, 0.09, 0.02])
_P_DEATH_IN_ICU = 0.75


@attrs.frozen(eq=False)
class Timeline:
    """Ids and times of every subject, admission and ICU stay. Shapes: (S,), (A,), (I,).

    An intermediate value of the generator (compared by identity); times in minutes since 1970.
    """

    # per subject
    subject_id: IntArray
    carevue: BoolArray
    male: BoolArray
    dob: IntArray
    # per admission
    hadm_id: IntArray
    adm_subject: IntArray  # index into subjects
    severity: FloatArray
    death_probability: FloatArray
    label: IntArray
    admittime: IntArray
    dischtime: IntArray
    first_intime: IntArray
    # per ICU stay
    icustay_id: IntArray
    stay_adm: IntArray  # index into admissions
    intime: IntArray
    outtime: IntArray

    @property
    def n_admissions(self) -> int:
        """Number of admissions."""
        return len(self.hadm_id)


def intercept_for(mortality: float, effect: float) -> float:
    """Intercept ``a`` such that E[sigmoid(a + effect * s)] = mortality for s ~ N(0, 1)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(96)
    weights = weights / weights.sum()
    low, high = -40.0, 40.0
    for _ in range(200):  # bisection: the mean is increasing in a
        middle = (low + high) / 2
        mean = float(np.sum(weights * _sigmoid(middle + effect * nodes)))
        low, high = (middle, high) if mean < mortality else (low, middle)
    return (low + high) / 2


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


def draw_timeline(n_admissions: int, rng: np.random.Generator, config: SynthConfig) -> Timeline:
    """Draw ``n_admissions`` admissions with their patients and ICU stays."""
    severity = rng.standard_normal(n_admissions)
    probability = _sigmoid(intercept_for(config.mortality, config.severity_effect) + config.severity_effect * severity)
    label = (rng.random(n_admissions) < probability).astype(np.int64)
    adm_subject = _group_into_subjects(label, rng)
    n_subjects = int(adm_subject[-1]) + 1
    rank = rank_within(adm_subject)
    first_admit, carevue = _subject_epochs(n_subjects, rng)
    stay_adm, intime, outtime, dischtime = _hospital_course(severity, label, rng)
    admittime = first_admit[adm_subject] + _readmission_offsets(dischtime, rank, adm_subject, rng)
    intime, outtime, dischtime = intime + admittime[stay_adm], outtime + admittime[stay_adm], dischtime + admittime
    last_admit = admittime[np.r_[np.flatnonzero(np.diff(adm_subject)), n_admissions - 1]]
    dob = _dates_of_birth(first_admit, last_admit, rng)
    first_intime = intime[np.r_[0, np.flatnonzero(np.diff(stay_adm)) + 1]]
    return Timeline(
        subject_id=np.arange(n_subjects, dtype=np.int64) + 10_001,
        carevue=carevue,
        male=rng.random(n_subjects) < 0.56,
        dob=dob,
        hadm_id=np.arange(n_admissions, dtype=np.int64) + 100_001,
        adm_subject=adm_subject,
        severity=severity,
        death_probability=probability,
        label=label,
        admittime=admittime,
        dischtime=dischtime,
        first_intime=first_intime,
        icustay_id=np.arange(len(stay_adm), dtype=np.int64) + 200_001,
        stay_adm=stay_adm,
        intime=intime,
        outtime=outtime,
    )


def _group_into_subjects(label: IntArray, rng: np.random.Generator) -> IntArray:
    """Subject index of each admission; a death is always its patient's last admission."""
    ends_subject = (label == 1) | (rng.random(len(label)) < _P_NEW_SUBJECT)
    return np.concatenate([[0], np.cumsum(ends_subject[:-1])]).astype(np.int64)


def rank_within(groups: IntArray) -> IntArray:
    """0, 1, 2, ... within each run of equal, sorted group indices."""
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1].astype(np.int64)
    sizes = np.diff(np.r_[starts, len(groups)])
    positions: IntArray = np.arange(len(groups), dtype=np.int64) - np.repeat(starts, sizes)
    return positions


def _group_cumsum(values: IntArray, groups: IntArray) -> IntArray:
    """Cumulative sum of ``values`` restarting at each new (sorted) group."""
    total = np.cumsum(values)
    starts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1]
    sizes = np.diff(np.r_[starts, len(groups)])
    before = np.repeat(total[starts] - values[starts], sizes)
    return total - before


def _subject_epochs(n_subjects: int, rng: np.random.Generator) -> tuple[IntArray, BoolArray]:
    """First admission time and charting system (CareVue before MetaVision) of each subject."""
    carevue = rng.random(n_subjects) < _P_CAREVUE
    # Each patient gets a random date shift (as MIMIC does); the era decides the years after it.
    shift_years = rng.integers(0, 88, n_subjects)
    era_years = np.where(carevue, rng.uniform(0, 7, n_subjects), rng.uniform(7, 11.5, n_subjects))
    years = shift_years + era_years
    return (_YEAR_2100 + np.round(years * MINUTES_PER_YEAR)).astype(np.int64), carevue


def _readmission_offsets(length: IntArray, rank: IntArray, adm_subject: IntArray, rng: np.random.Generator) -> IntArray:
    """Minutes from a subject's first admission to each of its admissions (0 for the first).

    A readmission starts 10 days to years after the previous discharge (``length`` is each
    admission's duration), so one patient's admissions never overlap.
    """
    gaps = 10 * MINUTES_PER_DAY + rng.lognormal(np.log(150 * MINUTES_PER_DAY), 1.0, len(rank))
    previous = np.r_[0, length[:-1]]
    steps = np.where(rank == 0, 0, previous + np.round(gaps)).astype(np.int64)
    return _group_cumsum(steps, adm_subject)


def _dates_of_birth(first_admit: IntArray, last_admit: IntArray, rng: np.random.Generator) -> IntArray:
    """Dob at midnight; realistic ages, a few minors, and MIMIC's shift for the old.

    A patient older than 89 at any admission gets a dob that makes them 300 years old at the
    first admission (as in MIMIC-III), so no age between 90 and 299 ever appears.
    """
    n = len(first_admit)
    age = np.clip(rng.normal(64.0, 16.0, n), 18.2, 86.0)
    kind = rng.random(n)
    minor = (kind >= _P_SHIFTED_AGE) & (kind < _P_SHIFTED_AGE + _P_MINOR)
    age = np.where(minor, rng.uniform(15.0, 17.8, n), age)
    oldest = age + (last_admit - first_admit) / MINUTES_PER_YEAR
    shifted = (kind < _P_SHIFTED_AGE) | (oldest >= 89.5)
    age = np.where(shifted, 300.0 + rng.uniform(0.0, 0.9, n), age)
    dob = first_admit - np.round(age * MINUTES_PER_YEAR).astype(np.int64)
    return dob - dob % MINUTES_PER_DAY


def _hospital_course(
    severity: FloatArray, label: IntArray, rng: np.random.Generator
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """ICU stays (admission index, intime, outtime) and each admission's discharge, in minutes after admittime.

    ICU length of stay depends on severity but not on the realized outcome, so the data carry
    no information about the label beyond the true death probability: a death happens at the
    end of the admission's last ICU stay (or on the ward after it).
    """
    n = len(severity)
    short = rng.random(n) < _P_SHORT_ADMISSION
    n_stays = np.where(short, 1, rng.choice(_STAYS_PER_ADMISSION, size=n, p=_P_STAYS_PER_ADMISSION))
    stay_adm = np.repeat(np.arange(n, dtype=np.int64), n_stays)
    stay_rank = rank_within(stay_adm)
    los = _icu_minutes(severity[stay_adm], short[stay_adm], rng)
    lead = np.where(stay_rank == 0, _pre_icu_minutes(short, rng)[stay_adm], _between_stays_minutes(len(los), rng))
    intime = _group_cumsum(lead + los, stay_adm) - los
    outtime = intime + los
    last_out = outtime[np.r_[np.flatnonzero(np.diff(stay_adm)), len(stay_adm) - 1]]
    return stay_adm, intime, outtime, last_out + _ward_minutes(label, short, rng)


def _icu_minutes(severity: FloatArray, short: BoolArray, rng: np.random.Generator) -> IntArray:
    days = np.clip(rng.lognormal(np.log(2.2) + 0.12 * severity, 0.8), 0.08, 60.0)
    days = np.where(short, rng.uniform(0.1, 0.8, len(days)), days)
    return np.round(days * MINUTES_PER_DAY).astype(np.int64)


def _pre_icu_minutes(short: BoolArray, rng: np.random.Generator) -> IntArray:
    n = len(short)
    from_ed = rng.uniform(0, 180, n)
    from_ward = np.clip(rng.lognormal(np.log(20 * 60), 1.0, n), 0, 14 * MINUTES_PER_DAY)
    minutes = np.where(rng.random(n) < 0.45, from_ed, from_ward)
    return np.round(np.where(short, rng.uniform(0, 120, n), minutes)).astype(np.int64)


def _between_stays_minutes(n: int, rng: np.random.Generator) -> IntArray:
    return np.round(240 + rng.lognormal(np.log(2 * MINUTES_PER_DAY), 0.8, n)).astype(np.int64)


def _ward_minutes(label: IntArray, short: BoolArray, rng: np.random.Generator) -> IntArray:
    n = len(label)
    survivor = np.clip(rng.lognormal(np.log(3 * MINUTES_PER_DAY), 0.8, n), 120, 60 * MINUTES_PER_DAY)
    died_on_ward = np.clip(rng.lognormal(np.log(2 * MINUTES_PER_DAY), 1.0, n), 60, 30 * MINUTES_PER_DAY)
    died = np.where(rng.random(n) < _P_DEATH_IN_ICU, rng.uniform(0, 60, n), died_on_ward)
    minutes = np.where(label == 1, died, survivor)
    return np.round(np.where(short, rng.uniform(0, 240, n), minutes)).astype(np.int64)
