"""TRADES: the KL attack stays in the ball and the box, ignores labels, beats random points; the loss is CE + β·KL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lstm_adv.attacks import PgdSettings
from lstm_adv.attacks.trades import TradesAttack, kl_per_sample, trades_loss
from tests.attack_models import TinyLSTM

MODEL = TinyLSTM(seed=1).eval()


def _inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((n, 48, 19), dtype=np.float32)), torch.from_numpy(rng.integers(0, 2, n))


def _kl_at(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return kl_per_sample(torch.log_softmax(MODEL(x), dim=1), MODEL(x + delta))


@given(seed=st.integers(0, 2**16), norm=st.sampled_from(("linf", "l2")), eps=st.floats(0.01, 0.5))
def test_examples_lie_in_the_ball_and_the_box(seed: int, norm: str, eps: float) -> None:
    """Every example is inside the ε-ball of its norm and x + δ inside [0, 1]."""
    x, y = _inputs(3, seed)
    delta = TradesAttack(MODEL, PgdSettings(eps=eps, iterations=3, norm=norm, seed=seed)).perturb(x, y)
    assert bool(((x + delta) >= 0).all())
    assert bool(((x + delta) <= 1).all())
    size = delta.abs().flatten(1).amax(1) if norm == "linf" else torch.linalg.vector_norm(delta.flatten(1), dim=1)
    assert bool((size <= eps * (1 + 1e-5) + 1e-7).all())


def test_labels_are_not_used_and_the_start_is_random() -> None:
    """The KL attack moves away from the model's own prediction: the labels do not matter; even with random_start
    off it starts at a random point (at δ = 0 the KL has no gradient), so δ is not 0."""
    x, y = _inputs(4)
    settings = PgdSettings(eps=0.1, iterations=5, random_start=False)
    first = TradesAttack(MODEL, settings).perturb(x, y)
    second = TradesAttack(MODEL, settings).perturb(x, 1 - y)
    assert torch.equal(first, second)
    assert bool((first.flatten(1).abs().amax(1) > 0).all())


def test_the_attack_finds_a_larger_divergence_than_random_points() -> None:
    """The maximized KL beats the KL at the random start of the same attack (its first point) for every sample."""
    x, y = _inputs(6, seed=3)
    settings = PgdSettings(eps=0.2, iterations=20)
    start = TradesAttack(MODEL, PgdSettings(eps=0.2, iterations=1, step_size=1e-12)).perturb(x, y)
    attacked = TradesAttack(MODEL, settings).perturb(x, y)
    assert bool((_kl_at(x, attacked) > _kl_at(x, start)).all())


def test_trades_loss_is_clean_cross_entropy_plus_beta_times_kl() -> None:
    """trades_loss equals CE(z(x), y) + β · mean_i KL(p(x_i) ‖ p(x'_i)) computed by hand; β = 0 leaves the CE."""
    x, y = _inputs(5)
    x_adv = (x + 0.1 * torch.rand_like(x)).clamp(0, 1)
    criterion = nn.CrossEntropyLoss()
    with torch.no_grad():
        p, q = torch.softmax(MODEL(x), dim=1), torch.softmax(MODEL(x_adv), dim=1)
        ce = criterion(MODEL(x), y)
        kl = (p * (p.log() - q.log())).sum(1).mean()
        assert float(trades_loss(MODEL, criterion, x, x_adv, y, 2.5)) == pytest.approx(float(ce + 2.5 * kl), rel=1e-5)
        assert float(trades_loss(MODEL, criterion, x, x_adv, y, 0.0)) == pytest.approx(float(ce), rel=1e-6)
        assert float(trades_loss(MODEL, criterion, x, x, y, 4.0)) == pytest.approx(float(ce), rel=1e-6)
