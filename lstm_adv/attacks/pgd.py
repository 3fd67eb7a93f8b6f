"""Projected gradient descent (PGD; Madry et al. 2018) under L∞ or L2, targeted or untargeted.

Untargeted PGD ascends the cross-entropy CE(z(x+δ), y) of the true class (or the margin
max_{j≠y} z_j − z_y); targeted PGD descends CE(z(x+δ), t) towards the class t (``--target 0`` makes
deaths look like survivals). One iteration:

- L∞: δ ← δ + α·sign(g), then clamp to [−ε, ε];
- L2: δ ← δ + α·g/‖g‖₂ (per sample, over the allowed cells), then scale into the ε-ball;

then the box: x + δ ∈ [0, 1], δ = 0 on masked cells. For L∞ the two clamps are the exact projection
onto the intersection of the ε-ball and the box. For L2 the box clamp only shrinks |δ_ij| (the box
contains 0), so the result stays inside the ε-ball as well. ε = 0 returns δ = 0 exactly.

A random start draws δ₀ uniformly in the ε-ball (a seeded generator on the attack device). Nothing
leaves the device inside the loop. :meth:`PgdAttack.perturb` attacks every given sample and returns
δ on the device (adversarial training and robustness curves use it); :meth:`Attack.run` gives the
base class's stored-result form (first and best successful iterate, misclassified samples skipped).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from lstm_adv.attacks.base import ArrayLike, Attack, BatchOutcome
from lstm_adv.attacks.l1 import SuccessTracker, margin
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.perturbation import CELL_SHAPE, N_CLASSES

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")
#: Attack names used by the defend and robustness stages → norm.
ATTACK_NORMS = {"pgd-linf": "linf", "pgd-l2": "l2"}
_TINY = 1e-12


def _check_eps(instance: PgdSettings, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ConfigError(f"PGD eps must be a finite number ≥ 0, got {value}; use e.g. --eps 0.05")


def _check_step(instance: PgdSettings, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0.0):
        raise ConfigError(f"PGD step_size must be a finite number > 0 (or unset for 2.5·ε/iterations), got {value}")


def _check_iterations(instance: PgdSettings, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ConfigError(f"PGD iterations must be ≥ 1, got {value}")


def _check_norm(instance: PgdSettings, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in NORMS:
        raise ConfigError(f"PGD norm must be one of {', '.join(NORMS)}; got {value!r}")


def _check_loss(instance: PgdSettings, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in LOSSES:
        raise ConfigError(f"PGD loss must be one of {', '.join(LOSSES)}; got {value!r}")


def _check_target(instance: PgdSettings, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value not in range(N_CLASSES):
        raise ConfigError(f"PGD target must be a class (0 survived, 1 died) or unset for untargeted, got {value}")


@attrs.frozen
class PgdSettings:
    """PGD settings: budget ε, step α (``None``: 2.5·ε/iterations), iterations, norm, target class, random start."""

    eps: float = attrs.field(default=0.05, validator=_check_eps)
    step_size: float | None = attrs.field(default=None, validator=_check_step)
    iterations: int = attrs.field(default=10, validator=_check_iterations)
    norm: str = attrs.field(default="linf", validator=_check_norm)
    target: int | None = attrs.field(default=None, validator=_check_target)
    random_start: bool = True
    loss: str = attrs.field(default="ce", validator=_check_loss)
    seed: int = 0

    @property
    def alpha(self) -> float:
        """The step size α actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.iterations

    @property
    def targeted(self) -> bool:
        """Whether the attack moves samples towards :attr:`target`."""
        return self.target is not None

    @classmethod
    def from_config(cls, config: Any, *, attack: str, eps: float, target: int | None = None) -> PgdSettings:
        """Settings from a ``[pgd]`` config section (a ``PgdConfig``) for attack ``pgd-linf``/``pgd-l2`` at ``eps``.

        In the config, ``step_size = 0`` means 2.5·ε/iterations and ``target = -1`` means untargeted.
        """
        if attack not in ATTACK_NORMS:
            raise ConfigError(f"attack must be one of {', '.join(ATTACK_NORMS)}; got {attack!r}")
        chosen = target if target is not None else (None if config.target < 0 else config.target)
        return cls(
            eps=eps, step_size=config.step_size if config.step_size > 0 else None, iterations=config.iterations,
            norm=ATTACK_NORMS[attack], target=chosen, random_start=config.random_start, loss=config.loss,
            seed=config.seed,
        )  # fmt: skip


class PgdAttack(Attack):
    """Batched PGD on the shared attack base (device, eval mode, cuDNN, box, masks); see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        settings: PgdSettings | None = None,
        *,
        device: str | torch.device | None = None,
        mask: ArrayLike | None = None,
        batch_size: int = 1024,
        include_misclassified: bool = False,
    ) -> None:
        super().__init__(
            model, device=device, mask=mask, batch_size=batch_size, include_misclassified=include_misclassified
        )
        self.settings = settings if settings is not None else PgdSettings()
        self._generator: torch.Generator | None = None

    @property
    def iterations(self) -> int:
        """The iteration budget per sample."""
        return self.settings.iterations

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        """δ for every sample (untargeted: away from label ``y``; targeted: towards ``settings.target``).

        Runs in eval mode (the model's mode is restored), batch by batch on the attack device; the result
        stays there. Shape: x (N, 48, 19) float32 in [0, 1], y (N,) → δ (N, 48, 19).
        """
        if x.ndim != 3 or tuple(x.shape[1:]) != CELL_SHAPE or tuple(y.shape) != (x.shape[0],):
            raise DataError(f"PGD input must be x (N, 48, 19) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
        if self.settings.eps == 0.0 or x.shape[0] == 0:
            return torch.zeros(x.shape, dtype=x.dtype, device=self.device)
        with self._eval_mode():
            step = self.batch_size
            parts = [self._descend(x[i : i + step].to(self.device), y[i : i + step].to(self.device))
                     for i in range(0, x.shape[0], step)]  # fmt: skip
        return torch.cat(parts)

    def _descend(self, x: Tensor, y: Tensor) -> Tensor:
        """The PGD iterations for one batch; returns the last iterate δ_K. Shape: (B, 48, 19)."""
        lower, upper = self._ball_and_box(x)
        loss = self._loss(y)
        delta = self._start(x, lower, upper)
        for _ in range(self.settings.iterations):
            _, grad = self._gradient(x + delta, loss)
            delta = self._project(delta + self.settings.alpha * self._direction(grad), lower, upper)
        return delta.detach()

    def _attack_batch(self, x: Tensor, target: Tensor) -> BatchOutcome:
        """Base-class form: ``target`` is the predicted class to move away from (or, targeted, ``1 − t``).

        Iterate k is checked with the logits of the next gradient step (one extra forward for the last).
        """
        s = self.settings
        away = torch.full_like(target, 1 - s.target) if s.target is not None else target
        lower, upper = self._ball_and_box(x)
        loss = self._loss(target)
        tracker = SuccessTracker(x, n_classes=N_CLASSES)
        delta = self._start(x, lower, upper)
        for iteration in range(1, s.iterations + 1):
            logits, grad = self._gradient(x + delta, loss)
            if iteration > 1:
                tracker.update(iteration - 1, delta, logits, away)
            delta = self._project(delta + s.alpha * self._direction(grad), lower, upper)
        with torch.no_grad():
            tracker.update(s.iterations, delta, self._forward(x + delta), away)
        return tracker.outcome()

    def _loss(self, y: Tensor) -> Callable[[Tensor], Tensor]:
        """Per-sample loss to ascend. Shape: logits (B, 2) → (B,)."""
        s = self.settings
        goal = torch.full_like(y, s.target) if s.target is not None else y
        sign = -1.0 if s.targeted else 1.0
        if s.loss == "margin":
            return lambda logits: sign * -margin(logits.float(), goal)
        return lambda logits: sign * nn.functional.cross_entropy(logits.float(), goal, reduction="none")

    def _ball_and_box(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-cell bounds on δ: the box (and mask) of the base, cut to [−ε, ε] for L∞. Shape: 2 × (B, 48, 19)."""
        lower, upper = self._bounds(x)
        if self.settings.norm == "linf":
            eps = self.settings.eps
            lower, upper = lower.clamp(min=-eps), upper.clamp(max=eps)
        return lower, upper

    def _direction(self, grad: Tensor) -> Tensor:
        """sign(g) for L∞; g/‖g‖₂ per sample over the allowed cells for L2."""
        if self.mask is not None:
            grad = torch.where(self.mask, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        if self.settings.norm == "linf":
            return grad.sign()
        norm = torch.linalg.vector_norm(grad.flatten(1), dim=1).clamp(min=_TINY)
        unit: Tensor = grad / norm[:, None, None]
        return unit

    def _project(self, delta: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
        """Onto the ε-ball (L2: scale per sample), then the box; the L∞ ball is already inside the bounds."""
        if self.settings.norm == "l2":
            norm = torch.linalg.vector_norm(delta.flatten(1), dim=1)
            factor = (self.settings.eps / norm.clamp(min=_TINY)).clamp(max=1.0)
            delta = delta * factor[:, None, None]
        return torch.minimum(torch.maximum(delta, lower), upper)

    def _start(self, x: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
        """δ₀: zero, or uniform in the ε-ball (then projected to the box and mask)."""
        if not self.settings.random_start:
            return torch.zeros_like(x)
        generator = self._device_generator()
        eps = self.settings.eps
        if self.settings.norm == "linf":
            noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2.0 - 1.0) * eps
        else:  # uniform in the L2 ball: a uniform direction times ε·u^(1/d)
            direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            length = torch.linalg.vector_norm(direction.flatten(1), dim=1).clamp(min=_TINY)
            direction = direction / length[:, None, None]
            radius = eps * torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (
                1.0 / direction[0].numel()
            )
            noise = direction * radius[:, None, None]
        start: Tensor = self._project(noise, lower, upper)
        return start

    def _device_generator(self) -> torch.Generator:
        """One seeded generator per attack object: repeated calls draw fresh (but reproducible) starts."""
        if self._generator is None:
            self._generator = torch.Generator(device=self.device).manual_seed(self.settings.seed)
        return self._generator
