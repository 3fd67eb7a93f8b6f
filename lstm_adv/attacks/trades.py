"""The inner attack and the loss of TRADES (Zhang et al. 2019), for adaptive adversarial training.

TRADES trains on ``CE(z(x), y) + β · KL(p(x) ‖ p(x'))``: the clean sample's cross-entropy plus β
times the divergence of the model's prediction at x' from its prediction at x, where x' maximizes
that divergence within the ε-ball (L∞ or L2) and the box. :class:`TradesAttack` finds x' with the
PGD of :class:`~lstm_adv.attacks.pgd.PgdAttack` (same steps, projections, masks and eval mode) on
the KL loss instead of the label's cross-entropy; its start is always random (at x' = x the KL and
its gradient are 0). :func:`trades_loss` is the outer loss on a training batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import torch
from torch import Tensor, nn

from lstm_adv.attacks.base import SuccessTracker
from lstm_adv.attacks.pgd import PgdAttack, PgdSettings
from lstm_adv.attacks.threats import BatchThreat


def kl_per_sample(reference_log_p: Tensor, logits: Tensor) -> Tensor:
    """KL(p_ref ‖ softmax(logits)) per sample. Shape: (B, 2), (B, 2) → (B,)."""
    log_q = torch.log_softmax(logits.float(), dim=1)
    return (reference_log_p.exp() * (reference_log_p - log_q)).sum(dim=1)


class TradesAttack(PgdAttack):
    """PGD that maximizes KL(p(x) ‖ p(x + δ)) from the model's own clean prediction (untargeted; labels unused)."""

    settings_type: ClassVar[type[PgdSettings]] = PgdSettings
    _reference: Tensor | None = None

    def __init__(self, model: nn.Module, settings: PgdSettings | None = None, **options: Any) -> None:
        super().__init__(model, settings, **options)
        # at δ = 0 the KL loss and its gradient are 0: the start is always random
        self.settings = attrs.evolve(self.settings, random_start=True)

    def _descend(self, x: Tensor, y: Tensor, threat: BatchThreat, tracker: SuccessTracker | None = None) -> Tensor:
        """The clean prediction of this batch is the reference of the KL loss; then PGD's iterations."""
        with torch.no_grad():
            self._reference = torch.log_softmax(self._forward(x).float(), dim=1)
        try:
            return super()._descend(x, y, threat, tracker)
        finally:
            self._reference = None

    def _loss(self, y: Tensor) -> Callable[[Tensor], Tensor]:
        reference = self._reference
        if reference is None:  # only _descend sets it
            raise RuntimeError("TradesAttack's loss needs the batch's clean prediction")
        return lambda logits: kl_per_sample(reference, logits)


def trades_loss(model: nn.Module, criterion: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """``criterion(z(x), y) + β · mean KL(p(x) ‖ p(x_adv))`` in the model's current (training) mode.

    Clean and adversarial inputs go through one forward pass. Shape: x, x_adv (B, 48, 19), y (B,) → ().
    """
    logits = model(torch.cat([x, x_adv]))
    clean, adversarial = logits[: len(x)], logits[len(x) :]
    robust = kl_per_sample(torch.log_softmax(clean.float(), dim=1), adversarial).mean()
    natural: Tensor = criterion(clean, y)
    return natural + beta * robust
