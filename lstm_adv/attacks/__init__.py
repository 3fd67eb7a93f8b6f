"""Adversarial attacks on the mortality model: a small base class and one attack per module."""

from lstm_adv.attacks.base import Attack, BatchOutcome, SuccessTracker, cell_mask, margin
from lstm_adv.attacks.l1 import METHODS, L1Attack, L1Settings, prox_l1_box, soft_threshold
from lstm_adv.attacks.pgd import ATTACK_NORMS, NORMS, PgdAttack, PgdSettings

__all__ = [
    "ATTACK_NORMS",
    "METHODS",
    "NORMS",
    "Attack",
    "BatchOutcome",
    "L1Attack",
    "L1Settings",
    "PgdAttack",
    "PgdSettings",
    "SuccessTracker",
    "cell_mask",
    "margin",
    "prox_l1_box",
    "soft_threshold",
]
