"""The training step loop: no host copy per batch, and adversarial examples made inside it in the attack's mode."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lstm_adv.attacks import PgdAttack, PgdSettings
from lstm_adv.attacks.base import lstm_kernel_mode
from lstm_adv.models import BiLSTM, Hyperparameters
from lstm_adv.training_loop import BatchTransform, SplitTensors, build_optimizer, train_epoch
from tests.attack_models import TinyLSTM
from tests.host_copies import host_copies

PARAMS = Hyperparameters(
    hidden_size=8,
    num_layers=2,
    lstm_activation="tanh",
    dropout=0.3,
    fc_size=8,
    fc_activation="relu",
    optimizer="adam",
    learning_rate=1e-3,
    batch_size=4,
)


def _split(n: int, device: str = "cpu") -> SplitTensors:
    generator = torch.Generator().manual_seed(n)
    x, y = torch.rand(n, 48, 19, generator=generator), torch.randint(0, 2, (n,), generator=generator)
    return SplitTensors(x.to(device), y.to(device))


def _epoch(model: nn.Module, split: SplitTensors, transform: BatchTransform | None = None) -> float:
    optimizer = build_optimizer(PARAMS, model)
    order = torch.arange(len(split.y))
    return train_epoch(model, optimizer, nn.CrossEntropyLoss(), split, 4, order=order, clip=1.0, transform=transform)


def _adversarial(attack: PgdAttack) -> BatchTransform:
    """Every row of a batch replaced by its PGD example against the current weights (adaptive training)."""
    return lambda x, y, rows: x + attack.perturb(x, y)


@pytest.mark.parametrize("adversarial", [False, True])
def test_the_training_loop_copies_to_the_host_once_per_epoch_not_per_batch(
    adversarial: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The toolkit's code reads one value back per epoch (the mean loss), for 1 batch as for 5, with or
    without PGD examples made inside each step (torch's optimizers may read their own CPU counters)."""
    for n in (4, 20):
        model = BiLSTM(PARAMS)
        attack = PgdAttack(model, PgdSettings(eps=0.1, iterations=2))
        transform = _adversarial(attack) if adversarial else None
        with host_copies(monkeypatch, called_from="lstm_adv") as copies:
            loss = _epoch(model, _split(n), transform)
        assert copies == ["__float__"], n
        assert loss > 0


class _ModeRecorder(TinyLSTM):
    """Records, at every forward, whether the model and its LSTM are in train mode and the LSTM's dropout."""

    def __init__(self) -> None:
        super().__init__(hidden=8, layers=2, dropout=0.3)
        self.states: list[tuple[bool, bool, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, after noting the modes."""
        self.states.append((self.training, self.lstm.training, self.lstm.dropout))
        return super().forward(x)


def test_adversarial_examples_inside_training_use_the_kernel_mode_and_steps_train_with_dropout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the cuDNN path's mode switch (taken here on a CPU), every PGD forward inside adaptive training
    sees eval mode with the LSTM in train mode and dropout 0, and every training step sees train mode with
    its dropout back."""
    monkeypatch.setattr(PgdAttack, "_attack_mode", lambda self: lstm_kernel_mode(self.model))
    model = _ModeRecorder()
    attack = PgdAttack(model, PgdSettings(eps=0.1, iterations=3, random_start=False))
    _epoch(model, _split(8), _adversarial(attack))
    per_batch = [(False, True, 0.0)] * 3 + [(True, True, 0.3)]
    assert model.states == per_batch * 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("adversarial", [False, True])
def test_the_training_loop_synchronises_with_the_host_once_per_epoch_on_cuda(adversarial: bool) -> None:
    """On CUDA an epoch of 2 batches and one of 6 wait for the device equally often (sync debug mode 'warn'):
    nothing in a step, PGD examples included, waits for the GPU."""
    model = BiLSTM(PARAMS).cuda()
    attack = PgdAttack(model, PgdSettings(eps=0.1, iterations=2))
    transform = _adversarial(attack) if adversarial else None
    _epoch(model, _split(8, "cuda"), transform)  # warm-up: cuDNN plans, lazy initialisation
    counts = []
    for n in (8, 24):
        split = _split(n, "cuda")
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                _epoch(model, split, transform)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1]
