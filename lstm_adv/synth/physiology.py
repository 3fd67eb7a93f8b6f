"""How each of the 19 model inputs behaves: normal values, spread, noise and response to severity.

A measurement of feature f for admission a at t hours after its first ICU intime is

    z = load_f · s_a · (1 + trend · t / 24) + √(1 − load_f²) · b_{subject, f} + circadian + noise_f · ε
    value = center_f + scale_f · z          (or center_f · exp(scale_f · z) for skewed labs)

where s_a is the admission's latent severity (the same one that sets its death probability) and
b the patient's own baseline. The sick worsen over time and the well improve; the data depend on
the outcome only through s_a, so the true death probability is the best possible predictor.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from lstm_adv.domain.errors import DataError
from lstm_adv.domain.features import FeatureSpec

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

TREND_PER_DAY = 0.25


@attrs.frozen
class Physiology:
    """The generative parameters of one feature (clinical units)."""

    name: str
    center: float
    scale: float
    noise: float  # within-patient noise, in units of ``scale``
    load: float = attrs.field(validator=[attrs.validators.ge(-1.0), attrs.validators.le(1.0)])
    log: bool
    decimals: int
    low: float  # physically plausible clip
    high: float
    normal_low: float  # reference range (labevents' "abnormal" flag)
    normal_high: float
    circadian: float = 0.0


def _p(name: str, *values: Any) -> Physiology:
    return Physiology(name, *values)


PHYSIOLOGY: tuple[Physiology, ...] = (
    # name, center, scale, noise, load, log, decimals, low, high, normal_low, normal_high[, circadian]
    _p("potassium", 4.1, 0.45, 0.5, 0.25, False, 1, 1.5, 9.0, 3.3, 5.1),
    _p("calcium", 1.12, 0.08, 0.5, -0.35, False, 2, 0.5, 2.0, 1.12, 1.32),
    _p("ph", 7.39, 0.06, 0.5, -0.55, False, 2, 6.8, 7.8, 7.35, 7.45),
    _p("pco2", 41.0, 8.0, 0.5, 0.2, False, 0, 15.0, 120.0, 35.0, 45.0),
    _p("lactate", 1.6, 0.45, 0.35, 0.65, True, 1, 0.3, 25.0, 0.5, 2.0),
    _p("albumin", 3.1, 0.55, 0.3, -0.5, False, 1, 1.0, 5.5, 3.4, 5.4),
    _p("bun", 21.0, 0.6, 0.12, 0.5, True, 0, 2.0, 250.0, 6.0, 20.0),
    _p("creatinine", 1.0, 0.55, 0.12, 0.45, True, 1, 0.2, 15.0, 0.5, 1.2),
    _p("sodium", 139.0, 4.5, 0.35, 0.1, False, 0, 115.0, 170.0, 133.0, 145.0),
    _p("bicarbonate", 24.0, 4.0, 0.35, -0.5, False, 0, 5.0, 50.0, 22.0, 32.0),
    _p("platelet", 210.0, 0.5, 0.12, -0.35, True, 0, 5.0, 1200.0, 150.0, 440.0),
    _p("glucose", 130.0, 0.3, 0.5, 0.3, True, 0, 30.0, 900.0, 70.0, 105.0),
    _p("magnesium", 2.0, 0.25, 0.6, 0.1, False, 1, 0.8, 4.5, 1.6, 2.6),
    _p("heartrate", 87.0, 15.0, 0.45, 0.45, False, 0, 30.0, 220.0, 60.0, 100.0, 0.15),
    _p("sysbp", 120.0, 17.0, 0.5, -0.45, False, 0, 50.0, 230.0, 90.0, 140.0, 0.1),
    _p("diasbp", 61.0, 11.0, 0.55, -0.35, False, 0, 20.0, 150.0, 60.0, 90.0),
    _p("tempc", 37.0, 0.55, 0.45, 0.25, False, 1, 33.0, 41.5, 36.0, 38.0, 0.2),
    _p("resprate", 19.0, 4.5, 0.55, 0.45, False, 0, 5.0, 50.0, 12.0, 20.0),
    _p("spo2", 97.0, 1.8, 0.6, -0.4, False, 0, 70.0, 100.0, 95.0, 100.0),
)


@attrs.frozen
class PhysiologyTable:
    """:data:`PHYSIOLOGY` as arrays in the feature spec's model order. Shapes: (19,)."""

    names: tuple[str, ...]
    center: FloatArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    scale: FloatArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    noise: FloatArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    load: FloatArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    log: NDArray[np.bool_] = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    decimals: IntArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    low: FloatArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    high: FloatArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    normal_low: FloatArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    normal_high: FloatArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    circadian: FloatArray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))

    @classmethod
    def for_spec(cls, spec: FeatureSpec) -> PhysiologyTable:
        """The parameters of ``spec``'s features, in its order; a feature without parameters is a DataError."""
        known = {p.name: p for p in PHYSIOLOGY}
        missing = [name for name in spec.names if name not in known]
        if missing:
            raise DataError(
                f"the synthetic generator has no physiology for feature(s) {', '.join(missing)}; "
                f"it knows {', '.join(known)}; add them to lstm_adv/synth/physiology.py"
            )
        rows = [known[name] for name in spec.names]

        def column(field: str, dtype: type) -> NDArray[Any]:
            return np.array([getattr(row, field) for row in rows], dtype=dtype)

        floats = ("center", "scale", "noise", "load", "low", "high", "normal_low", "normal_high", "circadian")
        return cls(
            names=spec.names,
            log=column("log", np.bool_),
            decimals=column("decimals", np.int64),
            **{name: column(name, np.float64) for name in floats},
        )

    def sample(
        self,
        feature: IntArray,
        hours: FloatArray,
        severity: FloatArray,
        baseline: FloatArray,
        phase: FloatArray,
        rng: np.random.Generator,
    ) -> FloatArray:
        """Values (clinical units, not yet rounded) of measurements of ``feature`` (model index).

        All arguments are per measurement: ``hours`` since the admission's first ICU intime,
        the admission's ``severity``, the patient's ``baseline`` for that feature and the
        admission's circadian ``phase`` (radians). Shape: (M,) each.
        """
        load = self.load[feature]
        drift = severity * (1.0 + TREND_PER_DAY * hours / 24.0)
        z = load * drift + np.sqrt(1.0 - load**2) * baseline
        z += self.circadian[feature] * np.sin(2 * np.pi * hours / 24.0 + phase)
        z += self.noise[feature] * rng.standard_normal(len(feature))
        scale, center = self.scale[feature], self.center[feature]
        values = center + scale * z
        skewed = self.log[feature]
        values[skewed] = center[skewed] * np.exp(scale[skewed] * z[skewed])
        return np.clip(values, self.low[feature], self.high[feature])
