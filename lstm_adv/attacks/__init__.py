"""Adversarial attacks on the mortality model: a small base class and one attack per module."""

from lstm_adv.attacks.base import Attack, BatchOutcome, cell_mask
from lstm_adv.attacks.l1 import METHODS, L1Attack, L1Settings, prox_l1_box, soft_threshold

__all__ = ["METHODS", "Attack", "BatchOutcome", "L1Attack", "L1Settings", "cell_mask", "prox_l1_box", "soft_threshold"]
