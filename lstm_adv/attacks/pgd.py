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

import copy
from collections.abc import Callable
from typing import ClassVar, Literal

import attrs
import torch
from torch import Tensor, nn

from lstm_adv.attacks.base import Attack, BatchOutcome, SuccessTracker, margin
from lstm_adv.attacks.threats import BatchThreat, CellThreat, SampleInputs
from lstm_adv.config import PgdAttackName, PgdConfig, PgdLoss
from lstm_adv.domain import validators as v
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.shapes import CELL_SHAPE

Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")
#: Attack names used by the defend and robustness stages → norm.
ATTACK_NORMS: dict[str, Norm] = {"pgd-linf": "linf", "pgd-l2": "l2"}
_TINY = 1e-12


def _check_step(instance: PgdSettings, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None:
        v.number(low=0, low_strict=True)(instance, attribute, value)


@attrs.frozen
class PgdSettings:
    """PGD settings: budget ε, step α (``None``: 2.5·ε/iterations), iterations, norm, target class, random start."""

    eps: float = attrs.field(default=0.05, validator=v.number(low=0))
    step_size: float | None = attrs.field(default=None, validator=_check_step)
    iterations: int = attrs.field(default=10, validator=v.at_least(1))
    norm: Norm = attrs.field(default="linf", validator=v.one_of(NORMS))
    target: int | None = attrs.field(default=None, validator=v.one_of((None, 0, 1)))
    random_start: bool = True
    loss: PgdLoss = attrs.field(default="ce", validator=v.one_of(LOSSES))
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
    def from_config(cls, config: PgdConfig, *, attack: PgdAttackName, eps: float) -> PgdSettings:
        """Settings from the ``[pgd]`` section for attack ``pgd-linf``/``pgd-l2`` at budget ``eps``."""
        if attack not in ATTACK_NORMS:
            raise ConfigError(f"attack must be one of {', '.join(ATTACK_NORMS)}; got {attack!r}")
        return cls(
            eps=eps,
            step_size=None if config.step_size == "auto" else float(config.step_size),
            iterations=config.iterations,
            norm=ATTACK_NORMS[attack],
            target=config.target_class,
            random_start=config.random_start,
            loss=config.loss,
            seed=config.seed,
        )


class PgdAttack(Attack[PgdSettings]):
    """Batched PGD on the shared attack base (device, eval mode, cuDNN, box, masks); see the module docstring."""

    settings_type: ClassVar[type[PgdSettings]] = PgdSettings
    _generator: torch.Generator | None = None

    @property
    def iterations(self) -> int:
        """The iteration budget per sample."""
        return self.settings.iterations

    def _check_threat(self) -> None:
        """PGD's ε-ball lives in the model input: a cell threat only."""
        if not isinstance(self.threat, CellThreat):
            raise ConfigError(
                f"PGD perturbs the model input within an ε-ball; it takes cells 'all' or 'observed', not "
                f"{self.threat.name!r}"
            )

    def perturb(self, x: Tensor, y: Tensor, cells: Tensor | None = None) -> Tensor:
        """δ for every sample (untargeted: away from label ``y``; targeted: towards ``settings.target``).

        Runs in the attack's mode (the model's modes are restored), batch by batch on the attack device;
        the result stays there. ``cells`` (N, 48, 19) limits each sample to its allowed cells.
        Shape: x (N, 48, 19) float32 in [0, 1], y (N,) → δ (N, 48, 19).
        """
        if x.ndim != 3 or tuple(x.shape[1:]) != CELL_SHAPE or tuple(y.shape) != (x.shape[0],):
            raise DataError(f"PGD input must be x (N, 48, 19) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
        if self.settings.eps == 0.0 or x.shape[0] == 0:
            return torch.zeros(x.shape, dtype=x.dtype, device=self.device)
        step = self.batch_size
        with self._attack_mode():
            parts = []
            for i in range(0, x.shape[0], step):
                xb = x[i : i + step].to(self.device)
                allowed = None if cells is None else cells[i : i + step].to(self.device)
                parts.append(self._descend(xb, y[i : i + step].to(self.device), self._batch_threat(xb, allowed)))
        return torch.cat(parts)

    def _batch_threat(self, x: Tensor, cells: Tensor | None) -> BatchThreat:
        return self.threat.batch(x, SampleInputs(allowed=cells))

    def _descend(self, x: Tensor, y: Tensor, threat: BatchThreat, tracker: SuccessTracker | None = None) -> Tensor:
        """The PGD iterations for one batch; returns the last iterate δ_K. Shape: (B, 48, 19).

        With a ``tracker``, iterate k is checked with the logits of the next gradient step (one extra
        forward for the last), away from the decision ``y`` is pushed from (the target's other class).
        """
        s = self.settings
        away = torch.full_like(y, 1 - s.target) if s.target is not None else y
        lower, upper = self._ball_and_box(threat)
        allowed = upper > lower
        loss = self._loss(y)
        delta = self._start(x, lower, upper)
        for iteration in range(1, s.iterations + 1):
            logits, grad = self._gradient(x + delta, loss)
            if tracker is not None and iteration > 1:
                tracker.update(iteration - 1, delta, logits, away)
            delta = self._project(delta + s.alpha * self._direction(grad, allowed), lower, upper)
        if tracker is not None:
            with torch.no_grad():
                tracker.update(s.iterations, delta, self._forward(x + delta), away)
        return delta.detach()

    def _attack_batch(self, x: Tensor, target: Tensor, threat: BatchThreat) -> BatchOutcome:
        """Base-class form: ``target`` is the decision to move away from (or, targeted, ``1 − t``)."""
        tracker = SuccessTracker(x, self.boundary)
        self._descend(x, target, threat, tracker)
        return tracker.outcome()

    def _short_batch(self, x: Tensor, target: Tensor, threat: BatchThreat) -> None:
        """Two iterations, with a generator of their own: sizing batches never changes the random starts."""
        short = copy.copy(self)
        short.settings = attrs.evolve(self.settings, iterations=2)
        short._generator = None
        short._descend(x, target, threat, SuccessTracker(x, self.boundary))

    def _loss(self, y: Tensor) -> Callable[[Tensor], Tensor]:
        """Per-sample loss to ascend, measured at the decision rule's boundary. Shape: logits (B, 2) → (B,).

        Cross-entropy is taken on the logits shifted by the boundary (z₁ − b), so that its 50 % point is
        the rule's threshold; the margin loss is the signed distance to the boundary.
        """
        s = self.settings
        goal = torch.full_like(y, s.target) if s.target is not None else y
        sign = -1.0 if s.targeted else 1.0
        boundary = self.boundary
        if s.loss == "margin":
            return lambda logits: sign * -margin(logits, goal, boundary)
        shift = torch.tensor([0.0, boundary], device=y.device)
        return lambda logits: sign * nn.functional.cross_entropy(logits.float() - shift, goal, reduction="none")

    def _ball_and_box(self, threat: BatchThreat) -> tuple[Tensor, Tensor]:
        """Per-cell bounds on δ: the threat's box (and cells), cut to [−ε, ε] for L∞. Shape: 2 × (B, 48, 19)."""
        lower, upper = threat.lower, threat.upper
        if self.settings.norm == "linf":
            eps = self.settings.eps
            lower, upper = lower.clamp(min=-eps), upper.clamp(max=eps)
        return lower, upper

    def _direction(self, grad: Tensor, allowed: Tensor) -> Tensor:
        """sign(g) for L∞; g/‖g‖₂ per sample over the allowed cells for L2 (0 on the others)."""
        grad = torch.where(allowed, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
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
