"""The attack base class: input checks, masks, model mode, skipping misclassified samples, cuDNN handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lstm_adv.attacks import CellThreat, L1Attack, L1Settings, RecordThreat, SampleInputs, SuccessTracker, cell_mask
from lstm_adv.attacks.base import lstm_kernel_mode
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.models import BiLSTM, Hyperparameters
from tests.attack_models import LinearModel, TinyLSTM
from tests.host_copies import host_copies

FAST = L1Settings(lam=1e-3, step_size=0.05, max_iterations=5)


def _inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 48, 19), dtype=np.float32), rng.integers(0, 2, n).astype(np.int64)


def test_cell_mask_allows_the_product_of_features_and_hours() -> None:
    """cell_mask(features, hours) allows exactly the cells in the given hours of the given features."""
    mask = cell_mask(features=[0, 5], hours=range(10, 12))
    assert mask.shape == (48, 19)
    assert mask.sum() == 4
    assert mask[10, 0]
    assert mask[11, 5]
    assert not mask[9, 0]
    assert cell_mask().all()


def test_mask_that_excludes_every_cell_is_an_error() -> None:
    """An all-False mask is refused with a message saying what to allow."""
    with pytest.raises(ConfigError) as info:
        L1Attack(LinearModel(), threat=CellThreat(mask=np.zeros((48, 19), dtype=bool)))
    assert str(info.value) == "attack mask excludes every cell (48 × 19); allow at least one feature and hour"


def test_mask_of_wrong_shape_is_an_error() -> None:
    """A mask must be bool (48, 19)."""
    with pytest.raises(ConfigError) as info:
        L1Attack(LinearModel(), threat=CellThreat(mask=np.ones(19, dtype=bool)))
    assert str(info.value) == (
        "attack mask must be a bool array of shape (48, 19), got bool (19,); "
        "build one with lstm_adv.attacks.cell_mask(features=..., hours=...)"
    )


def test_empty_input_is_an_error() -> None:
    """Attacking zero samples (an empty split) is refused before any work."""
    with pytest.raises(DataError) as info:
        L1Attack(LinearModel(), FAST).run(np.zeros((0, 48, 19), np.float32), np.zeros(0, np.int64))
    assert str(info.value) == "attack input is empty (0 samples); choose a split or subset that has samples"


def test_input_of_wrong_shape_or_range_is_an_error() -> None:
    """x must be (N, 48, 19) float32 in [0, 1]; y must be (N,) in {0, 1}."""
    attack = L1Attack(LinearModel(), FAST)
    x, y = _inputs(2)
    with pytest.raises(DataError) as info:
        attack.run(x[:, :, :18], y)
    assert str(info.value) == "attack input must have shape (N, 48, 19), got (2, 48, 18)"
    with pytest.raises(DataError) as info:
        attack.run(x.astype(np.float64), y)
    assert str(info.value) == "attack input must be float32, got float64"
    with pytest.raises(DataError) as info:
        attack.run(x + 1, y)
    assert str(info.value) == "attack input must be finite and lie in [0, 1]; normalize it with the features run"
    with pytest.raises(DataError) as info:
        attack.run(x, y + 2)
    assert str(info.value) == "attack labels must have shape (2,) with values 0 or 1, got shape (2,)"


def test_batch_size_must_be_positive() -> None:
    """A batch size below one is a configuration error."""
    with pytest.raises(ConfigError) as info:
        L1Attack(LinearModel(), FAST, batch_size=0)
    assert str(info.value) == "attack batch size must be ≥ 1, got 0"


def test_model_is_in_eval_mode_during_the_attack_and_restored_after() -> None:
    """Every forward of the attack sees eval mode; a model in training mode is put back into it afterwards."""
    model = TinyLSTM(dropout=0.5, layers=2)
    model.train()
    x, y = _inputs(3)
    L1Attack(model, FAST, include_misclassified=True).run(x, y)
    assert model.modes_seen
    assert not any(model.modes_seen)
    assert model.training


def test_misclassified_samples_are_skipped_unless_included() -> None:
    """By default samples the model gets wrong are not attacked and carry the reason 'misclassified'."""
    model = TinyLSTM()
    x, y = _inputs(12, seed=3)
    predicted = model.eval()(torch.from_numpy(x)).argmax(1).numpy()
    y = np.where(np.arange(12) < 6, predicted, 1 - predicted)  # six right, six wrong
    skipped = L1Attack(model, FAST).run(x, y)
    assert skipped.attacked.tolist() == [True] * 6 + [False] * 6
    assert not skipped.found[6:].any()
    assert {r.first.reason for r in skipped.results()[6:]} == {"misclassified"}  # type: ignore[union-attr]
    included = L1Attack(model, FAST, include_misclassified=True).run(x, y)
    assert included.attacked.all()


def test_progress_counts_attacked_samples_and_index_passes_through() -> None:
    """progress(n) is called once per batch; sample_index is stored as given."""
    x, y = _inputs(7)
    seen: list[int] = []
    result = L1Attack(LinearModel(), FAST, batch_size=3, include_misclassified=True).run(
        x, y, sample_index=np.arange(100, 107), progress=seen.append
    )
    assert seen == [3, 3, 1]
    assert result.sample_index.tolist() == list(range(100, 107))


def test_cuda_device_without_cuda_is_an_error() -> None:
    """Asking for CUDA where there is none is a configuration error naming the fix."""
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError) as info:
        L1Attack(LinearModel(), device="cuda")
    assert str(info.value) == "attack device 'cuda' needs CUDA, which is not available; use --device cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("layers", [1, 2])
def test_logits_under_attack_equal_eval_mode_logits_on_cuda(layers: int) -> None:
    """On CUDA the attack's forward and backward (cuDNN in the kernel mode, or native kernels) give the
    eval-mode logits and input gradients of native kernels (TF32 off: float32 tolerance)."""
    model = TinyLSTM(hidden=32, layers=layers, dropout=0.5).cuda().eval()
    x = torch.rand(64, 48, 19, device="cuda")
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN refuses RNN backward in eval mode
        expected, expected_grad = _logits_and_gradient(model, x)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for cudnn in (True, False):
            attack = L1Attack(model, FAST, device="cuda", cudnn=cudnn)
            with attack._attack_mode():
                logits, grad = attack._gradient(x, lambda z: z[:, 1] - z[:, 0])
                again = attack._forward(x)
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(again, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4)
    assert model.lstm.dropout == (0.5 if layers > 1 else 0.0)
    assert not model.training


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attack_loop_never_synchronises_with_the_host() -> None:
    """Inside one batch's iteration loop no operation waits for the GPU (CUDA sync debug mode 'error')."""
    model = TinyLSTM(hidden=32).cuda()
    x = torch.rand(16, 48, 19, device="cuda")
    target = torch.zeros(16, dtype=torch.int64, device="cuda")
    for method in ("ista", "fista", "adam"):
        attack = L1Attack(model, L1Settings(method=method, max_iterations=5, search_steps=2), device="cuda")
        problem = attack._problem(target, attack.threat.batch(x, SampleInputs()))
        tracker = SuccessTracker(x, attack.boundary)
        lam = torch.full((16, 1, 1), 0.05, device="cuda")
        run = {"ista": attack._ista, "fista": attack._fista, "adam": attack._adam}[method]
        with attack._attack_mode():
            torch.cuda.set_sync_debug_mode("error")
            try:
                found = run(problem, lam, tracker, offset=0)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert found.shape == (16,)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cudnn_and_native_kernels_give_the_same_attack() -> None:
    """The cuDNN path and the native-kernel path find the same δ for a seeded batch (float tolerance)."""
    model = TinyLSTM(hidden=32, layers=2, dropout=0.3, seed=2).cuda()
    x, y = _inputs(32, seed=9)
    settings = L1Settings(lam=0.01, step_size=0.1, max_iterations=20, search_steps=2)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        fast = L1Attack(model, settings, device="cuda", cudnn=True, include_misclassified=True).run(x, y)
        slow = L1Attack(model, settings, device="cuda", cudnn=False, include_misclassified=True).run(x, y)
    assert (fast.found == slow.found).mean() > 0.95
    both = fast.found & slow.found
    np.testing.assert_allclose(fast.first_delta[both], slow.first_delta[both], atol=1e-3)


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_kernel_mode_gives_eval_logits_and_gradients_and_restores_modes(layers: int) -> None:
    """With only the LSTM in train mode and its dropout at 0, logits and input gradients equal eval mode's
    (dropout 0.5 elsewhere stays off); modes and dropout come back afterwards, also after an exception."""
    model = TinyLSTM(hidden=16, layers=layers, dropout=0.5, seed=layers)
    model.train()
    x = torch.rand(8, 48, 19)

    def logits_and_grad() -> tuple[torch.Tensor, torch.Tensor]:
        point = x.clone().requires_grad_(True)
        logits = model(point)
        (grad,) = torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), point)
        return logits.detach(), grad

    model.eval()
    expected = logits_and_grad()
    model.train()
    with lstm_kernel_mode(model):
        assert model.lstm.training
        assert not model.dropout.training
        assert model.lstm.dropout == 0.0
        got = logits_and_grad()
    torch.testing.assert_close(got[0], expected[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], expected[1], atol=1e-6, rtol=0)
    assert model.training
    assert model.lstm.training
    assert model.dropout.training
    assert model.lstm.dropout == (0.5 if layers > 1 else 0.0)
    model.eval()
    with pytest.raises(RuntimeError), lstm_kernel_mode(model):
        raise RuntimeError("the attack failed")
    assert not model.training
    assert not model.lstm.training


@pytest.mark.parametrize("threat_name", ["all", "record"])
def test_the_attacks_iteration_loop_makes_no_device_to_host_copy(
    monkeypatch: pytest.MonkeyPatch, threat_name: str
) -> None:
    """No .item(), .cpu(), bool() or .tolist() of a tensor inside the iteration loops of any method, for a cell
    threat and for the record threat (whose fill runs in the loop)."""
    model = TinyLSTM(hidden=8)
    x = torch.rand(6, 48, 19)
    target = torch.zeros(6, dtype=torch.int64)
    record = torch.rand(6, 49, 19).masked_fill(torch.rand(6, 49, 19) < 0.7, float("nan"))
    threat = CellThreat() if threat_name == "all" else RecordThreat(torch.full((19,), 0.5))
    for method in ("ista", "fista", "adam"):
        attack = L1Attack(model, L1Settings(method=method, max_iterations=4, search_steps=1), threat=threat)
        batch = attack.threat.batch(x, SampleInputs(record=record if threat_name == "record" else None))
        problem = attack._problem(target, batch)
        tracker = SuccessTracker(batch.zeros(), attack.boundary)
        lam = torch.full((6, 1, 1), 0.05)
        run = {"ista": attack._ista, "fista": attack._fista, "adam": attack._adam}[method]
        with host_copies(monkeypatch) as copies, attack._attack_mode():
            run(problem, lam, tracker, offset=0)
        assert copies == [], method


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_kernel_mode_of_the_bilstm_gives_eval_logits_and_gradients(layers: int) -> None:
    """The project's BiLSTM with dropout 0.4 (between LSTM layers and in its head): the kernel mode's logits
    and input gradients equal eval mode's within 1e-6."""
    torch.manual_seed(layers)
    model = BiLSTM(_hyperparameters(layers=layers, dropout=0.4))
    x = torch.rand(8, 48, 19)
    model.eval()
    expected = _logits_and_gradient(model, x)
    model.train()
    with lstm_kernel_mode(model):
        assert model.lstm.training
        got = _logits_and_gradient(model, x)
    torch.testing.assert_close(got[0], expected[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], expected[1], atol=1e-6, rtol=0)
    assert model.training
    assert model.lstm.dropout == (0.4 if layers > 1 else 0.0)


class _FailingLSTM(TinyLSTM):
    """Raises on its third forward pass (an attack that fails half-way)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, until the third call."""
        if len(self.modes_seen) == 2:
            raise RuntimeError("the device failed")
        return super().forward(x)


@pytest.mark.parametrize("kernel_mode", [False, True])
def test_modes_and_dropout_are_restored_when_the_attack_raises(
    kernel_mode: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attack that raises half-way leaves every module in the mode it had and the LSTM its dropout, on the
    eval-mode path (CPU, native kernels) and on the cuDNN path's kernel mode alike."""
    if kernel_mode:  # the cuDNN path's mode switch, taken on a CPU
        monkeypatch.setattr(L1Attack, "_attack_mode", lambda self: lstm_kernel_mode(self.model))
    model = _FailingLSTM(hidden=8, layers=2, dropout=0.3)
    model.train()
    x, y = _inputs(4)
    with pytest.raises(RuntimeError, match="the device failed"):
        L1Attack(model, FAST, include_misclassified=True).run(x, y)
    assert all(module.training for module in model.modules())
    assert model.lstm.dropout == 0.3
    model.eval()
    model.modes_seen.clear()
    with pytest.raises(RuntimeError, match="the device failed"):
        L1Attack(model, FAST, include_misclassified=True).run(x, y)
    assert not any(module.training for module in model.modules())
    assert model.lstm.dropout == 0.3


def test_auto_batch_size_is_the_cpu_default_and_never_more_than_the_limit() -> None:
    """On a CPU "auto" is 256 samples per batch, or fewer when one call attacks fewer (``max_batch_size``)."""
    assert L1Attack(LinearModel(), FAST, batch_size="auto").batch_size == 256
    assert L1Attack(LinearModel(), FAST, batch_size="auto", max_batch_size=64).batch_size == 64
    assert L1Attack(LinearModel(), FAST, batch_size=3, max_batch_size=64).batch_size == 3


def _hyperparameters(*, layers: int, dropout: float, hidden: int = 16) -> Hyperparameters:
    return Hyperparameters(
        hidden_size=hidden,
        num_layers=layers,
        lstm_activation="tanh",
        dropout=dropout,
        fc_size=16,
        fc_activation="relu",
        optimizer="adam",
        learning_rate=1e-3,
        batch_size=32,
    )


def _logits_and_gradient(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at x and the input gradient of Σ (z₁ − z₀)."""
    point = x.clone().requires_grad_(True)
    logits = model(point)
    (grad,) = torch.autograd.grad((logits[:, 1] - logits[:, 0]).sum(), point)
    return logits.detach(), grad
