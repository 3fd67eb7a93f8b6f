"""The inner training loop: tensors on the device, batches as index slices, early stopping on validation.

No per-sample ``DataLoader`` collate: the split's tensors are moved to the device once and every
batch is an index slice of a seeded permutation (or of a seeded weighted draw with replacement,
when imbalance is handled by weighted sampling). Validation is always the unresampled split.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from lstm_adv import metrics
from lstm_adv.config import DEVICES, ModelConfig
from lstm_adv.domain.errors import ConfigError
from lstm_adv.models import BiLSTM, Hyperparameters

log = logging.getLogger(__name__)

# (inputs, labels, row indices into the split) → the inputs to train on. Shape: (B, 48, 19).
BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (inputs, labels, row indices into the split) → the batch's loss to minimize (a scalar), computed in
# training mode; replaces ``criterion(model(x), y)`` (TRADES adds a term on adversarial inputs).
BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@attrs.frozen
class EpochRecord:
    """One epoch: mean training loss (as optimized) and the unresampled validation split's loss and AUROC."""

    epoch: int
    train_loss: float
    val_loss: float
    val_auroc: float
    seconds: float


@attrs.frozen
class FitResult:
    """A trained network with its best-epoch weights loaded, and how it got there."""

    model: BiLSTM = attrs.field(eq=False)
    history: tuple[EpochRecord, ...]
    best_epoch: int
    best_value: float


@attrs.frozen
class SplitTensors:
    """One split's inputs and labels on the training device. Shapes: x (n, 48, 19), y (n,)."""

    x: torch.Tensor = attrs.field(eq=False)
    y: torch.Tensor = attrs.field(eq=False)

    @classmethod
    def from_arrays(cls, x: NDArray[np.float32], y: NDArray[np.int64], device: torch.device) -> SplitTensors:
        """Copy numpy arrays to ``device`` once."""
        return cls(x=torch.from_numpy(np.ascontiguousarray(x)).to(device), y=torch.from_numpy(y).to(device))


EpochCallback = Callable[[EpochRecord], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; asking for CUDA without one is a :class:`ConfigError`."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA device is available; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_optimizer(params: Hyperparameters, model: nn.Module) -> torch.optim.Optimizer:
    """Adam, RMSprop or SGD (momentum 0.9) at the chosen learning rate."""
    if params.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    if params.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=params.learning_rate)
    if params.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=params.learning_rate, momentum=0.9)
    raise ConfigError(f"optimizer must be one of adam, rmsprop, sgd; got {params.optimizer!r}")


def epoch_order(labels: torch.Tensor, imbalance: str, generator: torch.Generator) -> torch.Tensor:
    """Training sample order for one epoch: a permutation, or a class-balanced draw with replacement. Shape: (n,)."""
    n = labels.shape[0]
    if imbalance != "weighted_sampling":
        return torch.randperm(n, generator=generator)
    counts = torch.bincount(labels.cpu(), minlength=2).double()
    weights = (1.0 / counts.clamp(min=1.0))[labels.cpu()]
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def loss_function(labels: torch.Tensor, imbalance: str) -> nn.CrossEntropyLoss:
    """Cross-entropy on logits; class-weighted (n / (2 nₖ)) when that is the imbalance setting."""
    if imbalance != "class_weighted_loss":
        return nn.CrossEntropyLoss()
    counts = torch.bincount(labels, minlength=2).float().clamp(min=1.0)
    return nn.CrossEntropyLoss(weight=labels.shape[0] / (2.0 * counts))


def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits in evaluation mode without gradients. Shape: (n, 48, 19) → (n, 2)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        parts = [model(x[start : start + batch_size]) for start in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(parts) if parts else torch.empty((0, 2), device=x.device)


def probabilities(logits: torch.Tensor) -> NDArray[np.float64]:
    """P(class 1) from logits, as float64 numpy. Shape: (n, 2) → (n,)."""
    return torch.softmax(logits.double(), dim=1)[:, 1].cpu().numpy()


def fit_model(
    train: SplitTensors,
    validation: SplitTensors,
    params: Hyperparameters,
    config: ModelConfig,
    *,
    max_epochs: int | None = None,
    on_epoch: EpochCallback | None = None,
    tensorboard_dir: Path | None = None,
) -> FitResult:
    """Train a :class:`BiLSTM` on ``train``, early-stopping on the unresampled ``validation`` split.

    ``on_epoch`` sees every epoch's record (a tuning trial reports and may raise to prune). The
    returned model carries the weights of the best epoch by ``config.monitor``. Seeded: on CPU two
    calls with the same seed and thread count give identical weights (CPU kernels are deterministic,
    so ``torch.use_deterministic_algorithms`` — which also NaN-fills every new buffer, ~20 % slower
    per epoch here — is not needed); cuDNN's LSTM on CUDA is not bitwise reproducible.
    """
    device = train.x.device
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = BiLSTM(params).to(device)
    state = _LoopState(model, build_optimizer(params, model), loss_function(train.y, config.imbalance))
    writer = summary_writer(tensorboard_dir)
    try:
        for epoch in range(1, (max_epochs or config.max_epochs) + 1):
            record = _run_epoch(state, train, validation, params, config, generator, epoch)
            _log_epoch(writer, record)
            if on_epoch is not None:
                on_epoch(record)
            if state.update_best(record, config.monitor) >= config.patience:
                break
    finally:
        if writer is not None:
            writer.close()
    model.load_state_dict(state.best_state)
    model.eval()
    return FitResult(model, tuple(state.history), best_epoch=state.best_epoch, best_value=state.best_value)


@attrs.define
class _LoopState:
    model: BiLSTM
    optimizer: torch.optim.Optimizer
    criterion: nn.CrossEntropyLoss
    history: list[EpochRecord] = attrs.Factory(list)
    best_state: dict[str, Any] = attrs.Factory(dict)
    best_epoch: int = 0
    best_value: float = float("nan")
    stale: int = 0

    def update_best(self, record: EpochRecord, monitor: str) -> int:
        """Keep the best weights in memory; return the epochs since the last improvement."""
        self.history.append(record)
        value = record.val_auroc if monitor == "auroc" else record.val_loss
        better = value > self.best_value if monitor == "auroc" else value < self.best_value
        recovered = math.isnan(self.best_value) and not math.isnan(value)  # NaN compares False: never "best"
        if self.best_epoch == 0 or better or recovered:
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.best_epoch, self.best_value, self.stale = record.epoch, value, 0
        else:
            self.stale += 1
        return self.stale


def _run_epoch(
    state: _LoopState,
    train: SplitTensors,
    validation: SplitTensors,
    params: Hyperparameters,
    config: ModelConfig,
    generator: torch.Generator,
    epoch: int,
) -> EpochRecord:
    started = time.perf_counter()
    train_loss = train_epoch(
        state.model,
        state.optimizer,
        state.criterion,
        train,
        params.batch_size,
        order=epoch_order(train.y, config.imbalance, generator),
        clip=config.grad_clip_norm,
    )
    val_loss, val_auroc = validation_scores(state.model, validation, config.eval_batch_size)
    return EpochRecord(epoch, train_loss, val_loss, val_auroc, seconds=time.perf_counter() - started)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    train: SplitTensors,
    batch_size: int,
    *,
    order: torch.Tensor,
    clip: float,
    transform: BatchTransform | None = None,
    batch_loss: BatchLoss | None = None,
) -> float:
    """One pass over ``order`` (indices into the on-device split) in batches of index slices; mean loss.

    ``transform(x, y, rows)`` may replace a batch's inputs just before its step (adversarial training
    makes its examples there, against the weights of that very step); ``batch_loss(x, y, rows)``, if
    given, is the loss of the step instead of ``criterion(model(x), y)``.
    """
    order = order.to(train.x.device)
    model.train()
    total = torch.zeros((), device=train.x.device)
    for start in range(0, order.shape[0], batch_size):
        batch = order[start : start + batch_size]
        x, y = train.x[batch], train.y[batch]
        if transform is not None:
            x = transform(x, y, batch)
        loss = criterion(model(x), y) if batch_loss is None else batch_loss(x, y, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        total += loss.detach() * batch.shape[0]
    return float(total) / max(order.shape[0], 1)  # one device sync per epoch, not per batch


def validation_scores(model: nn.Module, split: SplitTensors, batch_size: int) -> tuple[float, float]:
    """Unweighted cross-entropy and AUROC of ``model`` on the split as it is (natural prevalence)."""
    logits = predict_logits(model, split.x, batch_size)
    loss = float(nn.functional.cross_entropy(logits, split.y))
    scores = probabilities(logits)
    if not np.isfinite(scores).all():  # a diverged model scores NaN (a pruner prunes it), never an exception
        return loss, float("nan")
    return loss, metrics.auroc(split.y.cpu().numpy(), scores)


def summary_writer(folder: Path | None) -> Any:
    """A TensorBoard ``SummaryWriter`` logging to ``folder`` (None: no writer)."""
    if folder is None:
        return None
    from torch.utils.tensorboard import SummaryWriter  # heavy import, only when a run is written

    return SummaryWriter(log_dir=str(folder))


def write_hparams(folder: Path, hparams: dict[str, Any], results: dict[str, float]) -> None:
    """Record a finished run's hyperparameters and results for TensorBoard's HPARAMS tab (the results also
    as scalars), in the run's own log folder."""
    writer = summary_writer(folder)
    try:
        values = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in hparams.items()}
        finite = {k: float(v) for k, v in results.items() if math.isfinite(v)}
        writer.add_hparams(values, finite, run_name=".")  # also writes each result as a scalar
    finally:
        writer.close()


def _log_epoch(writer: Any, record: EpochRecord) -> None:
    log.info(
        "epoch %d: train loss %.4f, validation loss %.4f, validation AUROC %.4f (%.1f s)",
        record.epoch,
        record.train_loss,
        record.val_loss,
        record.val_auroc,
        record.seconds,
    )
    if writer is None:
        return
    for tag, value in epoch_scalars(record).items():
        writer.add_scalar(tag, value, record.epoch)


def epoch_scalars(record: EpochRecord) -> dict[str, float]:
    """The TensorBoard scalars of one epoch (tag → value), the same for trained and defended models."""
    return {
        "loss/train": record.train_loss,
        "loss/validation": record.val_loss,
        "auroc/validation": record.val_auroc,
        "seconds/epoch": record.seconds,
    }
