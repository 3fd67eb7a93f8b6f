"""The attack base class: settings, device, model mode, cuDNN handling, the decision rule, the box [0, 1],
cell masks, batching and the bookkeeping of successes.

A subclass names its settings class (:attr:`Attack.settings_type`) and implements
:meth:`Attack._attack_batch` for one batch of samples already on the device; :meth:`Attack.run` does
everything around it: validates the input, computes the clean logits and the decision at the model's
rule, skips misclassified samples (and samples without a cell they may change) unless asked not to,
cuts the rest into batches, and copies each batch's results to the host once.

Batch size. ``batch_size="auto"`` sizes batches to the device (:mod:`lstm_adv.devices`): 256 on a CPU;
on CUDA the largest batch of this attack that fits in memory with a margin, probed once per process by
running a short attack (:meth:`Attack._memory_trial`) on random inputs. A batch size never changes
what the L1 attack finds.

Threats. What δ is — a change of the model input's cells, or of the sample's record pushed through the
fill (altered measurements) — is the attack's :class:`~lstm_adv.attacks.threats.Threat`; the base
builds each batch's :class:`~lstm_adv.attacks.threats.BatchThreat` (bounds, the map δ → input) and
stores, per example, the model input's change and, for the record threat, the record's change.

Decisions. An attack flips a sample when its decision at the model's :class:`DecisionRule` changes:
the logit difference z₁ − z₀ crosses the rule's boundary log(t/(1 − t)). :func:`margin` is the signed
distance to that boundary, positive while the sample keeps its class; every attack's loss uses it.

Model mode. The attack needs eval-mode logits (dropout off) and their input gradients. cuDNN refuses
RNN backward in eval mode, so on CUDA the LSTM modules alone run in train mode with their inter-layer
dropout set to 0 for the attack's duration (:func:`lstm_kernel_mode`; every other module stays in eval
mode): the logits and gradients equal eval mode's while cuDNN's kernels run. ``cudnn=False`` keeps the
whole model in eval mode and disables cuDNN instead (native kernels: for checking). Modes and dropout
are restored afterwards, also when the attack raises.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, ClassVar, Generic, Literal, TypeVar

import attrs
import numpy as np
import torch
from torch import Tensor, nn

from lstm_adv import devices
from lstm_adv.attacks.threats import BatchThreat, CellThreat, RecordThreat, SampleInputs, Threat
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.perturbation import EXAMPLES, AttackBatchResult
from lstm_adv.domain.shapes import CELL_SHAPE, N_CLASSES, N_FEATURES, N_HOURS

log = logging.getLogger(__name__)

ArrayLike = Tensor | np.ndarray
S = TypeVar("S")
_SKIP_MISCLASSIFIED, _SKIP_NO_CELL = 1, 2


@attrs.frozen
class BatchOutcome:
    """What a subclass returns for one batch, still on the device.

    Shapes: found, first_iteration, best_iteration (B,); deltas (B, *variable shape): the attack variable
    δ of the threat (:mod:`lstm_adv.attacks.threats`; the model input's change for a cell threat, the record's
    for the record threat); logits (B, 2). Iterations are 1-based and 0 where nothing was found.
    """

    found: Tensor
    first_iteration: Tensor
    first_delta: Tensor
    first_logits: Tensor
    best_iteration: Tensor
    best_delta: Tensor
    best_logits: Tensor
    sparse_delta: Tensor
    sparse_logits: Tensor

    def to_host(self, threat: BatchThreat) -> dict[str, np.ndarray]:
        """Every field as a numpy array, the deltas as model-input changes (and, for the record threat, the
        record changes as ``<which>_record_delta``): the one device→host copy of a batch."""
        fields = {name: getattr(self, name) for name in attrs.fields_dict(BatchOutcome)}
        if threat.record_space:
            for which in EXAMPLES:
                fields[f"{which}_record_delta"] = fields[f"{which}_delta"]
                fields[f"{which}_delta"] = threat.input_delta(fields[f"{which}_delta"])
        return {name: value.detach().cpu().numpy() for name, value in fields.items()}


def decide(logits: Tensor, boundary: float) -> Tensor:
    """The decision (1: death) at a rule's boundary: z₁ − z₀ ≥ boundary. Shape: (B, 2) → (B,) int64."""
    logits = logits.float()
    return (logits[:, 1] - logits[:, 0] >= boundary).long()


def margin(logits: Tensor, target: Tensor, boundary: float = 0.0) -> Tensor:
    """Signed distance of z₁ − z₀ to ``boundary``, positive while the decision is still ``target``.

    With ``boundary`` 0 this is z_c − z_¬c (the argmax margin). Shape: (B, 2), (B,) → (B,).
    """
    difference = logits[:, 1].float() - logits[:, 0].float() - boundary
    return torch.where(target == 1, difference, -difference)


@attrs.define
class PassCounts:
    """Model passes one :meth:`Attack.run` made, summed over samples (a pass on a batch of B counts B)."""

    forward: int = 0
    backward: int = 0

    def per_sample(self, samples: int) -> tuple[float, float]:
        """Forward and backward passes per attacked sample (0 without samples)."""
        return (self.forward / samples, self.backward / samples) if samples else (0.0, 0.0)


class SuccessTracker:
    """First and best (smallest L1) iterate whose decision left the target class, updated on the device.

    ``x`` gives the shape of δ (B, ...): the model input for a cell threat, the record for the record threat.
    """

    def __init__(self, x: Tensor, boundary: float = 0.0) -> None:
        b = len(x)
        self.boundary = boundary
        self.found = torch.zeros(b, dtype=torch.bool, device=x.device)
        self.first_iteration = torch.zeros(b, dtype=torch.int64, device=x.device)
        self.best_iteration = torch.zeros(b, dtype=torch.int64, device=x.device)
        self.first_delta = torch.zeros_like(x)
        self.best_delta = torch.zeros_like(x)
        self.first_logits = torch.zeros(b, N_CLASSES, dtype=torch.float32, device=x.device)
        self.best_logits = torch.zeros(b, N_CLASSES, dtype=torch.float32, device=x.device)
        self.best_l1 = torch.full((b,), math.inf, dtype=x.dtype, device=x.device)

    def update(self, iteration: int, delta: Tensor, logits: Tensor, target: Tensor) -> Tensor:
        """Record iterate ``iteration`` (δ and the logits at x + δ) where it flips; returns that success mask."""
        logits = logits.float()
        success = decide(logits, self.boundary) != target
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
        return success

    def outcome(self, sparse_delta: Tensor | None = None, sparse_logits: Tensor | None = None) -> BatchOutcome:
        """The bookkeeping as a :class:`BatchOutcome` (still on the device); sparse defaults to best."""
        return BatchOutcome(
            found=self.found,
            first_iteration=self.first_iteration,
            first_delta=self.first_delta,
            first_logits=self.first_logits,
            best_iteration=self.best_iteration,
            best_delta=self.best_delta,
            best_logits=self.best_logits,
            sparse_delta=self.best_delta if sparse_delta is None else sparse_delta,
            sparse_logits=self.best_logits if sparse_logits is None else sparse_logits,
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


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        first = next(iter(model.parameters()), None)
        return first.device if first is not None else torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"attack device {str(resolved)!r} needs CUDA, which is not available; use --device cpu")
    return resolved


@contextlib.contextmanager
def lstm_kernel_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for ``model``, except its ``nn.LSTM`` modules: train mode with inter-layer dropout 0.

    In that state the logits and input gradients equal eval mode's (an LSTM has no batch statistics;
    its only train-mode difference is the dropout set to 0 here), and cuDNN runs the RNN backward.
    Modes and dropout values are restored on exit, also after an exception.
    """
    modes = {module: module.training for module in model.modules()}
    lstms = [module for module in model.modules() if isinstance(module, nn.LSTM)]
    dropouts = [module.dropout for module in lstms]
    model.eval()
    try:
        for lstm in lstms:
            lstm.dropout = 0.0
            lstm.train(True)
        yield
    finally:
        for lstm, dropout in zip(lstms, dropouts, strict=True):
            lstm.dropout = dropout
        for module, training in modes.items():
            module.training = training


class Attack(abc.ABC, Generic[S]):
    """Base of every attack. Subclasses set :attr:`settings_type` and implement :meth:`_attack_batch`
    and :attr:`iterations`; ``settings`` defaults to ``settings_type()``, ``decision`` to the argmax rule.

    ``threat`` (:mod:`lstm_adv.attacks.threats`; default: every cell of the model input) says what the
    attack may change and how a change reaches the model. The model is moved to ``device`` (default:
    where its parameters are) and put in the attack's mode for the whole run (see the module docstring;
    its previous modes are restored afterwards). ``batch_size="auto"`` sizes batches to the device, at
    most ``max_batch_size`` samples (e.g. the most one call to :meth:`run` attacks); :attr:`batch_size`
    is the size chosen.
    """

    settings_type: ClassVar[type[Any]]

    def __init__(
        self,
        model: nn.Module,
        settings: S | None = None,
        *,
        decision: DecisionRule | None = None,
        device: str | torch.device | None = None,
        threat: Threat | None = None,
        batch_size: int | Literal["auto"] = 1024,
        max_batch_size: int = devices.MAX_BATCH_SIZE,
        include_misclassified: bool = False,
        cudnn: bool = True,
    ) -> None:
        if batch_size != "auto" and batch_size < 1:
            raise ConfigError(f"attack batch size must be ≥ 1, got {batch_size}")
        self.settings: S = settings if settings is not None else self.settings_type()
        self.decision = decision if decision is not None else DecisionRule.argmax()
        self.boundary = self.decision.boundary
        self.device = _resolve_device(model, device)
        self.model = model.to(self.device)
        self.threat: Threat = (threat if threat is not None else CellThreat()).to(self.device)
        self._check_threat()
        self.include_misclassified = include_misclassified
        self.cudnn = cudnn
        #: Passes of the last :meth:`run`'s attack (clean logits not counted).
        self.passes = PassCounts()
        self.batch_size: int = self._auto_batch_size(max_batch_size) if batch_size == "auto" else batch_size

    def _check_threat(self) -> None:
        """Refuse a threat this attack does not support (every threat is supported here)."""

    @property
    @abc.abstractmethod
    def iterations(self) -> int:
        """The iteration budget per sample."""

    @abc.abstractmethod
    def _attack_batch(self, x: Tensor, target: Tensor, threat: BatchThreat) -> BatchOutcome:
        """Attack one batch. ``x``: (B, 48, 19) on the device; ``target``: (B,) the decision to move away
        from; ``threat``: the batch's bounds of δ and its map to the model input."""

    def run(
        self,
        x: ArrayLike,
        y: ArrayLike,
        *,
        sample_index: ArrayLike | None = None,
        allowed: ArrayLike | None = None,
        record: ArrayLike | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> AttackBatchResult:
        """Attack every sample of ``x`` (labels ``y``); ``progress(n)`` is called after each batch of n.

        The threat's per-sample inputs: ``allowed`` (N, 48, 19) limits each sample of a cell threat to its
        own cells (e.g. its measured cells), on top of the threat's mask; ``record`` (N, 49, 19) is each
        sample's record for the record threat. A sample left without anything it may change is skipped
        with that reason, never an error.
        Shape: x (N, 48, 19) float32 in [0, 1]; y (N,) in {0, 1}; sample_index (N,) (default 0..N-1).
        """
        xs, ys, index = _check_input(x, y, sample_index)
        inputs = self.threat.inputs(xs.shape[0], allowed=allowed, record=record)
        editable = self.threat.editable(inputs)
        with self._attack_mode():
            logits_before = self._clean_logits(xs)
        predicted = decide(logits_before, self.boundary)
        skip = torch.zeros(len(xs), dtype=torch.int8)
        if editable is not None:
            skip[~editable.flatten(1).any(dim=1).cpu()] = _SKIP_NO_CELL
        if not self.include_misclassified:
            skip[predicted != ys] = _SKIP_MISCLASSIFIED
        attacked = skip == 0
        self.passes = PassCounts()
        with self._attack_mode():
            outcome = self._attack_selected(xs[attacked], predicted[attacked], inputs.take(attacked), progress)
        log.info("attacked %d of %d samples", int(attacked.sum()), len(xs))
        return _assemble(self.iterations, self.decision.threshold, index, ys, logits_before, predicted, skip, outcome)

    def _attack_selected(
        self, x: Tensor, target: Tensor, inputs: SampleInputs, progress: Callable[[int], None] | None
    ) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, len(x), self.batch_size):
            part = slice(start, start + self.batch_size)
            xb, tb = x[part].to(self.device), target[part].to(self.device)
            threat = self.threat.batch(xb, inputs.take(part).to(self.device))
            parts.append(self._attack_batch(xb, tb, threat).to_host(threat))
            if progress is not None:
                progress(len(xb))
        if not parts:
            return _empty_outcome(self.threat)
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _clean_logits(self, x: Tensor) -> Tensor:
        with torch.no_grad(), self._cudnn_handled():
            chunks = [
                self.model(x[i : i + self.batch_size].to(self.device)).cpu() for i in range(0, len(x), self.batch_size)
            ]
        return torch.cat(chunks).float()

    def _forward(self, x: Tensor) -> Tensor:
        """Eval-mode logits of the model at ``x``, with cuDNN handled (a counted pass). Shape: (B, 48, 19) → (B, 2)."""
        self.passes.forward += len(x)
        with self._cudnn_handled():
            return self.model(x)  # type: ignore[no-any-return]

    def _gradient(self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """Logits at ``x`` and the gradient of Σ_i loss_i w.r.t. ``x``.

        Samples do not interact in an eval-mode model, so the gradient of the sum gives every sample
        exactly its own gradient: this is what makes a batch equal to one-at-a-time attacks.
        """
        point = x.detach().requires_grad_(True)
        self.passes.forward += len(x)
        self.passes.backward += len(x)
        with self._cudnn_handled():
            logits = self.model(point)
            (grad,) = torch.autograd.grad(loss_fn(logits).sum(), point)
        return logits.detach(), grad

    def _gradient_through(
        self, threat: BatchThreat, delta: Tensor, loss_fn: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Logits at the threat's input for δ and the gradient of Σ_i loss_i w.r.t. δ (through the threat's map;
        for a cell threat it equals :meth:`_gradient`'s at ``x + δ``). Shape: δ → (B, 2), δ's shape."""
        point = delta.detach().requires_grad_(True)
        self.passes.forward += len(delta)
        self.passes.backward += len(delta)
        with self._cudnn_handled():
            logits = self.model(threat.apply(point))
            (grad,) = torch.autograd.grad(loss_fn(logits).sum(), point)
        return logits.detach(), grad

    def _auto_batch_size(self, limit: int) -> int:
        return devices.auto_batch_size(self._memory_key(), self._memory_trial, self.device, limit=limit)

    def _memory_key(self) -> Hashable:
        """What this attack's memory per sample depends on: kind, device, kernels and the model's parameters."""
        shapes = tuple((name, tuple(p.shape), str(p.dtype)) for name, p in self.model.named_parameters())
        return (type(self).__name__, str(self.device), self.cudnn, shapes)

    def _memory_trial(self, size: int) -> None:
        """Attack ``size`` random samples briefly, as sizing batches to memory needs (see :meth:`_short_batch`)."""
        generator = torch.Generator(device=self.device).manual_seed(0)
        x = torch.rand((size, *CELL_SHAPE), generator=generator, device=self.device)
        target = torch.zeros(size, dtype=torch.int64, device=self.device)
        threat = self.threat.batch(x, self.threat.trial_inputs(x))  # every entry changeable, as inputs would take
        with self._attack_mode():
            self._short_batch(x, target, threat)

    def _short_batch(self, x: Tensor, target: Tensor, threat: BatchThreat) -> None:
        """A batch that allocates what :meth:`_attack_batch` does at its peak, in fewer iterations.

        Memory does not grow with the iterations (each gradient's graph is freed before the next), so a
        subclass may run two; this base runs the whole batch.
        """
        self._attack_batch(x, target, threat)

    def _attack_mode(self) -> contextlib.AbstractContextManager[None]:
        if self.device.type == "cuda" and self.cudnn:
            return lstm_kernel_mode(self.model)
        return _eval_mode(self.model)

    def _cudnn_handled(self) -> contextlib.AbstractContextManager[None]:
        if self.device.type == "cuda" and not self.cudnn:
            return torch.backends.cudnn.flags(enabled=False)
        return contextlib.nullcontext()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


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


def _empty_outcome(threat: Threat) -> dict[str, np.ndarray]:
    deltas = np.zeros((0, *CELL_SHAPE), dtype=np.float32)
    logits = np.zeros((0, N_CLASSES), dtype=np.float32)
    iterations = np.zeros(0, dtype=np.int64)
    extra = {}
    if isinstance(threat, RecordThreat):
        extra = {f"{which}_record_delta": np.zeros((0, *threat.variable_shape), dtype=np.float32) for which in EXAMPLES}
    return {
        **extra,
        "found": np.zeros(0, dtype=bool),
        "first_iteration": iterations,
        "first_delta": deltas,
        "first_logits": logits,
        "best_iteration": iterations,
        "best_delta": deltas,
        "best_logits": logits,
        "sparse_delta": deltas,
        "sparse_logits": logits,
    }


def _assemble(
    iterations: int,
    threshold: float,
    index: np.ndarray,
    y: Tensor,
    logits_before: Tensor,
    predicted: Tensor,
    skip: Tensor,
    outcome: dict[str, np.ndarray],
) -> AttackBatchResult:
    """Scatter the attacked rows' outcome into full-length columns (skipped rows: not found)."""
    rows = (skip == 0).numpy()
    full = {name: np.zeros((len(rows), *value.shape[1:]), dtype=value.dtype) for name, value in outcome.items()}
    for name, value in outcome.items():
        full[name][rows] = value
    records = {
        f"{which}_record_delta": full[f"{which}_record_delta"].astype(np.float32)
        for which in EXAMPLES
        if f"{which}_record_delta" in full
    }
    return AttackBatchResult(
        iterations,
        threshold,
        sample_index=index,
        label=y.numpy().astype(np.int64),
        logits_before=logits_before.numpy().astype(np.float32),
        predicted=predicted.numpy().astype(np.int64),
        skip=skip.numpy().astype(np.int8),
        found=full["found"].astype(bool),
        first_iteration=full["first_iteration"].astype(np.int64),
        first_delta=full["first_delta"].astype(np.float32),
        first_logits=full["first_logits"].astype(np.float32),
        best_iteration=full["best_iteration"].astype(np.int64),
        best_delta=full["best_delta"].astype(np.float32),
        best_logits=full["best_logits"].astype(np.float32),
        sparse_delta=full["sparse_delta"].astype(np.float32),
        sparse_logits=full["sparse_logits"].astype(np.float32),
        **records,
    )
