"""The sparse L1 attack: prox step, batch oracle, bounds and masks, response to change, stored successes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lstm_adv.attacks import CellThreat, L1Attack, L1Settings, prox_l1_box, soft_threshold
from lstm_adv.attacks.base import margin
from lstm_adv.attacks.l1 import _SHRINK_ROUNDS, SPARSE_MARGIN
from lstm_adv.attacks.support import Search, refine_search
from lstm_adv.domain.errors import ConfigError
from lstm_adv.domain.perturbation import AttackBatchResult
from tests.attack_models import LinearModel, TinyLSTM, TinyMLP
from tests.strategies import attack_inputs, attack_methods, cell_masks

# Settings under which the tiny model is flipped within a few iterations, per method (one λ round).
SETTINGS = {
    "ista": L1Settings(lam=0.01, step_size=0.2, method="ista", max_iterations=12, search_steps=1),
    "fista": L1Settings(lam=0.01, step_size=0.1, method="fista", max_iterations=12, search_steps=1),
    "adam": L1Settings(lam=0.01, step_size=0.1, method="adam", max_iterations=12, search_steps=1),
    "greedy": L1Settings(method="greedy", max_iterations=12, search_steps=1),
}
MODEL = TinyLSTM(seed=1).eval()
MLP64 = TinyMLP(seed=1).eval()


def _inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 48, 19), dtype=np.float32), rng.integers(0, 2, n).astype(np.int64)


class _Recording(nn.Module):
    """Passes through to a model and keeps every input it was evaluated at."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        out: torch.Tensor = self.inner(x)
        return out


# --- the prox step ----------------------------------------------------------------------------------

unit = st.floats(0, 1, allow_nan=False)


@given(u=st.floats(-2, 2), low=unit, high=unit, threshold=st.floats(0, 0.5))
def test_prox_is_the_minimizer_of_the_penalized_box_problem(
    u: float, low: float, high: float, threshold: float
) -> None:
    """prox_l1_box(u) minimizes ½(d − u)² + t·|d| over d ∈ [−low, high] (checked by brute force on a grid)."""
    grid = np.linspace(-low, high, 200_001)
    brute = grid[np.argmin(0.5 * (grid - u) ** 2 + threshold * np.abs(grid))]
    got = prox_l1_box(
        torch.tensor([u], dtype=torch.float64),
        threshold,
        torch.tensor([-low], dtype=torch.float64),
        torch.tensor([high], dtype=torch.float64),
    )
    assert float(got[0]) == pytest.approx(brute, abs=2 * (low + high) / 200_000 + 1e-12)


@given(seed=st.integers(0, 2**32 - 1), threshold=st.floats(0, 1))
def test_prox_equals_soft_threshold_then_projection(seed: int, threshold: float) -> None:
    """On random arrays the prox equals sign(u)·max(|u| − t, 0) clipped to the box, element by element."""
    rng = np.random.default_rng(seed)
    u, x = rng.normal(size=(4, 48, 19)), rng.random((4, 48, 19))
    expected = np.clip(np.sign(u) * np.maximum(np.abs(u) - threshold, 0), -x, 1 - x)
    got = prox_l1_box(torch.from_numpy(u), threshold, torch.from_numpy(-x), torch.from_numpy(1 - x))
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(
        soft_threshold(torch.from_numpy(u), threshold).numpy(),
        np.sign(u) * np.maximum(np.abs(u) - threshold, 0),
        rtol=0,
        atol=1e-15,
    )


# --- oracle: a batch equals each sample alone ---------------------------------------------------------


def _batched_and_alone(
    model: nn.Module, settings: L1Settings, x: np.ndarray, y: np.ndarray, batch_size: int
) -> tuple[AttackBatchResult, AttackBatchResult]:
    batched = L1Attack(model, settings, batch_size=batch_size, include_misclassified=True).run(x, y)
    alone = AttackBatchResult.concatenate(
        [
            L1Attack(model, settings, batch_size=1, include_misclassified=True).run(x[i : i + 1], y[i : i + 1])
            for i in range(len(x))
        ]
    )
    return batched, alone


def _assert_same_results(batched: AttackBatchResult, alone: AttackBatchResult, *, exact_sparse: bool = False) -> None:
    """Equal results; the sparse values of a float32 model agree to the shrinking bisection's resolution.

    The sparse example's values come from a bisection that stops at 2⁻¹² of the way to the box bound;
    float32 reduction order (batch vs one sample) can move its last step, so those values (not their
    cells) may differ by up to that resolution.
    """
    assert batched.found.tolist() == alone.found.tolist()
    assert batched.first_iteration.tolist() == alone.first_iteration.tolist()
    assert batched.best_iteration.tolist() == alone.best_iteration.tolist()
    for name in ("first_delta", "best_delta", "first_logits", "best_logits", "logits_before"):
        np.testing.assert_allclose(getattr(batched, name), getattr(alone, name), rtol=0, atol=1e-5)
    assert np.array_equal(batched.sparse_delta != 0, alone.sparse_delta != 0)
    resolution = 1e-5 if exact_sparse else 2.0**-_SHRINK_ROUNDS
    np.testing.assert_allclose(batched.sparse_delta, alone.sparse_delta, rtol=0, atol=resolution)


@given(attack_inputs(max_samples=5), st.sampled_from(("ista", "fista")), st.integers(1, 5))
def test_a_batch_gives_the_same_results_as_each_sample_alone(
    inputs: tuple[np.ndarray, np.ndarray], method: str, batch_size: int
) -> None:
    """Attacking samples of a float32 LSTM in batches gives the results of attacking each one alone."""
    x, y = inputs
    _assert_same_results(*_batched_and_alone(MODEL, SETTINGS[method], x, y, batch_size))


@given(attack_inputs(max_samples=5), attack_methods, st.integers(1, 5))
def test_every_method_keeps_samples_independent(
    inputs: tuple[np.ndarray, np.ndarray], method: str, batch_size: int
) -> None:
    """With float32 noise removed (a float64 model), every method's batch equals its single-sample runs.

    Adam divides by √v̂, which turns float32 reduction-order differences of near-zero gradients into visible
    differences; in double precision only a real coupling between samples could make the runs differ.
    """
    x, y = inputs
    settings = attrs.evolve(SETTINGS[method], search_steps=2)
    _assert_same_results(*_batched_and_alone(MLP64, settings, x, y, batch_size), exact_sparse=True)


def test_ista_on_a_linear_model_matches_a_direct_computation() -> None:
    """On z = W·x + b, the first success (iteration and δ) equals a plain numpy ISTA run per sample."""
    model = LinearModel(seed=4)
    x, y = _inputs(8, seed=5)
    settings = L1Settings(kappa=0.2, lam=0.05, step_size=0.05, method="ista", max_iterations=40, search_steps=1)
    result = L1Attack(model, settings, include_misclassified=True).run(x, y)
    w, b = model.weight.detach().double().numpy(), model.bias.detach().double().numpy()
    for row in range(len(x)):
        iteration, delta = _numpy_ista_first_success(w, b, x[row].astype(np.float64).ravel(), settings)
        assert result.first_iteration[row] == iteration
        np.testing.assert_allclose(result.first_delta[row].ravel(), delta, rtol=0, atol=1e-5)
    assert result.found.all()


def _numpy_ista_first_success(w: np.ndarray, b: np.ndarray, x: np.ndarray, s: L1Settings) -> tuple[int, np.ndarray]:
    c = int(np.argmax(w @ x + b))
    direction = w[c] - w[1 - c]
    scale = np.abs(direction).max()  # the gradient scale G of the scale-free step
    delta = np.zeros_like(x)
    for iteration in range(1, s.max_iterations + 1):
        margin = direction @ (x + delta) + b[c] - b[1 - c]
        u = delta - s.step_size * (direction / scale if margin >= -s.kappa else 0.0)
        delta = np.clip(np.sign(u) * np.maximum(np.abs(u) - s.step_size * s.lam, 0.0), -x, 1 - x)
        if np.argmax(w @ (x + delta) + b) != c:
            return iteration, delta
    return 0, np.zeros_like(x)


# --- bounds and masks ---------------------------------------------------------------------------------


@given(attack_inputs(max_samples=3), attack_methods, cell_masks())
def test_every_point_evaluated_stays_in_the_box_and_masked_cells_never_change(
    inputs: tuple[np.ndarray, np.ndarray], method: str, mask: np.ndarray
) -> None:
    """Every x + δ the model sees (iterates and FISTA's extrapolated points) is in [0, 1] and equals x off the mask."""
    x, y = inputs
    model = _Recording(MODEL)
    result = L1Attack(model, SETTINGS[method], threat=CellThreat(mask=mask), include_misclassified=True).run(x, y)
    xt = torch.from_numpy(x)
    assert model.inputs  # the model saw every iterate
    for seen in model.inputs:
        assert bool(((seen >= 0) & (seen <= 1)).all())
        assert torch.equal(seen[:, ~torch.from_numpy(mask)], xt[:, ~torch.from_numpy(mask)])
    for deltas in (result.first_delta, result.best_delta, result.sparse_delta):
        assert ((x + deltas >= 0) & (x + deltas <= 1)).all()
        assert not deltas[:, ~mask].any()


# --- response to change -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ista", "fista", "adam"])
def test_more_iterations_never_lower_best_success(method: str) -> None:
    """A longer run extends a shorter one: every success stays, the first is unchanged, the best only shrinks."""
    x, y = _inputs(16, seed=7)
    step = {"ista": 0.1, "fista": 0.1, "adam": 0.04}[method]  # some, not all, samples flip within 6 iterations
    short_settings = L1Settings(lam=1e-2, step_size=step, method=method, max_iterations=6, search_steps=1)
    short = L1Attack(MODEL, short_settings, include_misclassified=True).run(x, y)
    long_settings = attrs.evolve(short_settings, max_iterations=20)
    long = L1Attack(MODEL, long_settings, include_misclassified=True).run(x, y)
    assert (long.found >= short.found).all()
    assert long.found.sum() > short.found.sum() > 0
    assert (long.first_iteration[short.found] == short.first_iteration[short.found]).all()
    assert (long.l1()[short.found] <= short.l1()[short.found]).all()


def test_larger_lambda_never_raises_mean_l0() -> None:
    """On a fixed model and a seeded set of 30 samples, λ ten times larger gives a mean L0 that is no larger."""
    x, y = _inputs(30, seed=11)
    mean_l0 = []
    for lam in (1e-3, 1e-2, 1e-1):
        settings = L1Settings(lam=lam, step_size=0.1, method="ista", max_iterations=30, search_steps=1)
        result = L1Attack(MODEL, settings, include_misclassified=True).run(x, y)
        assert result.found.mean() >= 0.5
        mean_l0.append(result.l0()[result.found].mean())
    assert mean_l0[0] >= mean_l0[1] >= mean_l0[2]


# --- stored successes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ista", "fista", "adam"])
def test_stored_successes_flip_the_prediction_when_reapplied(method: str, tmp_path: Path) -> None:
    """δ read back from the stored file, added to x, makes the model predict the other class (first and best)."""
    x, y = _inputs(10, seed=2)
    result = L1Attack(MODEL, SETTINGS[method], include_misclassified=True).run(x, y)
    result.to_npz(tmp_path / "attack.npz")
    stored = AttackBatchResult.from_npz(tmp_path / "attack.npz")
    assert stored.found.any()
    assert sum(r.succeeded for r in stored.results()) == stored.found.sum()  # domain values validate
    found = stored.found
    for which in ("first", "best"):
        delta = getattr(stored, f"{which}_delta")[found]
        with torch.no_grad():
            logits = MODEL(torch.from_numpy(x[found] + delta))
        assert (logits.argmax(1).numpy() != stored.predicted[found]).all()
        np.testing.assert_allclose(logits.numpy(), getattr(stored, f"{which}_logits")[found], atol=1e-5)


def test_no_success_is_a_stored_failure_with_its_reason() -> None:
    """A budget too small to flip anything leaves every sample not completed, with the iteration budget named."""
    x, y = _inputs(3)
    settings = L1Settings(lam=1.0, step_size=1e-3, max_iterations=2, search_steps=1)
    result = L1Attack(MODEL, settings, include_misclassified=True).run(x, y)
    assert not result.found.any()
    assert {r.first.reason for r in result.results()} == {"no success within 2 iterations"}  # type: ignore[union-attr]


# --- settings -----------------------------------------------------------------------------------------


def test_unknown_method_is_a_config_error() -> None:
    """The method must be ista, fista or adam."""
    with pytest.raises(ConfigError) as info:
        L1Settings(method="sgd")
    assert str(info.value) == "L1Settings.method must be one of ista, fista, adam, greedy; got 'sgd'"


def test_step_size_must_be_positive_and_lambda_non_negative() -> None:
    """A zero step or a negative λ is refused with the rule and the value."""
    with pytest.raises(ConfigError) as info:
        L1Settings(step_size=0.0)
    assert str(info.value) == "L1Settings.step_size must be finite and > 0, got 0.0"
    with pytest.raises(ConfigError) as info:
        L1Settings(lam=-1.0)
    assert str(info.value) == "L1Settings.lam must be finite and ≥ 0, got -1.0"


# --- scale-free steps, the λ search, minimal support ---------------------------------------------------


class _Scaled(nn.Module):
    """A model whose logits are ``factor`` times another's: the same decisions, gradients ``factor`` times."""

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x) * self.factor
        return out


@pytest.mark.parametrize("method", ["ista", "fista", "adam"])
def test_steps_do_not_depend_on_the_models_gradient_scale(method: str) -> None:
    """A model with gradients 10⁻⁵ times smaller (or 10³ larger) gets the same successes and examples."""
    x, y = _inputs(6, seed=3)
    settings = attrs.evolve(SETTINGS[method], search_steps=2)
    base = L1Attack(MLP64, settings, include_misclassified=True).run(x, y)
    assert base.found.any()
    for factor in (1e-5, 1e3):
        scaled = L1Attack(_Scaled(MLP64, factor), settings, include_misclassified=True).run(x, y)
        assert scaled.found.tolist() == base.found.tolist()
        assert scaled.first_iteration.tolist() == base.first_iteration.tolist()
        np.testing.assert_allclose(scaled.best_delta, base.best_delta, atol=1e-4)


@given(attack_inputs(max_samples=4), attack_methods, st.integers(1, 3))
def test_more_search_steps_never_lower_success_nor_raise_the_best_l1(
    inputs: tuple[np.ndarray, np.ndarray], method: str, steps: int
) -> None:
    """Rounds of the λ search only add chances: every success stays and the best L1 does not grow."""
    x, y = inputs
    settings = attrs.evolve(SETTINGS[method], max_iterations=5, search_steps=steps)
    fewer = L1Attack(MLP64, settings, include_misclassified=True).run(x, y)
    more = L1Attack(MLP64, attrs.evolve(settings, search_steps=steps + 2), include_misclassified=True).run(x, y)
    assert (more.found >= fewer.found).all()
    assert (more.l1("best")[fewer.found] <= fewer.l1("best")[fewer.found] + 1e-6).all()
    assert (more.first_iteration[fewer.found] == fewer.first_iteration[fewer.found]).all()


def test_lambda_rises_after_a_success_and_falls_after_a_failure() -> None:
    """The per-sample λ search: ×10 up after a success until a failure bounds it, then log-midpoints."""
    from lstm_adv.attacks.l1 import _next_lambda

    lam, low, high = torch.tensor([1.0, 1.0]), torch.zeros(2), torch.full((2,), float("inf"))
    lam, low, high = _next_lambda(lam, low, high, torch.tensor([True, False]))
    assert lam.tolist() == pytest.approx([10.0, 0.1])
    lam, low, high = _next_lambda(lam, low, high, torch.tensor([False, True]))
    assert lam.tolist() == pytest.approx([10**0.5, 0.1**0.5])


@given(attack_inputs(max_samples=4), attack_methods)
def test_sparse_examples_flip_are_no_larger_than_best_and_every_cell_is_needed(
    inputs: tuple[np.ndarray, np.ndarray], method: str
) -> None:
    """A sparse δ flips the decision, has L0 ≤ the best δ's, and dropping any one of its cells un-flips it
    (or leaves it within the safety margin of the boundary, SPARSE_MARGIN)."""
    x, y = inputs
    result = L1Attack(MLP64, attrs.evolve(SETTINGS[method], search_steps=2), include_misclassified=True).run(x, y)
    assert (result.l0("sparse") <= result.l0("best")).all()
    for row in np.flatnonzero(result.found):
        sparse = result.sparse_delta[row]
        point = torch.from_numpy(x[row] + sparse)[None]
        with torch.no_grad():
            assert int(MLP64(point).argmax(1)) != result.predicted[row]
        for cell in zip(*np.nonzero(sparse), strict=True):
            smaller = sparse.copy()
            smaller[cell] = 0.0
            with torch.no_grad():
                logits = MLP64(torch.from_numpy(x[row] + smaller)[None])
            kept = float(margin(logits, torch.tensor([result.predicted[row]]))[0])
            assert kept > -SPARSE_MARGIN, f"row {row}: cell {cell} is not needed"


@given(attack_inputs(max_samples=4), attack_methods, st.integers(0, 2**32 - 1))
def test_per_sample_cells_are_never_exceeded(inputs: tuple[np.ndarray, np.ndarray], method: str, seed: int) -> None:
    """With per-sample allowed cells (e.g. the measured ones) no other cell ever changes, in any example."""
    x, y = inputs
    allowed = np.random.default_rng(seed).random(x.shape) < 0.3
    allowed[0] = False  # a sample without any cell it may change is skipped with that reason
    result = L1Attack(MODEL, SETTINGS[method], include_misclassified=True).run(x, y, allowed=allowed)
    for which in ("first", "best", "sparse"):
        assert not result.deltas(which)[~allowed].any()
    assert result.skip[0] == 2
    assert "no cell it may change" in result.not_completed_reason(0)


def test_adam_moves_only_cells_whose_gradient_beats_the_threshold_in_its_metric() -> None:
    """Adam's prox thresholds each cell by step·λ/(√v̂ + ε): on the first step only cells with |g|/G > λ move."""
    model = LinearModel(seed=6)
    x, _ = _inputs(1, seed=8)
    with torch.no_grad():  # put the sample just on its side of the boundary, so that one step flips it
        logits = model(torch.from_numpy(x))
        model.bias[1] -= float(logits[0, 1] - logits[0, 0]) - 0.01
    settings = L1Settings(lam=0.5, step_size=1.0, method="adam", max_iterations=1, search_steps=1)
    result = L1Attack(model, settings, include_misclassified=True).run(x, np.zeros(1, np.int64))
    assert result.found[0]
    gradient = (model.weight[0] - model.weight[1]).detach().numpy().reshape(48, 19)  # ∂(z₀ − z₁)/∂x
    moved = result.first_delta[0] != 0
    strong = np.abs(gradient) / np.abs(gradient).max() > 0.5
    assert moved.any()
    assert not (moved & ~strong).any()


def test_perturb_returns_the_chosen_examples_and_zero_where_none_was_found() -> None:
    """``perturb`` (what adversarial training uses) gives each sample its sparse, best or first δ from ``run`` on
    x's device, and δ = 0 for a sample that was not attacked or not flipped; the cells limit it as in ``run``."""
    x, y = _inputs(6, seed=2)
    attack = L1Attack(MODEL, SETTINGS["ista"])
    result = attack.run(x, y)
    assert result.found.any()
    assert (~result.found).any()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for example in ("sparse", "best", "first"):
        delta = attack.perturb(xt, yt, example=example)
        assert delta.device == xt.device
        np.testing.assert_array_equal(delta.numpy(), result.deltas(example))
        assert not bool(delta[torch.from_numpy(~result.found)].any())
    cells = torch.from_numpy(np.random.default_rng(0).random((6, 48, 19)) < 0.5)
    limited = attack.perturb(xt, yt, cells)
    assert not bool(limited[~cells].any())


# --- the L0-native search ---------------------------------------------------------------------------


def test_greedy_on_a_linear_model_finds_the_fewest_cells_that_flip() -> None:
    """With a linear margin each cell's push to its better box end lowers it by a fixed amount, so the fewest cells
    that flip are the largest such gains: greedy selection (and the sparse example) needs exactly that many."""
    model = LinearModel(seed=4, scale=0.02)
    x, _ = _inputs(6, seed=5)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    y = (logits[:, 1] > logits[:, 0]).long().numpy()
    result = L1Attack(model, L1Settings(method="greedy", max_iterations=200, search_steps=1, swap_rounds=0)).run(x, y)
    w = (model.weight[1] - model.weight[0]).detach().numpy().reshape(48, 19)
    for row in np.flatnonzero(result.found):
        sign = 1.0 if y[row] == 1 else -1.0
        gains = np.sort(np.maximum(sign * w * x[row], sign * w * (x[row] - 1.0)).ravel())[::-1]
        start = sign * float(logits[row, 1] - logits[row, 0])
        fewest = int(np.searchsorted(np.cumsum(gains), start + SPARSE_MARGIN) + 1)
        assert result.l0("sparse")[row] == fewest


@given(attack_inputs(max_samples=4), attack_methods)
def test_the_swap_search_never_enlarges_a_sparse_example(inputs: tuple[np.ndarray, np.ndarray], method: str) -> None:
    """Swap rounds keep every success and never make a sparse example larger; what they return still flips with
    every entry needed (the float64 model)."""
    x, y = inputs
    settings = attrs.evolve(SETTINGS[method], search_steps=2, swap_rounds=0)
    plain = L1Attack(MLP64, settings, include_misclassified=True).run(x, y)
    swapped = L1Attack(MLP64, attrs.evolve(settings, swap_rounds=3), include_misclassified=True).run(x, y)
    assert swapped.found.tolist() == plain.found.tolist()
    assert (swapped.l0("sparse") <= plain.l0("sparse")).all()
    for row in np.flatnonzero(swapped.found):
        sparse = swapped.sparse_delta[row]
        with torch.no_grad():
            assert int(MLP64(torch.from_numpy(x[row] + sparse)[None]).argmax(1)) != swapped.predicted[row]


def _toy_search(margin_fn: Callable[[torch.Tensor], torch.Tensor], n: int, entries: int) -> Search:
    """A search over ``n`` samples of ``entries`` entries in [0, 1] whose margin is ``margin_fn(δ)`` (B,)."""

    def logits(delta: torch.Tensor) -> torch.Tensor:
        m = margin_fn(delta)
        return torch.stack([m, torch.zeros_like(m)], dim=1)

    def gradient(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        point = delta.detach().requires_grad_(True)
        m = margin_fn(point)
        (grad,) = torch.autograd.grad(m.sum(), point)
        return torch.stack([m.detach(), torch.zeros_like(m)], dim=1), grad

    return Search(
        lower=torch.zeros(n, entries, dtype=torch.float64),
        upper=torch.ones(n, entries, dtype=torch.float64),
        allowed=torch.ones(n, entries, dtype=torch.bool),
        logits=logits,
        margin_of=lambda z: z[:, 0] - z[:, 1],
        gradient=gradient,
        crosses=-SPARSE_MARGIN,
        take=lambda rows: _toy_search(lambda d: margin_fn(d), len(rows), entries),
    )


def test_refinement_finds_the_smaller_support_that_needs_a_value_between_the_ends() -> None:
    """margin = 1.6 − h(δ₁) − δ₂ − 0.3·δ₃ with h(0) = 0, h(1) = 0.4 and h(0.5) = 1: at the box ends all
    three entries are needed (dropping any one un-flips, so neither the drop pass nor a swap can shrink it), but
    with δ₁ moved to 0.5 two suffice. The refinement drops δ₃ (the least needed) and finds that δ₁."""

    def margin_fn(delta: torch.Tensor) -> torch.Tensor:
        h = 5.2 * delta[:, 0] ** 2 - 4.8 * delta[:, 0] ** 4
        return 1.6 - h - delta[:, 1] - 0.3 * delta[:, 2]

    search = _toy_search(margin_fn, 1, 3)
    values = torch.ones(1, 3, dtype=torch.float64)
    kept = torch.ones(1, 3, dtype=torch.bool)
    assert float(search.margin(values)[0]) < -SPARSE_MARGIN
    for drop in range(3):
        assert float(search.margin(values.index_fill(1, torch.tensor([drop]), 0.0))[0]) > 0
    refined, support = refine_search(search, values, kept, rounds=3, steps=10)
    assert support.tolist() == [[True, True, False]]
    assert float(search.margin(refined)[0]) <= -SPARSE_MARGIN
    assert 0 < float(refined[0, 0]) < 1
    assert float(refined[0, 2]) == 0.0


@given(attack_inputs(max_samples=4), attack_methods)
def test_the_refinement_never_enlarges_a_sparse_example(inputs: tuple[np.ndarray, np.ndarray], method: str) -> None:
    """Refinement rounds keep every success and never make a sparse example larger; what they return still flips
    (the float64 model) and stays inside the box."""
    x, y = inputs
    settings = attrs.evolve(SETTINGS[method], search_steps=2, swap_rounds=0, refine_rounds=0)
    plain = L1Attack(MLP64, settings, include_misclassified=True).run(x, y)
    refined = L1Attack(MLP64, attrs.evolve(settings, refine_rounds=3), include_misclassified=True).run(x, y)
    assert refined.found.tolist() == plain.found.tolist()
    assert (refined.l0("sparse") <= plain.l0("sparse")).all()
    for row in np.flatnonzero(refined.found):
        adversarial = x[row] + refined.sparse_delta[row]
        assert adversarial.min() >= -1e-9
        assert adversarial.max() <= 1 + 1e-9
        with torch.no_grad():
            assert int(MLP64(torch.from_numpy(adversarial)[None]).argmax(1)) != refined.predicted[row]


def test_passes_are_counted_per_sample() -> None:
    """An ista round of K iterations costs K forward+backward passes and K forward ones per sample (the checks
    after each round and the pruning's forwards on top); greedy steps add the candidates' forwards."""
    x, y = _inputs(4, seed=1)
    settings = L1Settings(method="ista", max_iterations=10, search_steps=1, swap_rounds=0)
    attack = L1Attack(MODEL, settings, include_misclassified=True)
    attack.run(x, y)
    forward, backward = attack.passes.per_sample(4)
    assert backward == 11  # the gradient at δ = 0 (the scale) and one per iteration
    assert forward >= backward + 1
