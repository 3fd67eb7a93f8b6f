"""The model's decision rule: when a sample is predicted to die, and so what counts as a flip.

A model run stores one rule and every stage reads it from there: ``threshold`` (t chosen on the
validation split, max F1) or ``argmax`` (t = 0.5, Sun et al.). The model predicts death (class 1)
when P(death) = softmax(z)₁ ≥ t, which on the logits is ``z₁ − z₀ ≥ log(t / (1 − t))`` — the
:attr:`DecisionRule.boundary`. An attack flips a sample when its decision at the rule changes.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import attrs
import numpy as np
import numpy.typing as npt

from lstm_adv.domain.errors import ValidationError

RuleName = Literal["threshold", "argmax"]
RULES: tuple[str, ...] = get_args(RuleName)


def _check_threshold(instance: DecisionRule, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise ValidationError(f"DecisionRule.threshold must lie strictly between 0 and 1, got {value!r}")


@attrs.frozen
class DecisionRule:
    """Predict death when P(death) ≥ ``threshold``; ``rule`` says how the threshold was chosen."""

    rule: str = attrs.field(validator=attrs.validators.in_(RULES))
    threshold: float = attrs.field(converter=float, validator=_check_threshold)

    def __attrs_post_init__(self) -> None:
        if self.rule == "argmax" and self.threshold != 0.5:
            raise ValidationError(f"DecisionRule: the argmax rule has threshold 0.5, got {self.threshold}")

    @classmethod
    def argmax(cls) -> DecisionRule:
        """Sun et al.'s rule: the class with the larger logit (t = 0.5)."""
        return cls("argmax", 0.5)

    @property
    def boundary(self) -> float:
        """The logit difference z₁ − z₀ at which the decision changes: log(t / (1 − t))."""
        return math.log(self.threshold / (1.0 - self.threshold))

    def predict(self, logits: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The decision (0 survived, 1 died) for logits of shape (..., 2)."""
        z = np.asarray(logits, dtype=np.float64)
        decided: npt.NDArray[np.int64] = (z[..., 1] - z[..., 0] >= self.boundary).astype(np.int64)
        return decided

    def predict_probability(self, p_death: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The decision for probabilities of death. Shape: as ``p_death``."""
        decided: npt.NDArray[np.int64] = (np.asarray(p_death, dtype=np.float64) >= self.threshold).astype(np.int64)
        return decided

    def describe(self) -> str:
        """The rule in words, as reports and `runs show` state it."""
        if self.rule == "argmax":
            return "argmax (predict death when its logit is the larger; t = 0.5)"
        return f"threshold t = {self.threshold:.3f} on P(death), chosen on the validation split (max F1)"
