"""Measurement times and values: chartevents (vitals about hourly) and labevents (labs, blood gases).

Vitals are charted about hourly during every ICU stay (temperature every four hours), for its
first ``vital_hours`` only: the model reads 48 hours, and charting every hour of month-long stays
would only slow the load. Lab panels come every 4-24 hours (more often for sicker patients) from
``lab_lookback_hours`` before to ``lab_hours`` after the first ICU intime; blood gases are sporadic
and drawn mostly for sicker patients. Some series are missing entirely.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from lstm_adv.config import SynthConfig
from lstm_adv.domain.errors import DataError
from lstm_adv.domain.features import FeatureSpec
from lstm_adv.synth.physiology import PhysiologyTable
from lstm_adv.synth.timeline import BoolArray, FloatArray, IntArray, Timeline, rank_within

VITALS = ("heartrate", "sysbp", "diasbp", "tempc", "resprate", "spo2")
LABS = ("albumin", "bun", "creatinine", "sodium", "bicarbonate", "platelet", "glucose", "magnesium")
BLOOD_GASES = ("potassium", "calcium", "ph", "pco2", "lactate")

# Chance that a due measurement is charted, and that a whole series is missing for a stay/admission.
_P_VITAL = np.array([0.97, 0.93, 0.93, 0.9, 0.95, 0.95])
_P_VITAL_SERIES_MISSING = np.array([0.003, 0.01, 0.01, 0.02, 0.01, 0.01])
_P_LAB = np.array([0.25, 0.97, 0.97, 0.97, 0.95, 0.9, 0.95, 0.8])
_P_LAB_SERIES_MISSING = np.array([0.45, 0.02, 0.02, 0.02, 0.02, 0.03, 0.02, 0.05])
_P_GAS = np.array([0.3, 0.45, 0.95, 0.95, 0.55])
_P_CHART_ERROR = 0.0005  # MetaVision rows flagged error = 1 (with a nonsense value)
_P_CHART_ZERO = 0.0003  # CareVue rows charted as 0 (outside every valid range)

# Itemids per charting system. Columns follow VITALS; the arterial line replaces the cuff for BP.
_Items = dict[str, int | tuple[int, int]]
_CAREVUE_ITEMS: _Items = {
    "heartrate": 211,
    "cuff": (455, 8441),
    "manual": (442, 8440),
    "arterial": (51, 8368),
    "arterial2": (6701, 8555),
    "temp_f": 678,
    "temp_c": 676,
    "resp": 618,
    "resp_total": 615,
    "spo2": 646,
}
_METAVISION_ITEMS: _Items = {
    "heartrate": 220045,
    "cuff": (220179, 220180),
    "arterial": (220050, 220051),
    "temp_f": 223761,
    "temp_c": 223762,
    "resp": 220210,
    "resp_total": 224690,
    "spo2": 220277,
}
# As charted in MIMIC-III (MetaVision's degree sign arrives as '?').
VITAL_UNITS = {
    211: "BPM",
    220045: "bpm",
    678: "Deg. F",
    676: "Deg. C",
    223761: "?F",
    223762: "?C",
    618: "BPM",
    615: "BPM",
    220210: "insp/min",
    224690: "insp/min",
    646: "%",
    220277: "%",
}
BP_UNIT = "mmHg"


@attrs.frozen
class Draws:
    """Per-subject baselines and per-admission rhythm shared by all measurements."""

    baseline: FloatArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))  # (S, 19)
    phase: FloatArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))  # (A,)

    @classmethod
    def draw(cls, timeline: Timeline, n_features: int, rng: np.random.Generator) -> Draws:
        """Standard-normal baselines per subject and feature, uniform phases per admission."""
        n_subjects = len(timeline.subject_id)
        return cls(
            baseline=rng.standard_normal((n_subjects, n_features)),
            phase=rng.uniform(0, 2 * np.pi, timeline.n_admissions),
        )


def _sample(
    table: PhysiologyTable,
    draws: Draws,
    timeline: Timeline,
    adm: IntArray,
    feature: IntArray,
    time: IntArray,
    rng: np.random.Generator,
) -> FloatArray:
    hours = (time - timeline.first_intime[adm]) / 60.0
    baseline = draws.baseline[timeline.adm_subject[adm], feature]
    return table.sample(feature, hours, timeline.severity[adm], baseline, draws.phase[adm], rng)


def chart_events(
    timeline: Timeline,
    spec: FeatureSpec,
    table: PhysiologyTable,
    draws: Draws,
    config: SynthConfig,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """CHARTEVENTS rows of the six vital signs. Row order: by stay, then time."""
    tick_stay, tick_k, tick_time = _vital_ticks(timeline, config, rng)
    charted = rng.random((len(tick_stay), len(VITALS))) < _P_VITAL
    charted[:, VITALS.index("tempc")] &= tick_k % 4 == 0
    charted &= rng.random((len(timeline.icustay_id), len(VITALS)))[tick_stay] >= _P_VITAL_SERIES_MISSING
    tick, column = np.nonzero(charted)
    stay = tick_stay[tick]
    adm = timeline.stay_adm[stay]
    time = tick_time[tick]
    feature = np.array([spec.index(name) for name in VITALS], dtype=np.int64)[column]
    values = _sample(table, draws, timeline, adm, feature, time, rng)
    itemid = _vital_itemids(timeline, rng)[stay, column]
    fahrenheit = np.isin(itemid, [i for f in spec.features for i in f.fahrenheit_itemids])
    values = np.where(fahrenheit, values * 1.8 + 32.0, values)
    decimals = table.decimals[feature]
    metavision = ~timeline.carevue[timeline.adm_subject[adm]]
    values, error = _charting_mistakes(values, metavision, rng)
    valuenum = _round(values, decimals)
    return pd.DataFrame(
        {
            "subject_id": timeline.subject_id[timeline.adm_subject[adm]],
            "hadm_id": timeline.hadm_id[adm],
            "icustay_id": timeline.icustay_id[stay],
            "itemid": itemid,
            "charttime": to_datetime(time),
            "value": _text(valuenum, decimals),
            "valuenum": valuenum,
            "valueuom": _units(itemid, VITAL_UNITS, BP_UNIT),
            "warning": np.where(metavision, 0.0, np.nan),
            "error": np.where(metavision, error, np.nan),
        }
    )


def _vital_ticks(timeline: Timeline, config: SynthConfig, rng: np.random.Generator) -> tuple[IntArray, ...]:
    """Hourly charting rounds of every stay: (stay index, round number, time in minutes)."""
    n_stays = len(timeline.icustay_id)
    horizon = np.minimum(timeline.outtime - timeline.intime, round(config.vital_hours * 60))
    offset = rng.integers(0, 30, n_stays)
    n_ticks = np.maximum(0, (horizon - offset - 1) // 60 + 1)
    stay = np.repeat(np.arange(n_stays, dtype=np.int64), n_ticks)
    k = rank_within(stay)
    jitter = rng.integers(-5, 6, len(stay))
    start = timeline.intime[stay]
    time = np.clip(start + offset[stay] + 60 * k + jitter, start, start + horizon[stay] - 1)
    return stay, k, time


def _vital_itemids(timeline: Timeline, rng: np.random.Generator) -> IntArray:
    """The itemid each stay charts each vital under. Shape: (I, 6)."""
    n = len(timeline.icustay_id)
    carevue = timeline.carevue[timeline.adm_subject[timeline.stay_adm]]
    arterial = rng.random(n) < 1.0 / (1.0 + np.exp(0.5 - 0.8 * timeline.severity[timeline.stay_adm]))
    draw = rng.random((n, 3))
    cv, mv = (
        _system_itemids(_CAREVUE_ITEMS, arterial, draw, 0.6),
        _system_itemids(_METAVISION_ITEMS, arterial, draw, 0.95),
    )
    return np.where(carevue[:, None], cv, mv)


def _system_itemids(items: _Items, arterial: BoolArray, draw: FloatArray, p_fahrenheit: float) -> IntArray:
    n = len(arterial)
    cuff = np.array(items["cuff"])
    line = np.array(items["arterial"])
    if "arterial2" in items:  # CareVue's second arterial line and manual cuff readings are rare
        line = np.where((draw[:, 0] < 0.03)[:, None], np.array(items["arterial2"]), line)
        cuff = np.where((draw[:, 0] < 0.02)[:, None], np.array(items["manual"]), cuff)
    else:
        line, cuff = np.broadcast_to(line, (n, 2)), np.broadcast_to(cuff, (n, 2))
    bp = np.where(arterial[:, None], line, cuff)
    temp = np.where(draw[:, 1] < p_fahrenheit, items["temp_f"], items["temp_c"])
    resp = np.where(draw[:, 2] < 0.87, items["resp"], items["resp_total"])
    columns = [np.full(n, items["heartrate"]), bp[:, 0], bp[:, 1], temp, resp, np.full(n, items["spo2"])]
    return np.stack(columns, axis=1).astype(np.int64)


def _charting_mistakes(
    values: FloatArray, metavision: BoolArray, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """A few nonsense values: flagged error = 1 in MetaVision, charted as 0 in CareVue (no error column)."""
    draw = rng.random(len(values))
    error = metavision & (draw < _P_CHART_ERROR)
    zero = ~metavision & (draw < _P_CHART_ZERO)
    values = np.where(error, values * 10.0, np.where(zero, 0.0, values))
    return values, error.astype(np.float64)


def lab_events(
    timeline: Timeline,
    spec: FeatureSpec,
    table: PhysiologyTable,
    draws: Draws,
    config: SynthConfig,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """LABEVENTS rows of the 13 labs and blood gases. Row order: labs, then blood gases; by admission and time."""
    start, end = _lab_window(timeline, config, config.lab_lookback_hours)
    labs = _panel_rows(timeline, spec, LABS, _lab_panels(timeline, start, end, rng), _P_LAB, _P_LAB_SERIES_MISSING, rng)
    gas_start, _ = _lab_window(timeline, config, 6.0)
    gases = _panel_rows(
        timeline, spec, BLOOD_GASES, _gas_panels(timeline, gas_start, end, rng), _P_GAS, np.zeros(len(BLOOD_GASES)), rng
    )
    adm, feature, time = (np.concatenate([a, b]) for a, b in zip(labs, gases, strict=True))
    valuenum = _round(_sample(table, draws, timeline, adm, feature, time, rng), table.decimals[feature])
    abnormal = (valuenum < table.normal_low[feature]) | (valuenum > table.normal_high[feature])
    unit_names = sorted({f.unit for f in spec.features})
    unit_codes = np.array([unit_names.index(f.unit) for f in spec.features], dtype=np.int64)
    itemids = np.array([f.itemids[0] for f in spec.features], dtype=np.int64)
    return pd.DataFrame(
        {
            "subject_id": timeline.subject_id[timeline.adm_subject[adm]],
            "hadm_id": timeline.hadm_id[adm],
            "itemid": itemids[feature],
            "charttime": to_datetime(time),
            "value": _text(valuenum, table.decimals[feature]),
            "valuenum": valuenum,
            "valueuom": categorical(unit_codes[feature], unit_names),
            "flag": categorical(np.where(abnormal, 0, -1), ["abnormal"]),
        }
    )


def _lab_window(timeline: Timeline, config: SynthConfig, lookback_hours: float) -> tuple[IntArray, IntArray]:
    start = np.maximum(timeline.admittime, timeline.first_intime - round(lookback_hours * 60))
    end = np.minimum(timeline.dischtime, timeline.first_intime + round(config.lab_hours * 60))
    return start, end


def _lab_panels(timeline: Timeline, start: IntArray, end: IntArray, rng: np.random.Generator) -> tuple[IntArray, ...]:
    """Routine panels every 4-24 h (sicker: more often). Returns (admission index, time)."""
    n = timeline.n_admissions
    gap = np.clip(600 * np.exp(-0.3 * timeline.severity) * rng.uniform(0.7, 1.4, n), 240, 1440)
    first = start + rng.random(n) * gap
    count = np.where(end > first, np.floor((end - 1 - first) / gap) + 1, 0).astype(np.int64)
    adm = np.repeat(np.arange(n, dtype=np.int64), count)
    k = rank_within(adm)
    time = first[adm] + k * gap[adm] + rng.normal(0, 20, len(adm))
    return adm, np.clip(np.round(time).astype(np.int64), start[adm], end[adm] - 1)


def _gas_panels(timeline: Timeline, start: IntArray, end: IntArray, rng: np.random.Generator) -> tuple[IntArray, ...]:
    """Sporadic blood gases, mostly for sicker patients: a Poisson number at uniform times."""
    n = timeline.n_admissions
    severity = timeline.severity
    tested = rng.random(n) < 1.0 / (1.0 + np.exp(0.4 - 1.3 * severity))
    rate_per_hour = np.exp(-2.6 + 0.6 * severity)
    count = rng.poisson(rate_per_hour * np.maximum(end - start, 0) / 60.0) * tested
    adm = np.repeat(np.arange(n, dtype=np.int64), count)
    time = start[adm] + np.floor(rng.random(len(adm)) * (end[adm] - start[adm])).astype(np.int64)
    order = np.lexsort((time, adm))
    return adm[order], time[order]


def _panel_rows(
    timeline: Timeline,
    spec: FeatureSpec,
    names: tuple[str, ...],
    panels: tuple[IntArray, ...],
    p_item: FloatArray,
    p_missing: FloatArray,
    rng: np.random.Generator,
) -> tuple[IntArray, IntArray, IntArray]:
    """Expand panels into (admission index, feature model index, time) of the items they report."""
    panel_adm, panel_time = panels
    reported = rng.random((len(panel_adm), len(names))) < p_item
    reported &= rng.random((timeline.n_admissions, len(names)))[panel_adm] >= p_missing
    panel, column = np.nonzero(reported)
    feature = np.array([spec.index(name) for name in names], dtype=np.int64)[column]
    return panel_adm[panel], feature, panel_time[panel]


def check_spec(spec: FeatureSpec) -> None:
    """The spec must have the features the generator charts, under the itemids it uses."""
    if set(spec.names) != set(VITALS + LABS + BLOOD_GASES):
        raise DataError(
            "the synthetic generator charts exactly the features "
            f"{', '.join(VITALS + LABS + BLOOD_GASES)}; the feature spec has {', '.join(spec.names)}"
        )
    known = {i for f in spec.features for i in f.all_itemids}
    used = set(VITAL_UNITS) | {i for items in (_CAREVUE_ITEMS, _METAVISION_ITEMS) for i in _flat(items.values())}
    if not used <= known:
        raise DataError(
            f"the synthetic generator charts itemid(s) {sorted(used - known)} that the feature spec does not list"
        )


def _flat(values: Iterable[int | tuple[int, int]]) -> list[int]:
    return [i for value in values for i in (value if isinstance(value, tuple) else (value,))]


def to_datetime(minutes: IntArray) -> NDArray[np.datetime64]:
    """Integer minutes since 1970 as ``datetime64[s]``."""
    return minutes.astype("datetime64[m]").astype("datetime64[s]")


def _round(values: FloatArray, decimals: IntArray) -> FloatArray:
    factor = 10.0 ** decimals.astype(np.float64)
    return np.rint(values * factor) / factor


def _text(values: FloatArray, decimals: IntArray) -> pd.Categorical:
    """The ``value`` column: ``valuenum`` printed with the feature's decimals ("7.39", "94")."""
    key = np.rint(values * 10.0 ** decimals.astype(np.float64)).astype(np.int64) * 4 + decimals
    # A dense table of the (few thousand) distinct printed values instead of sorting all rows.
    present = np.zeros(int(key.max(initial=0)) + 1, dtype=bool)
    present[key] = True
    unique = np.flatnonzero(present)
    code = np.cumsum(present) - 1
    labels = [f"{(u >> 2) / 10 ** (u & 3):.{u & 3}f}" for u in unique.tolist()]
    return categorical(code[key], labels)


def _units(itemid: IntArray, units: dict[int, str], default: str) -> pd.Categorical:
    names = sorted(set(units.values()) | {default})
    lookup = np.full(int(itemid.max(initial=0)) + 1, names.index(default), dtype=np.int64)
    for item, unit in units.items():
        if item < len(lookup):
            lookup[item] = names.index(unit)
    return categorical(lookup[itemid], names)


def categorical(codes: NDArray[np.integer[Any]], names: Sequence[str]) -> pd.Categorical:
    """A string column stored as codes into ``names`` (-1 = missing); compact and fast to write."""
    return pd.Categorical.from_codes(codes.astype(np.int64), categories=pd.Index(list(names), dtype=object))
