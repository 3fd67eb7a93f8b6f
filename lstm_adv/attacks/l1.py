"""The sparse L1 attack (Sun et al. 2018; elastic-net / EAD family) as proximal gradient descent.

Per sample, with c the class the model predicts at x and z the logits, minimize

    max(z_c(x+δ) − z_¬c(x+δ), −κ) + λ·Σ_ij |δ_ij|    subject to x + δ ∈ [0, 1]^(48×19)

One iteration: a gradient step on the margin term only, then the prox of the rest, which for these
separable terms is soft-thresholding by step·λ followed by projection to the box (masked cells have
the box [0, 0]). Methods: ``ista`` (plain step), ``fista`` (Nesterov extrapolation, gradient at the
extrapolated point, projected to the box) and ``adam`` (the Adam direction on the smooth part, then
the same prox).

Which iterate is checked, and what it costs. Every iterate δ_1 … δ_K is checked for success with the
logits at x + δ_k itself. ``ista`` and ``adam`` need the forward at δ_k anyway for the next gradient,
so the check reuses it (logits of δ_k are read at the start of iteration k+1) and one extra forward
after the loop checks δ_K: K forward+backward passes and one forward in all. ``fista`` takes its
gradient at the extrapolated point, so it pays one gradient-free forward per iteration to check δ_k.

Nothing leaves the device inside the loop: success and the first/best bookkeeping are ``torch.where``
updates; results are copied to the host once per batch by the base class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import attrs
import torch
from torch import Tensor

from lstm_adv.attacks.base import Attack, BatchOutcome, SuccessTracker, margin
from lstm_adv.config import L1_METHODS
from lstm_adv.domain import validators as v

METHODS = L1_METHODS


@attrs.frozen
class L1Settings:
    """Settings of the sparse L1 attack (κ, λ, step size, method, iteration budget, Adam constants)."""

    kappa: float = attrs.field(default=0.0, validator=v.number(low=0))
    lam: float = attrs.field(default=1e-3, validator=v.number(low=0))
    step_size: float = attrs.field(default=1e-2, validator=v.number(low=0, low_strict=True))
    method: str = attrs.field(default="ista", validator=v.one_of(METHODS))
    max_iterations: int = attrs.field(default=1000, validator=v.at_least(1))
    adam_beta1: float = attrs.field(default=0.9, validator=v.number(low=0, high=1, high_strict=True))
    adam_beta2: float = attrs.field(default=0.999, validator=v.number(low=0, high=1, high_strict=True))
    adam_eps: float = attrs.field(default=1e-8, validator=v.number(low=0, low_strict=True))


def soft_threshold(u: Tensor, threshold: float) -> Tensor:
    """sign(u)·max(|u| − threshold, 0), element-wise (written as u − clamp(u, −t, t): two kernels)."""
    return u - u.clamp(-threshold, threshold)


def prox_l1_box(u: Tensor, threshold: float, lower: Tensor, upper: Tensor) -> Tensor:
    """argmin_d ½(d − u)² + threshold·|d| subject to lower ≤ d ≤ upper, element-wise.

    Both terms are separable and the box contains 0, so the prox is the soft-threshold projected to the box.
    """
    return torch.minimum(torch.maximum(soft_threshold(u, threshold), lower), upper)


class L1Attack(Attack[L1Settings]):
    """Sparse L1 attack by proximal gradient (ISTA, FISTA or Adam + prox); see the module docstring."""

    settings_type: ClassVar[type[L1Settings]] = L1Settings

    @property
    def iterations(self) -> int:
        """The iteration budget per sample."""
        return self.settings.max_iterations

    def _loss(self, target: Tensor) -> Callable[[Tensor], Tensor]:
        kappa = self.settings.kappa
        return lambda logits: margin(logits.float(), target).clamp(min=-kappa)

    def _attack_batch(self, x: Tensor, target: Tensor) -> BatchOutcome:
        """Run the configured method on one batch with fresh state. Shape: x (B, 48, 19), target (B,)."""
        run = {"ista": self._ista, "fista": self._fista, "adam": self._adam}[self.settings.method]
        return run(x, target)

    def _ista(self, x: Tensor, target: Tensor) -> BatchOutcome:
        return self._smooth_step_loop(x, target, lambda grad, iteration: grad)

    def _adam(self, x: Tensor, target: Tensor) -> BatchOutcome:
        s = self.settings
        first_moment = torch.zeros_like(x)
        second_moment = torch.zeros_like(x)

        def direction(grad: Tensor, iteration: int) -> Tensor:
            first_moment.mul_(s.adam_beta1).add_(grad, alpha=1 - s.adam_beta1)
            second_moment.mul_(s.adam_beta2).addcmul_(grad, grad, value=1 - s.adam_beta2)
            m_hat = first_moment / (1 - s.adam_beta1**iteration)
            v_hat = second_moment / (1 - s.adam_beta2**iteration)
            return m_hat / (v_hat.sqrt() + s.adam_eps)

        return self._smooth_step_loop(x, target, direction)

    def _smooth_step_loop(self, x: Tensor, target: Tensor, direction: Callable[[Tensor, int], Tensor]) -> BatchOutcome:
        """δ_k = prox(δ_{k−1} − step·direction(∇margin(δ_{k−1}))); iterate k checked with the next forward."""
        s = self.settings
        lower, upper = self._bounds(x)
        loss = self._loss(target)
        tracker = SuccessTracker(x)
        delta = torch.zeros_like(x)
        for iteration in range(1, s.max_iterations + 1):
            logits, grad = self._gradient(x + delta, loss)
            if iteration > 1:
                tracker.update(iteration - 1, delta, logits, target)
            step = torch.add(delta, direction(grad, iteration), alpha=-s.step_size)
            delta = prox_l1_box(step, s.step_size * s.lam, lower, upper)
        with torch.no_grad():
            tracker.update(s.max_iterations, delta, self._forward(x + delta), target)
        return tracker.outcome()

    def _fista(self, x: Tensor, target: Tensor) -> BatchOutcome:
        """FISTA: gradient at y_k = δ_k + β_k(δ_k − δ_{k−1}), projected to the box; δ_k checked by its own forward."""
        s = self.settings
        lower, upper = self._bounds(x)
        loss = self._loss(target)
        tracker = SuccessTracker(x)
        delta = previous = torch.zeros_like(x)
        t, beta = 1.0, 0.0  # Beck & Teboulle: t_1 = 1, y_1 = δ_0, β_k = (t_k − 1) / t_{k+1}
        for iteration in range(1, s.max_iterations + 1):
            point = torch.minimum(torch.maximum(delta + beta * (delta - previous), lower), upper)
            _, grad = self._gradient(x + point, loss)
            previous, delta = delta, prox_l1_box(point - s.step_size * grad, s.step_size * s.lam, lower, upper)
            with torch.no_grad():
                tracker.update(iteration, delta, self._forward(x + delta), target)
            t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
            t, beta = t_next, (t - 1.0) / t_next
        return tracker.outcome()
