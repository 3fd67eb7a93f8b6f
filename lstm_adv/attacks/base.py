"""The attack base class: settings, device, model mode, cuDNN handling, the box [0, 1], masks, batching
and the bookkeeping of successes.

A subclass names its settings class (:attr:`Attack.settings_type`) and implements
:meth:`Attack._attack_batch` for one batch of samples already on the device; :meth:`Attack.run` does
everything around it: validates the input, computes the clean logits, skips misclassified samples
unless asked not to, cuts the rest into batches, and copies each batch's results to the host once.
:func:`margin` and :class:`SuccessTracker` are shared by every attack.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import attrs
import numpy as np
import torch
from torch import Tensor, nn

from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.domain.shapes import CELL_SHAPE, N_CLASSES, N_FEATURES, N_HOURS

log = logging.getLogger(__name__)

ArrayLike = Tensor | np.ndarray
S = TypeVar("S")


@attrs.frozen
class BatchOutcome:
    """What a subclass returns for one batch, still on the device.

    Shapes: found, first_iteration, best_iteration (B,); deltas (B, 48, 19); logits (B, 2).
    Iterations are 1-based and 0 where nothing was found.
    """

    found: Tensor
    first_iteration: Tensor
    first_delta: Tensor
    first_logits: Tensor
    best_iteration: Tensor
    best_delta: Tensor
    best_logits: Tensor

    def to_host(self) -> dict[str, np.ndarray]:
        """Every field as a numpy array: the one device→host copy of a batch."""
        return {name: getattr(self, name).detach().cpu().numpy() for name in attrs.fields_dict(BatchOutcome)}


def margin(logits: Tensor, target: Tensor) -> Tensor:
    """z_c − max_{j≠c} z_j per sample (negative once the prediction left c). Shape: (B, K) → (B,)."""
    own = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf"))
    return own - others.amax(dim=1)


class SuccessTracker:
    """First and best (smallest L1) successful iterate per sample, updated on the device."""

    def __init__(self, x: Tensor) -> None:
        b = len(x)
        self.found = torch.zeros(b, dtype=torch.bool, device=x.device)
        self.first_iteration = torch.zeros(b, dtype=torch.int64, device=x.device)
        self.best_iteration = torch.zeros(b, dtype=torch.int64, device=x.device)
        self.first_delta = torch.zeros_like(x)
        self.best_delta = torch.zeros_like(x)
        self.first_logits = torch.zeros(b, N_CLASSES, dtype=torch.float32, device=x.device)
        self.best_logits = torch.zeros(b, N_CLASSES, dtype=torch.float32, device=x.device)
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
            found=self.found,
            first_iteration=self.first_iteration,
            first_delta=self.first_delta,
            first_logits=self.first_logits,
            best_iteration=self.best_iteration,
            best_delta=self.best_delta,
            best_logits=self.best_logits,
        )


def cell_mask(*, features: Sequence[int] | None = None, hours: Sequence[int] | None = None) -> np.ndarray:
    """A (48, 19) bool mask allowing the given feature indices and hours (``None`` = all).

    Shape: (48, 19).
    """
    by_hour = np.zeros(N_HOURS, dtype=bool) if hours is not None else np.ones(N_HOURS, dtype=bool)
    by_feature = np.zeros(N_FEATURES, dtype=bool) if features is not None else np.ones(N_FEATURES, dtype=bool)
    by_hour[list(hours or [])] = True
    by_feature[list(features or [])] = True
    return np.outer(by_hour, by_feature)


def _check_mask(mask: ArrayLike | None) -> Tensor | None:
    if mask is None:
        return None
    tensor = torch.as_tensor(mask)
    if tensor.dtype != torch.bool or tuple(tensor.shape) != CELL_SHAPE:
        raise ConfigError(
            f"attack mask must be a bool array of shape (48, 19), got {str(tensor.dtype).removeprefix('torch.')} "
            f"{tuple(tensor.shape)}; build one with lstm_adv.attacks.cell_mask(features=..., hours=...)"
        )
    if not bool(tensor.any()):
        raise ConfigError("attack mask excludes every cell (48 × 19); allow at least one feature and hour")
    return tensor


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        first = next(iter(model.parameters()), None)
        return first.device if first is not None else torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"attack device {str(resolved)!r} needs CUDA, which is not available; use --device cpu")
    return resolved


class Attack(abc.ABC, Generic[S]):
    """Base of every attack. Subclasses set :attr:`settings_type` and implement :meth:`_attack_batch`
    and :attr:`iterations`; ``settings`` defaults to ``settings_type()``.

    The model is moved to ``device`` (default: where its parameters are) and put in eval mode for the
    whole run (its previous mode is restored afterwards). On
    CUDA, cuDNN is disabled around the attack's forward and backward passes: cuDNN refuses RNN
    backward in eval mode, and the native kernels compute the same eval-mode logits (dropout off).
    """

    settings_type: ClassVar[type[Any]]

    def __init__(
        self,
        model: nn.Module,
        settings: S | None = None,
        *,
        device: str | torch.device | None = None,
        mask: ArrayLike | None = None,
        batch_size: int = 1024,
        include_misclassified: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"attack batch size must be ≥ 1, got {batch_size}")
        self.settings: S = settings if settings is not None else self.settings_type()
        self.device = _resolve_device(model, device)
        self.model = model.to(self.device)
        mask_tensor = _check_mask(mask)
        self.mask = None if mask_tensor is None else mask_tensor.to(self.device)
        self.batch_size = batch_size
        self.include_misclassified = include_misclassified

    @property
    @abc.abstractmethod
    def iterations(self) -> int:
        """The iteration budget per sample."""

    @abc.abstractmethod
    def _attack_batch(self, x: Tensor, target: Tensor) -> BatchOutcome:
        """Attack one batch. ``x``: (B, 48, 19) on the device; ``target``: (B,) the class to move away from."""

    def run(
        self,
        x: ArrayLike,
        y: ArrayLike,
        *,
        sample_index: ArrayLike | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> AttackBatchResult:
        """Attack every sample of ``x`` (labels ``y``); ``progress(n)`` is called after each batch of n.

        Shape: x (N, 48, 19) float32 in [0, 1]; y (N,) in {0, 1}; sample_index (N,) (default 0..N-1).
        """
        xs, ys, index = _check_input(x, y, sample_index)
        with self._eval_mode():
            logits_before = self._clean_logits(xs)
            predicted = logits_before.argmax(dim=1)
            attacked = (predicted == ys) | self.include_misclassified
            outcome = self._attack_selected(xs[attacked], predicted[attacked], progress)
        log.info(
            "attacked %d of %d samples (%d skipped as misclassified)",
            int(attacked.sum()),
            len(xs),
            int((~attacked).sum()),
        )
        return _assemble(self.iterations, index, ys, logits_before, attacked, outcome)

    def _attack_selected(
        self, x: Tensor, target: Tensor, progress: Callable[[int], None] | None
    ) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, len(x), self.batch_size):
            xb = x[start : start + self.batch_size].to(self.device)
            tb = target[start : start + self.batch_size].to(self.device)
            parts.append(self._attack_batch(xb, tb).to_host())
            log.debug("attack batch done: samples %d-%d", start, start + len(xb))
            if progress is not None:
                progress(len(xb))
        if not parts:
            return _empty_outcome()
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _clean_logits(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            chunks = [
                self._forward(x[i : i + self.batch_size].to(self.device)).cpu()
                for i in range(0, len(x), self.batch_size)
            ]
        return torch.cat(chunks).float()

    def _forward(self, x: Tensor) -> Tensor:
        """Eval-mode logits of the model at ``x``, with cuDNN handled. Shape: (B, 48, 19) → (B, 2)."""
        with self._cudnn_handled():
            return self.model(x)  # type: ignore[no-any-return]

    def _gradient(self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """Logits at ``x`` and the gradient of Σ_i loss_i w.r.t. ``x``.

        Samples do not interact in an eval-mode model, so the gradient of the sum gives every sample
        exactly its own gradient: this is what makes a batch equal to one-at-a-time attacks.
        """
        point = x.detach().requires_grad_(True)
        with self._cudnn_handled():
            logits = self.model(point)
            (grad,) = torch.autograd.grad(loss_fn(logits).sum(), point)
        return logits.detach(), grad

    def _bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-cell bounds on δ: ``x + δ ∈ [0, 1]``, and δ = 0 on masked cells. Shape: 2 × (B, 48, 19)."""
        lower, upper = -x, 1.0 - x
        if self.mask is not None:
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            lower = torch.where(self.mask, lower, zero)
            upper = torch.where(self.mask, upper, zero)
        return lower, upper

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def _cudnn_handled(self) -> contextlib.AbstractContextManager[None]:
        if self.device.type == "cuda":
            return torch.backends.cudnn.flags(enabled=False)
        return contextlib.nullcontext()


def _check_input(x: ArrayLike, y: ArrayLike, sample_index: ArrayLike | None) -> tuple[Tensor, Tensor, np.ndarray]:
    xs, ys = torch.as_tensor(x), torch.as_tensor(y)
    if xs.ndim != 3 or tuple(xs.shape[1:]) != CELL_SHAPE:
        raise DataError(f"attack input must have shape (N, 48, 19), got {tuple(xs.shape)}")
    if len(xs) == 0:
        raise DataError("attack input is empty (0 samples); choose a split or subset that has samples")
    if xs.dtype != torch.float32:
        raise DataError(f"attack input must be float32, got {str(xs.dtype).removeprefix('torch.')}")
    if not bool(torch.isfinite(xs).all()) or bool((xs < 0).any()) or bool((xs > 1).any()):
        raise DataError("attack input must be finite and lie in [0, 1]; normalize it with the features run")
    if tuple(ys.shape) != (len(xs),) or not bool(torch.isin(ys, torch.tensor([0, 1])).all()):
        raise DataError(f"attack labels must have shape ({len(xs)},) with values 0 or 1, got shape {tuple(ys.shape)}")
    index = np.arange(len(xs), dtype=np.int64) if sample_index is None else np.asarray(sample_index, dtype=np.int64)
    if index.shape != (len(xs),):
        raise DataError(f"attack sample_index must have shape ({len(xs)},), got {index.shape}")
    return xs.detach().cpu(), ys.detach().cpu().long(), index


def _empty_outcome() -> dict[str, np.ndarray]:
    return {
        "found": np.zeros(0, dtype=bool),
        "first_iteration": np.zeros(0, dtype=np.int64),
        "first_delta": np.zeros((0, *CELL_SHAPE), dtype=np.float32),
        "first_logits": np.zeros((0, N_CLASSES), dtype=np.float32),
        "best_iteration": np.zeros(0, dtype=np.int64),
        "best_delta": np.zeros((0, *CELL_SHAPE), dtype=np.float32),
        "best_logits": np.zeros((0, N_CLASSES), dtype=np.float32),
    }


def _assemble(
    iterations: int,
    index: np.ndarray,
    y: Tensor,
    logits_before: Tensor,
    attacked: Tensor,
    outcome: dict[str, np.ndarray],
) -> AttackBatchResult:
    """Scatter the attacked rows' outcome into full-length columns (skipped rows: not found)."""
    rows = attacked.numpy()
    full = {name: np.zeros((len(rows), *value.shape[1:]), dtype=value.dtype) for name, value in outcome.items()}
    for name, value in outcome.items():
        full[name][rows] = value
    return AttackBatchResult(
        iterations,
        sample_index=index,
        label=y.numpy().astype(np.int64),
        logits_before=logits_before.numpy().astype(np.float32),
        attacked=rows.astype(bool),
        found=full["found"],
        first_iteration=full["first_iteration"].astype(np.int64),
        first_delta=full["first_delta"].astype(np.float32),
        first_logits=full["first_logits"].astype(np.float32),
        best_iteration=full["best_iteration"].astype(np.int64),
        best_delta=full["best_delta"].astype(np.float32),
        best_logits=full["best_logits"].astype(np.float32),
    )
