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
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from lstm_adv.attacks.base import ArrayLike, Attack, BatchOutcome
from lstm_adv.domain.errors import ConfigError
from lstm_adv.domain.perturbation import N_CLASSES

METHODS = ("ista", "fista", "adam")


def _finite_at_least(low: float, *, strict: bool = False) -> Callable[[Any, attrs.Attribute[float], float], None]:
    def check(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
        ok = math.isfinite(value) and (value > low if strict else value >= low)
        if not ok:
            rule = ">" if strict else "≥"
            raise ConfigError(f"L1Settings.{attribute.name} must be finite and {rule} {low}, got {value}")

    return check


def _check_method(instance: L1Settings, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in METHODS:
        raise ConfigError(f"L1Settings.method must be one of {', '.join(METHODS)}; got {value!r}")


def _check_iterations(instance: L1Settings, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ConfigError(f"L1Settings.max_iterations must be ≥ 1, got {value}")


def _check_beta(instance: L1Settings, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"L1Settings.{attribute.name} must lie in [0, 1), got {value}")


@attrs.frozen
class L1Settings:
    """Settings of the sparse L1 attack (κ, λ, step size, method, iteration budget, Adam constants)."""

    kappa: float = attrs.field(default=0.0, validator=_finite_at_least(0.0))
    lam: float = attrs.field(default=1e-3, validator=_finite_at_least(0.0))
    step_size: float = attrs.field(default=1e-2, validator=_finite_at_least(0.0, strict=True))
    method: str = attrs.field(default="ista", validator=_check_method)
    max_iterations: int = attrs.field(default=1000, validator=_check_iterations)
    adam_beta1: float = attrs.field(default=0.9, validator=_check_beta)
    adam_beta2: float = attrs.field(default=0.999, validator=_check_beta)
    adam_eps: float = attrs.field(default=1e-8, validator=_finite_at_least(0.0, strict=True))


def soft_threshold(u: Tensor, threshold: float) -> Tensor:
    """sign(u)·max(|u| − threshold, 0), element-wise (written as u − clamp(u, −t, t): two kernels)."""
    return u - u.clamp(-threshold, threshold)


def prox_l1_box(u: Tensor, threshold: float, lower: Tensor, upper: Tensor) -> Tensor:
    """argmin_d ½(d − u)² + threshold·|d| subject to lower ≤ d ≤ upper, element-wise.

    Both terms are separable and the box contains 0, so the prox is the soft-threshold projected to the box.
    """
    return torch.minimum(torch.maximum(soft_threshold(u, threshold), lower), upper)


def margin(logits: Tensor, target: Tensor) -> Tensor:
    """z_c − max_{j≠c} z_j per sample (negative once the prediction left c). Shape: (B, K) → (B,)."""
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf"))
    return own - others.amax(dim=1)


class SuccessTracker:
    """First and best (smallest L1) successful iterate per sample, updated on the device."""

    def __init__(self, x: Tensor, n_classes: int) -> None:
        b = len(x)
        self.found = torch.zeros(b, dtype=torch.bool, device=x.device)
        self.first_iteration = torch.zeros(b, dtype=torch.int64, device=x.device)
        self.best_iteration = torch.zeros(b, dtype=torch.int64, device=x.device)
        self.first_delta = torch.zeros_like(x)
        self.best_delta = torch.zeros_like(x)
        self.first_logits = torch.zeros(b, n_classes, dtype=torch.float32, device=x.device)
        self.best_logits = torch.zeros(b, n_classes, dtype=torch.float32, device=x.device)
        self.best_l1 = torch.full((b,), math.inf, dtype=x.dtype, device=x.device)

    def update(self, iteration: int, delta: Tensor, logits: Tensor, target: Tensor) -> None:
        """Record iterate ``iteration`` (δ and the logits at x + δ) where it flips the prediction."""
        logits = logits.float()
        success = logits.argmax(dim=1) != target
        new = success & ~self.found
        self.found |= success
        self.first_iteration = torch.where(new, iteration, self.first_iteration)
        self.first_delta = torch.where(new[:, None, None], delta, self.first_delta)
        self.first_logits = torch.where(new[:, None], logits, self.first_logits)
        l1 = delta.abs().sum(dim=(1, 2))
        better = success & (l1 < self.best_l1)
        self.best_l1 = torch.where(better, l1, self.best_l1)
        self.best_iteration = torch.where(better, iteration, self.best_iteration)
        self.best_delta = torch.where(better[:, None, None], delta, self.best_delta)
        self.best_logits = torch.where(better[:, None], logits, self.best_logits)

    def outcome(self) -> BatchOutcome:
        """The bookkeeping as a :class:`BatchOutcome` (still on the device)."""
        return BatchOutcome(
            found=self.found, first_iteration=self.first_iteration, first_delta=self.first_delta,
            first_logits=self.first_logits, best_iteration=self.best_iteration, best_delta=self.best_delta,
            best_logits=self.best_logits,
        )  # fmt: skip


class L1Attack(Attack):
    """Sparse L1 attack by proximal gradient (ISTA, FISTA or Adam + prox); see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        settings: L1Settings | None = None,
        *,
        device: str | torch.device | None = None,
        mask: ArrayLike | None = None,
        batch_size: int = 1024,
        include_misclassified: bool = False,
    ) -> None:
        super().__init__(
            model, device=device, mask=mask, batch_size=batch_size, include_misclassified=include_misclassified
        )
        self.settings = settings if settings is not None else L1Settings()

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

    def _smooth_step_loop(
        self, x: Tensor, target: Tensor, direction: Callable[[Tensor, int], Tensor]
    ) -> BatchOutcome:
        """δ_k = prox(δ_{k−1} − step·direction(∇margin(δ_{k−1}))); iterate k checked with the next forward."""
        s = self.settings
        lower, upper = self._bounds(x)
        loss = self._loss(target)
        tracker = SuccessTracker(x, n_classes=N_CLASSES)
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
        tracker = SuccessTracker(x, n_classes=N_CLASSES)
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
