"""Adversarial attacks on the mortality model: a small base class and one attack per module."""

from lstm_adv.attacks.base import Attack, BatchOutcome, SuccessTracker, cell_mask, margin
from lstm_adv.attacks.l1 import METHODS, L1Attack, L1Settings, prox_l1_box, soft_threshold
from lstm_adv.attacks.pgd import ATTACK_NORMS, NORMS, PgdAttack, PgdSettings
from lstm_adv.attacks.record import FillPlan, fill_record
from lstm_adv.attacks.threats import BatchThreat, CellThreat, RecordThreat, SampleInputs, Threat

__all__ = [
    "ATTACK_NORMS",
    "METHODS",
    "NORMS",
    "Attack",
    "BatchOutcome",
    "BatchThreat",
    "CellThreat",
    "FillPlan",
    "L1Attack",
    "L1Settings",
    "PgdAttack",
    "PgdSettings",
    "RecordThreat",
    "SampleInputs",
    "SuccessTracker",
    "Threat",
    "cell_mask",
    "fill_record",
    "margin",
    "prox_l1_box",
    "soft_threshold",
]
