"""PGD: ε = 0, bounds (ε-ball, box, masks), closed-form steps, targeted and untargeted effect, batching, eval mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lstm_adv.attacks import CellThreat, PgdAttack, PgdSettings, SuccessTracker
from lstm_adv.config import PgdConfig
from lstm_adv.domain.errors import ConfigError
from lstm_adv.domain.perturbation import AttackBatchResult
from tests.attack_models import LinearModel, TinyLSTM, TinyMLP
from tests.host_copies import host_copies
from tests.strategies import attack_inputs, cell_masks

MODEL = TinyLSTM(seed=1).eval()
norms = st.sampled_from(("linf", "l2"))


def _inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((n, 48, 19), dtype=np.float32)), torch.from_numpy(rng.integers(0, 2, n))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_budget_gives_exactly_zero(norm: str) -> None:
    """ε = 0 returns δ = 0 exactly, with or without a random start, targeted or not."""
    x, y = _inputs(5)
    for target in (None, 0):
        settings = PgdSettings(eps=0.0, norm=norm, target=target, random_start=True)
        delta = PgdAttack(MODEL, settings).perturb(x, y)
        assert torch.equal(delta, torch.zeros_like(x))
        assert torch.equal(x + delta, x)


@given(
    data=attack_inputs(max_samples=4),
    norm=norms,
    eps=st.floats(0.001, 0.8),
    start=st.booleans(),
    mask=st.none() | cell_masks(),
)
def test_output_lies_in_the_ball_the_box_and_the_mask(
    data: tuple[np.ndarray, np.ndarray], norm: str, eps: float, start: bool, mask: np.ndarray | None
) -> None:
    """x + δ stays in [0, 1], δ in the ε-ball of its norm, and masked cells are untouched."""
    x, y = (torch.from_numpy(a) for a in data)
    settings = PgdSettings(eps=eps, norm=norm, iterations=4, step_size=eps / 2, random_start=start, seed=3)
    delta = PgdAttack(MODEL, settings, threat=CellThreat(mask=mask)).perturb(x, y)
    adv = x + delta
    assert bool(((adv >= 0) & (adv <= 1)).all())
    size = delta.abs().flatten(1).amax(dim=1) if norm == "linf" else torch.linalg.vector_norm(delta.flatten(1), dim=1)
    assert bool((size <= eps * (1 + 1e-5) + 1e-7).all())
    if mask is not None:
        assert bool((delta[:, ~torch.from_numpy(mask)] == 0).all())


def test_linf_steps_match_the_closed_form_on_a_linear_model() -> None:
    """On a linear model sign(∇CE) is sign(w_other − w_y): K steps of α, clipped to ε and the box."""
    model = LinearModel(seed=2, scale=0.05).eval()
    x, y = _inputs(3, seed=4)
    settings = PgdSettings(eps=0.05, step_size=0.02, iterations=2, norm="linf", random_start=False)
    delta = PgdAttack(model, settings).perturb(x, y)
    w = model.weight.detach().reshape(2, 48, 19)
    direction = torch.sign(w[1 - y] - w[y])
    expected = torch.minimum(torch.maximum((2 * 0.02 * direction).clamp(-0.05, 0.05), -x), 1 - x)
    assert torch.allclose(delta, expected, atol=1e-7)


def test_l2_step_is_normalized_per_sample() -> None:
    """One L2 step without a random start has length α per sample (below ε, away from the box)."""
    model = LinearModel(seed=2).eval()
    x = torch.full((3, 48, 19), 0.5)
    y = torch.tensor([0, 1, 0])
    settings = PgdSettings(eps=1.0, step_size=0.1, iterations=1, norm="l2", random_start=False)
    delta = PgdAttack(model, settings).perturb(x, y)
    assert torch.allclose(torch.linalg.vector_norm(delta.flatten(1), dim=1), torch.full((3,), 0.1), atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targeted_attack_moves_predictions_to_the_target(norm: str) -> None:
    """Targeted PGD raises P(target) for every sample and turns most predictions into the target on a fragile model."""
    model = LinearModel(seed=5, scale=0.2).eval()
    x, y = _inputs(40, seed=6)
    eps = 0.1 if norm == "linf" else 2.0
    for target in (0, 1):
        settings = PgdSettings(eps=eps, iterations=10, norm=norm, target=target, random_start=False)
        delta = PgdAttack(model, settings).perturb(x, y)
        with torch.no_grad():
            before = torch.softmax(model(x), dim=1)[:, target]
            after = torch.softmax(model(x + delta), dim=1)[:, target]
        assert bool((after > before).all())
        assert float((model(x + delta).argmax(dim=1) == target).float().mean()) > 0.9


def test_untargeted_attack_lowers_accuracy() -> None:
    """Untargeted PGD against the labels turns correct predictions of a fragile model into errors."""
    model = LinearModel(seed=5, scale=0.2).eval()
    x, _ = _inputs(40, seed=7)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    delta = PgdAttack(model, PgdSettings(eps=0.1, iterations=10)).perturb(x, y)
    with torch.no_grad():
        accuracy = float((model(x + delta).argmax(dim=1) == y).float().mean())
    assert accuracy < 0.1


def test_batched_equals_one_at_a_time() -> None:
    """Without a random start, attacking a batch gives each sample the δ it gets alone."""
    model = TinyMLP(seed=1).eval()
    x, y = _inputs(5, seed=8)
    settings = PgdSettings(eps=0.1, iterations=5, norm="l2", random_start=False)
    together = PgdAttack(model, settings, batch_size=5).perturb(x, y)
    alone = torch.cat([PgdAttack(model, settings).perturb(x[i : i + 1], y[i : i + 1]) for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_random_start_is_seeded() -> None:
    """Two attacks with the same seed give the same δ; another seed gives another one."""
    x, y = _inputs(4, seed=9)
    first, second, other = (
        PgdAttack(MODEL, PgdSettings(eps=0.05, iterations=2, seed=s)).perturb(x, y) for s in (1, 1, 2)
    )
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_attack_runs_in_eval_mode_and_restores_training_mode() -> None:
    """Every forward of the attack sees eval mode (dropout off); a model in training mode is returned to it."""
    model = TinyLSTM(seed=2, dropout=0.5).train()
    x, y = _inputs(3)
    PgdAttack(model, PgdSettings(eps=0.05, iterations=3)).perturb(x, y)
    assert model.modes_seen
    assert not any(model.modes_seen)
    assert model.training


def test_base_run_records_flips() -> None:
    """Through the base class, PGD stores a success for every flipped sample, with δ inside the ball."""
    model = LinearModel(seed=5, scale=0.2).eval()
    x, y = _inputs(10, seed=10)
    result = PgdAttack(model, PgdSettings(eps=0.1, iterations=10, random_start=False)).run(x.numpy(), y.numpy())
    assert isinstance(result, AttackBatchResult)
    assert result.found.sum() > 0
    assert np.abs(result.best_delta).max() <= 0.1 + 1e-7
    flipped = model(x + torch.from_numpy(result.best_delta)).argmax(dim=1).numpy() != result.predicted
    assert np.array_equal(flipped[result.found], np.ones(int(result.found.sum()), dtype=bool))


def test_negative_budget_is_refused() -> None:
    """A negative ε is a ConfigError naming the rule and the value."""
    with pytest.raises(ConfigError) as info:
        PgdSettings(eps=-0.1)
    assert str(info.value) == "PgdSettings.eps must be finite and ≥ 0, got -0.1"


def test_unknown_norm_is_refused() -> None:
    """An unknown norm or attack name is a ConfigError listing the known ones."""
    with pytest.raises(ConfigError) as info:
        PgdSettings(norm="l1")
    assert str(info.value) == "PgdSettings.norm must be one of linf, l2; got 'l1'"
    with pytest.raises(ConfigError) as info:
        PgdSettings.from_config(PgdConfig(), attack="pgd-l3", eps=0.1)
    assert str(info.value) == "attack must be one of pgd-linf, pgd-l2; got 'pgd-l3'"


def test_config_maps_auto_step_and_untargeted() -> None:
    """In the config, step_size "auto" means 2.5·ε/iterations and target "none" means untargeted."""
    settings = PgdSettings.from_config(PgdConfig(iterations=10), attack="pgd-l2", eps=0.2)
    assert settings.norm == "l2"
    assert settings.target is None
    assert settings.alpha == pytest.approx(0.05)
    assert PgdSettings.from_config(PgdConfig(target=0), attack="pgd-linf", eps=0.2).target == 0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_pgd_loop_makes_no_device_to_host_copy(norm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No .item(), .cpu(), bool() or .tolist() of a tensor in PGD's iterations, however many (random start,
    tracked successes and all)."""
    x, y = _inputs(6)
    for iterations in (2, 6):
        attack = PgdAttack(TinyLSTM(hidden=8), PgdSettings(eps=0.1, iterations=iterations, norm=norm))
        with host_copies(monkeypatch) as copies, attack._attack_mode():
            threat = attack._batch_threat(x, None)
            attack._descend(x, y, threat)
            attack._descend(x, y, threat, SuccessTracker(x, attack.boundary))
        assert copies == [], iterations


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_pgd_loop_never_synchronises_with_the_host(norm: str) -> None:
    """Inside one batch's PGD iterations no operation waits for the GPU (CUDA sync debug mode 'error')."""
    x = torch.rand(16, 48, 19, device="cuda")
    y = torch.randint(0, 2, (16,), device="cuda")
    attack = PgdAttack(TinyLSTM(hidden=32, layers=2, dropout=0.2).cuda(), PgdSettings(eps=0.1, norm=norm))
    with attack._attack_mode():
        torch.cuda.set_sync_debug_mode("error")
        try:
            delta = attack._descend(x, y, attack._batch_threat(x, None), SuccessTracker(x, attack.boundary))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert delta.shape == x.shape


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cudnn_and_native_kernels_give_the_same_pgd_examples() -> None:
    """PGD (L2, seeded random start) finds the same δ on the cuDNN path as with native kernels (TF32 off),
    for a two-layer model with dropout, as adversarial training uses it."""
    model = TinyLSTM(hidden=32, layers=2, dropout=0.3, seed=4).cuda().train()
    x = torch.rand(64, 48, 19, device="cuda")
    y = torch.randint(0, 2, (64,), device="cuda")
    settings = PgdSettings(eps=0.5, iterations=10, norm="l2", random_start=True, seed=3)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        fast = PgdAttack(model, settings, cudnn=True).perturb(x, y)
        slow = PgdAttack(model, settings, cudnn=False).perturb(x, y)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-3)
    assert model.training
    assert model.lstm.dropout == 0.3
