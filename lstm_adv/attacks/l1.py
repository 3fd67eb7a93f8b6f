"""The sparse L1 attack (Sun et al. 2018; elastic-net / EAD family) as proximal gradient descent.

Per sample, with c its decision at the model's rule and m the signed distance of z₁ − z₀ to the rule's
boundary (positive while the decision is c; see :func:`lstm_adv.attacks.base.margin`), minimize

    max(m(x+δ), −κ) / G + λ·Σ_ij |δ_ij|    subject to x + δ ∈ [0, 1]^(48×19), δ = 0 off the allowed cells

**Scale-free steps.** G is the sample's largest |∂m/∂x| over its allowed cells at δ = 0. Dividing the
smooth term by a positive constant does not change the minimizers of the attack's problem for that
λ; it makes the step size and λ free of the model's gradient scale: with G = 1e-5 or 10, a step of
``step_size`` moves the most sensitive cell by about ``step_size`` (scaled units), and λ compares with
gradients relative to that cell's. The same settings therefore work on the demo, on synthetic cohorts
and on full MIMIC-III.

One iteration: a gradient step on the smooth term only, then the prox of the rest, which for these
separable terms is soft-thresholding by step·λ followed by projection to the box (disallowed cells
have the box [0, 0]). Methods: ``ista`` (plain step), ``fista`` (Nesterov extrapolation, gradient at
the extrapolated point, projected to the box) and ``adam``: the proximal step in Adam's diagonal
metric D = diag(√v̂ + ε)/step, i.e. δ ← soft(δ − step·m̂/(√v̂ + ε), step·λ/(√v̂ + ε)) per cell, then the
box — cells whose gradient stays small keep a large threshold and stay unchanged.

**Per-sample λ search** (as EAD's binary search on its constant): ``search_steps`` rounds of
``max_iterations`` iterations each, every round starting again from δ = 0 with fresh optimizer state.
Each sample carries its own λ: after a round with a success λ rises (×10 until a failure was seen,
then the geometric midpoint), after a round without one it falls (÷10, or the midpoint). The first
success of any round and the best (smallest L1) success over all rounds are kept; iterations are
numbered across rounds (1 … search_steps·max_iterations). One round is today's single-λ attack.

**Threats.** δ is the attack's variable (:mod:`lstm_adv.attacks.threats`): the change of the model
input's cells (``all``, ``observed``), or of the sample's record pushed through the fill (``record``:
one entry is one altered measurement, and the box is each value's feasible set). The gradient is
taken through the threat's map, and the L1 penalty, the λ search and the minimal support all count
entries of δ, so for the record threat they count **altered measurements**.

**Minimal support.** Every best example is then pruned to a minimal support: its cells are pushed to
the box bound in δ's direction (the most each can move the decision); the k largest-|δ| cells that
still flip are found by a batched binary search; greedy passes drop one cell at a time (smallest |δ|
first) while the flip holds, until a pass drops nothing; the kept values are pulled back towards the
attack's own δ as far as the flip allows (bisection); a last drop pass follows. Here a flip means
crossing the boundary by at least :data:`SPARSE_MARGIN` (1e-4 in logits), so the example still flips
when the model is evaluated again in another batch; dropping any single remaining cell loses that.
This is the ``sparse`` example. All of it runs batched on the device, one forward per round for the
whole batch.

Which iterate is checked, and what it costs. Every iterate δ_1 … δ_K is checked with the logits at
x + δ_k itself. ``ista`` and ``adam`` need the forward at δ_k anyway for the next gradient, so the check
reuses it and one extra forward after each round checks its last iterate: K forward+backward passes
and one forward per round. ``fista`` pays one gradient-free forward per iteration. Nothing leaves the
device inside the loop; results are copied to the host once per batch by the base class.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Hashable
from typing import ClassVar

import attrs
import torch
from torch import Tensor

from lstm_adv.attacks.base import Attack, BatchOutcome, SuccessTracker, margin
from lstm_adv.attacks.support import REFINE_STEPS, Search, greedy_search, refine_search, swap_search
from lstm_adv.attacks.threats import BatchThreat, prox_l1_box, soft_threshold
from lstm_adv.config import L1_METHODS
from lstm_adv.domain import validators as v

__all__ = ["METHODS", "SPARSE_MARGIN", "L1Attack", "L1Settings", "prox_l1_box", "soft_threshold"]

METHODS = L1_METHODS
_TINY = 1e-30
_LAMBDA_FACTOR = 10.0
_SHRINK_ROUNDS = 12  # bisection rounds for the sparse example's values: within 2⁻¹² of the box bound
# A sparse example must cross the boundary by this much (logit units), so that it still flips when the
# model is evaluated again in another batch or precision (float32 kernels differ by ~1e-6).
SPARSE_MARGIN = 1e-4


@attrs.frozen
class L1Settings:
    """Settings of the sparse L1 attack (see the module docstring for what each means).

    ``lam`` and ``step_size`` are scale-free (relative to each sample's gradient scale); ``max_iterations``
    is the budget of one λ-search round, ``search_steps`` the number of rounds (``greedy``: the steps are
    their product, and λ and the step size are not used). ``candidates``: entries the greedy steps and the
    swap search evaluate per step; ``swap_rounds``: rounds of the swap search on every minimal support;
    ``refine_rounds``: rounds of the refinement (drop one, re-optimise the rest) after it.
    """

    kappa: float = attrs.field(default=0.0, validator=v.number(low=0))
    lam: float = attrs.field(default=0.05, validator=v.number(low=0))
    step_size: float = attrs.field(default=0.05, validator=v.number(low=0, low_strict=True))
    method: str = attrs.field(default="ista", validator=v.one_of(METHODS))
    max_iterations: int = attrs.field(default=200, validator=v.at_least(1))
    search_steps: int = attrs.field(default=5, validator=v.at_least(1))
    adam_beta1: float = attrs.field(default=0.9, validator=v.number(low=0, high=1, high_strict=True))
    adam_beta2: float = attrs.field(default=0.999, validator=v.number(low=0, high=1, high_strict=True))
    adam_eps: float = attrs.field(default=1e-8, validator=v.number(low=0, low_strict=True))
    candidates: int = attrs.field(default=4, validator=v.at_least(1))
    swap_rounds: int = attrs.field(default=2, validator=v.at_least(0))
    refine_rounds: int = attrs.field(default=4, validator=v.at_least(0))

    @property
    def total_iterations(self) -> int:
        """Iterations per sample over every round of the λ search."""
        return self.max_iterations * self.search_steps


@attrs.define
class _Problem:
    """One batch's fixed quantities: targets, the threat (bounds of δ, δ → input), the loss and the gradient scale."""

    target: Tensor
    threat: BatchThreat
    loss: Callable[[Tensor], Tensor]
    scale: Tensor  # (B, 1, 1): 1 / G per sample

    @property
    def lower(self) -> Tensor:
        """Lower bounds of δ."""
        return self.threat.lower

    @property
    def upper(self) -> Tensor:
        """Upper bounds of δ."""
        return self.threat.upper

    def take(self, rows: Tensor, loss: Callable[[Tensor], Tensor]) -> _Problem:
        """The samples ``rows`` (``loss``: the attack's loss for their targets)."""
        return _Problem(self.target[rows], self.threat.take(rows), loss, self.scale[rows])


class L1Attack(Attack[L1Settings]):
    """Sparse L1 attack by proximal gradient (ISTA, FISTA or Adam + its prox); see the module docstring."""

    settings_type: ClassVar[type[L1Settings]] = L1Settings

    @property
    def iterations(self) -> int:
        """The iteration budget per sample (every round of the λ search)."""
        return self.settings.total_iterations

    def perturb(
        self,
        x: Tensor,
        y: Tensor,
        cells: Tensor | None = None,
        *,
        record: Tensor | None = None,
        example: str = "sparse",
    ) -> Tensor:
        """The model input's change of the ``example`` kind (sparse, best or first) for every sample, 0 where
        none was found.

        :meth:`Attack.run` on these samples (misclassified ones, and ones without anything they may change,
        are skipped and keep δ = 0), its chosen deltas copied back to x's device: adversarial training
        uses it as it uses :meth:`PgdAttack.perturb`. Shape: x (N, 48, 19), y (N,), cells (N, 48, 19)
        (cell threats), record (N, 49, 19) (record threat) → δ (N, 48, 19).
        """
        result = self.run(
            x, y, allowed=None if cells is None else cells.cpu(), record=None if record is None else record.cpu()
        )
        return torch.from_numpy(result.deltas(example)).to(device=x.device, dtype=x.dtype)

    def _loss(self, target: Tensor) -> Callable[[Tensor], Tensor]:
        kappa, boundary = self.settings.kappa, self.boundary
        return lambda logits: margin(logits, target, boundary).clamp(min=-kappa)

    def _attack_batch(self, x: Tensor, target: Tensor, threat: BatchThreat) -> BatchOutcome:
        """The λ search over fresh rounds of the configured method, then minimal support. Shape: x (B, 48, 19)."""
        s = self.settings
        problem = self._problem(target, threat)
        tracker = SuccessTracker(threat.zeros(), self.boundary)
        lam = torch.full((len(x), 1, 1), s.lam, dtype=x.dtype, device=x.device)
        low, high = torch.zeros_like(lam), torch.full_like(lam, math.inf)
        if s.method == "greedy":
            self._greedy(problem, tracker)
        else:
            run = {"ista": self._ista, "fista": self._fista, "adam": self._adam}[s.method]
            for step in range(s.search_steps):
                succeeded = run(problem, lam, tracker, offset=step * s.max_iterations)[:, None, None]
                lam, low, high = _next_lambda(lam, low, high, succeeded)
        sparse_delta, sparse_logits = self._minimal_support(problem, tracker)
        return tracker.outcome(sparse_delta, sparse_logits)

    def _memory_key(self) -> Hashable:
        return (super()._memory_key(), self.settings.method)  # Adam and FISTA keep more state per sample

    def _short_batch(self, x: Tensor, target: Tensor, threat: BatchThreat) -> None:
        """One round of two iterations of the method, without the minimal-support search (whose forwards
        need no gradient, so less memory)."""
        short = copy.copy(self)
        short.settings = attrs.evolve(self.settings, max_iterations=2, search_steps=1)
        problem = short._problem(target, threat)
        lam = torch.full((len(x), 1, 1), short.settings.lam, dtype=x.dtype, device=x.device)
        if short.settings.method == "greedy":
            short._greedy(problem, SuccessTracker(threat.zeros(), self.boundary))
            return
        run = {"ista": short._ista, "fista": short._fista, "adam": short._adam}[short.settings.method]
        run(problem, lam, SuccessTracker(threat.zeros(), self.boundary), offset=0)

    def _problem(self, target: Tensor, threat: BatchThreat) -> _Problem:
        loss = self._loss(target)
        _, grad = self._gradient_through(threat, threat.zeros(), loss)
        scale = torch.where(threat.allowed, grad.abs(), torch.zeros_like(grad)).amax(dim=(1, 2)).clamp(min=_TINY)
        return _Problem(target, threat, loss, (1.0 / scale)[:, None, None])

    def _ista(self, p: _Problem, lam: Tensor, tracker: SuccessTracker, *, offset: int) -> Tensor:
        return self._smooth_step_loop(p, lam, tracker, offset, lambda grad, iteration: (grad, None))

    def _adam(self, p: _Problem, lam: Tensor, tracker: SuccessTracker, *, offset: int) -> Tensor:
        s = self.settings
        first_moment = p.threat.zeros()
        second_moment = p.threat.zeros()

        def direction(grad: Tensor, iteration: int) -> tuple[Tensor, Tensor]:
            first_moment.mul_(s.adam_beta1).add_(grad, alpha=1 - s.adam_beta1)
            second_moment.mul_(s.adam_beta2).addcmul_(grad, grad, value=1 - s.adam_beta2)
            m_hat = first_moment / (1 - s.adam_beta1**iteration)
            metric = (second_moment / (1 - s.adam_beta2**iteration)).sqrt() + s.adam_eps
            return m_hat / metric, metric

        return self._smooth_step_loop(p, lam, tracker, offset, direction)

    def _smooth_step_loop(
        self,
        p: _Problem,
        lam: Tensor,
        tracker: SuccessTracker,
        offset: int,
        direction: Callable[[Tensor, int], tuple[Tensor, Tensor | None]],
    ) -> Tensor:
        """δ_k = prox(δ_{k−1} − step·direction(∇m/G)); iterate k is checked with the next forward.

        ``direction`` returns the step direction and, for Adam, the diagonal metric that divides the
        threshold. Returns which samples succeeded in this round. Shape: (B,) bool.
        """
        s = self.settings
        delta = p.threat.zeros()
        found = torch.zeros(len(delta), dtype=torch.bool, device=delta.device)
        for iteration in range(1, s.max_iterations + 1):
            logits, grad = self._gradient_through(p.threat, delta, p.loss)
            if iteration > 1:
                found |= tracker.update(offset + iteration - 1, delta, logits, p.target)
            step, metric = direction(grad * p.scale, iteration)
            threshold = s.step_size * lam if metric is None else s.step_size * lam / metric
            delta = p.threat.prox(torch.add(delta, step, alpha=-s.step_size), threshold)
        with torch.no_grad():
            found |= tracker.update(offset + s.max_iterations, delta, self._forward(p.threat.apply(delta)), p.target)
        return found

    def _fista(self, p: _Problem, lam: Tensor, tracker: SuccessTracker, *, offset: int) -> Tensor:
        """FISTA: gradient at y_k = δ_k + β_k(δ_k − δ_{k−1}), projected to the box; δ_k checked by its own forward."""
        s = self.settings
        delta = previous = p.threat.zeros()
        found = torch.zeros(len(delta), dtype=torch.bool, device=delta.device)
        t, beta = 1.0, 0.0  # Beck & Teboulle: t_1 = 1, y_1 = δ_0, β_k = (t_k − 1) / t_{k+1}
        for iteration in range(1, s.max_iterations + 1):
            point = p.threat.project(delta + beta * (delta - previous))
            _, grad = self._gradient_through(p.threat, point, p.loss)
            step = point - s.step_size * grad * p.scale
            previous, delta = delta, p.threat.prox(step, s.step_size * lam)
            with torch.no_grad():
                found |= tracker.update(offset + iteration, delta, self._forward(p.threat.apply(delta)), p.target)
            t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
            t, beta = t_next, (t - 1.0) / t_next
        return found

    # --- L0-native search -----------------------------------------------------------------------------

    def _search(self, p: _Problem) -> Search:
        """The batch as a search problem of :mod:`lstm_adv.attacks.support`."""

        def logits(delta: Tensor) -> Tensor:
            with torch.no_grad():
                return self._forward(p.threat.apply(delta)).float()

        return Search(
            lower=p.lower,
            upper=p.upper,
            allowed=p.threat.allowed,
            logits=logits,
            margin_of=lambda z: margin(z, p.target, self.boundary),
            gradient=lambda delta: self._gradient_through(p.threat, delta, p.loss),
            crosses=-SPARSE_MARGIN,
            take=lambda rows: self._search(p.take(rows, self._loss(p.target[rows]))),
        )

    def _greedy(self, p: _Problem, tracker: SuccessTracker) -> None:
        """Greedy forward selection over the whole budget (``max_iterations × search_steps`` steps)."""
        s = self.settings

        def record(step: int, delta: Tensor, logits: Tensor) -> None:
            tracker.update(step, delta, logits, p.target)

        greedy_search(self._search(p), p.threat.zeros(), s.total_iterations, s.candidates, record)

    # --- minimal support ------------------------------------------------------------------------------

    def _flips(self, threat: BatchThreat, target: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """Whether the samples of ``threat`` at δ leave their ``target`` decision by at least
        :data:`SPARSE_MARGIN`, and their logits. Shapes: (B,), (B, 2)."""
        with torch.no_grad():
            logits = self._forward(threat.apply(delta)).float()
        return margin(logits, target, self.boundary) <= -SPARSE_MARGIN, logits

    def _minimal_support(self, p: _Problem, tracker: SuccessTracker) -> tuple[Tensor, Tensor]:
        """The sparse example of each success (see the module docstring). Shapes: (B, 48, 19), (B, 2)."""
        best, found = tracker.best_delta, tracker.found
        magnitude = best.abs().flatten(1)
        # the same cells pushed to the box bound in δ's direction: the most a cell can move the decision
        saturated = torch.where(best > 0, p.upper, torch.where(best < 0, p.lower, torch.zeros_like(best)))
        kept = self._top_cells(p, saturated, magnitude) & found[:, None, None]
        kept = self._drop_cells(p, saturated, kept, magnitude)
        if self.settings.swap_rounds or self.settings.refine_rounds:
            saturated, kept = self._swap(p, saturated, kept & found[:, None, None])
            magnitude = saturated.abs().flatten(1)  # a swapped-in entry shrinks towards its original value
        sparse = self._shrink_values(p, best, saturated, kept)
        kept = self._drop_cells(p, sparse, kept, magnitude)
        sparse = torch.where(kept, sparse, torch.zeros_like(sparse))
        flips, logits = self._flips(p.threat, p.target, sparse)
        # A support that no longer flips (non-deterministic kernels re-evaluated a borderline δ) keeps best.
        holds = flips & found
        sparse = torch.where(holds[:, None, None], sparse, best)
        return sparse, torch.where(holds[:, None], logits, tracker.best_logits)

    def _swap(self, p: _Problem, saturated: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
        """The swap search and the refinement on each flipping support (at the end values), then a drop pass over
        the new support."""
        s = self.settings
        values = torch.where(kept, saturated, torch.zeros_like(saturated))
        if s.swap_rounds:
            values, kept = swap_search(self._search(p), values, kept, s.swap_rounds, s.candidates)
        if s.refine_rounds:
            values, kept = refine_search(self._search(p), values, kept, s.refine_rounds, REFINE_STEPS)
        kept = self._drop_cells(p, values, kept, values.abs().flatten(1))
        return torch.where(kept, values, torch.zeros_like(values)), kept

    def _top_cells(self, p: _Problem, values: Tensor, magnitude: Tensor) -> Tensor:
        """The fewest cells, largest |δ| first, whose ``values`` flip: k by a binary search of fixed rounds."""
        order = magnitude.argsort(dim=1, descending=True)
        entries = magnitude.shape[1]
        ranks = torch.arange(entries, device=values.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, ranks)
        low = torch.zeros(len(values), dtype=torch.int64, device=values.device)
        high = (magnitude > 0).sum(dim=1)
        for _ in range(math.ceil(math.log2(entries + 1))):
            mid = (low + high) // 2
            flips, _ = self._flips(p.threat, p.target, torch.where((rank < mid[:, None]).view_as(values), values, 0.0))
            open_ = low + 1 < high
            high = torch.where(open_ & flips, mid, high)
            low = torch.where(open_ & ~flips, mid, low)
        return (rank < high[:, None]).view_as(values)

    def _drop_cells(self, p: _Problem, values: Tensor, kept: Tensor, magnitude: Tensor) -> Tensor:
        """Passes over each sample's kept cells, smallest |δ| first, dropping a cell while the flip holds,
        until a pass drops nothing: then removing any single kept cell un-flips the sample.

        A pass evaluates only the samples the previous pass changed, and at position k only those with more
        than k kept cells (one host sync per pass, none per position)."""
        flat = kept.flatten(1)
        flat_values = values.flatten(1)
        active = flat.any(dim=1)
        for _ in range(flat.shape[1]):  # passes
            rows = active.nonzero()[:, 0]
            if rows.numel() == 0:
                break
            counts = flat[rows].sum(dim=1).cpu()  # the pass's host sync
            order = torch.where(flat[rows], magnitude[rows], torch.full_like(magnitude[rows], math.inf)).argsort(dim=1)
            dropped = torch.zeros(len(values), dtype=torch.bool, device=values.device)
            for position in range(int(counts.max())):
                local = torch.nonzero(counts > position)[:, 0].to(values.device)
                live = rows[local]
                cell = order[local, position : position + 1]
                trial = flat[live].scatter(1, cell, False)
                delta = torch.where(trial, flat_values[live], torch.zeros_like(flat_values[live]))
                flips, _ = self._flips(p.threat.take(live), p.target[live], delta.view(-1, *values.shape[1:]))
                drop = flips & flat[live].gather(1, cell)[:, 0]
                flat = flat.index_copy(0, live, torch.where(drop[:, None], trial, flat[live]))
                dropped = dropped.index_copy(0, live, dropped[live] | drop)
            active = dropped
        return flat.view_as(values)

    def _shrink_values(self, p: _Problem, best: Tensor, saturated: Tensor, kept: Tensor) -> Tensor:
        """On the kept cells, the values closest to the attack's own δ that still flip: the smallest
        s ∈ [0, 1] (bisection, fixed rounds) with (1 − s)·δ + s·saturated flipping. Shape: (B, 48, 19)."""
        low = torch.zeros(len(best), 1, 1, dtype=best.dtype, device=best.device)
        high = torch.ones_like(low)
        flips_at_zero, _ = self._flips(p.threat, p.target, torch.where(kept, best, 0.0))
        high = torch.where(flips_at_zero[:, None, None], low, high)
        for _ in range(_SHRINK_ROUNDS):
            mid = (low + high) / 2
            flips, _ = self._flips(p.threat, p.target, torch.where(kept, best + mid * (saturated - best), 0.0))
            high = torch.where(flips[:, None, None], mid, high)
            low = torch.where(flips[:, None, None], low, mid)
        return torch.where(kept, best + high * (saturated - best), torch.zeros_like(best))


def _next_lambda(lam: Tensor, low: Tensor, high: Tensor, succeeded: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the per-sample λ search: up after a success, down after a failure (log-midpoints)."""
    low = torch.where(succeeded, lam, low)
    high = torch.where(succeeded, high, lam)
    bounded = torch.isfinite(high) & (low > 0)
    midpoint = (low.clamp(min=_TINY) * high.where(torch.isfinite(high), lam)).sqrt()
    up, down = lam * _LAMBDA_FACTOR, lam / _LAMBDA_FACTOR
    lam = torch.where(bounded, midpoint, torch.where(succeeded, up, down))
    return lam, low, high
