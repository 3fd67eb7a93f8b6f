"""L0-native searches of the sparse attack: greedy forward selection, and a swap search on a found support.

Both work on the threat's variable δ (model-input cells, or record entries: altered measurements) with
each chosen entry pushed to an end of its feasible interval — the most one entry can move the decision.

**Greedy forward selection** (the ``greedy`` method; after the forward-selection idea of VFGA, Césaire
et al. 2021, written from the description). Each step takes the margin's gradient g at the current δ
(one forward+backward), scores every unchosen entry e by the first-order change of the margin when it
moves to its better end, min(g_e·lower_e, g_e·upper_e), evaluates the ``candidates`` best-scored entries
by a forward pass each, and adds the one that lowers the margin most. A sample stops growing once it
crosses the boundary by :data:`~lstm_adv.attacks.l1.SPARSE_MARGIN`. The loop checks whether every sample
is done once every :data:`CHECK_EVERY` steps (one host synchronisation per check, not per step).

**Swap search** ("drop two, add one"). Given a flipping support, it drops the pair of entries whose
single removal costs the least margin and adds the best new entry at the reduced point (scored and
evaluated as above); where the result still flips, the support is one smaller. ``rounds`` rounds, each
trying the pairs among the four least important entries.

**Refinement** ("drop one, re-optimise the rest"; after the continuous re-optimisation on a support in
σ-zero, Cinà et al. 2024, written from the description). Given a flipping support, it drops the least
important entry and moves the other entries' values by projected sign-gradient steps inside their intervals;
where the decision still flips, the support is one smaller.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import torch
from torch import Tensor

#: How often (in steps) the greedy loop asks whether every sample is done.
CHECK_EVERY = 16
#: Pairs of the swap search come from this many least important entries of a support.
SWAP_POOL = 4
#: Sign-gradient steps of one refinement round.
REFINE_STEPS = 10


@attrs.frozen(eq=False)
class Search:
    """One batch's search problem: bounds of δ, which entries may change, and the model's answers.

    ``logits(δ)`` are the model's logits at δ (no gradient); ``margin_of(logits)`` the signed distance to the
    boundary (positive: the decision is still the target's); ``gradient(δ)`` returns (logits, ∂loss/∂δ) of
    the attack's loss; ``crosses`` the margin a flip needs (−SPARSE_MARGIN). Shapes: lower, upper, allowed
    (B, ...), logits (B, 2), margins (B,).
    """

    lower: Tensor
    upper: Tensor
    allowed: Tensor
    logits: Callable[[Tensor], Tensor]
    margin_of: Callable[[Tensor], Tensor]
    gradient: Callable[[Tensor], tuple[Tensor, Tensor]]
    crosses: float
    #: The same search on the samples ``rows`` only.
    take: Callable[[Tensor], Search]

    def margin(self, delta: Tensor) -> Tensor:
        """The signed distance to the boundary at δ. Shape: (B,)."""
        return self.margin_of(self.logits(delta))

    def best_ends(self, grad: Tensor) -> tuple[Tensor, Tensor]:
        """Per entry, the end of its interval that lowers the margin most to first order, and that change.

        Shapes: grad (B, ...) → value (B, ...), score (B, ...) (more negative is better).
        """
        low, high = grad * self.lower, grad * self.upper
        value = torch.where(low < high, self.lower, self.upper)
        return value, torch.minimum(low, high)

    def candidates(self, grad: Tensor, excluded: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """The ``count`` best-scored entries not ``excluded`` (flat indices) and their end values.

        Entries that may not change or would not lower the margin get +inf and come last. Shapes: (B, count).
        """
        value, score = self.best_ends(grad)
        usable = self.allowed & ~excluded & (score < 0)
        score = torch.where(usable, score, torch.full_like(score, math.inf)).flatten(1)
        picked = score.topk(min(count, score.shape[1]), dim=1, largest=False)
        values = value.flatten(1).gather(1, picked.indices)
        return picked.indices, torch.where(torch.isfinite(picked.values), values, torch.zeros_like(values))

    def best_addition(self, delta: Tensor, chosen: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Among the ``count`` best-scored unchosen entries at δ, the one whose end value gives the lowest margin.

        Returns δ with it added, the chosen mask with it, that margin (+inf where no entry could be added) and
        the logits there. Shapes: as δ, as δ, (B,), (B, 2).
        """
        logits, grad = self.gradient(delta)
        indices, values = self.candidates(grad, chosen, count)
        flat, taken = delta.flatten(1), chosen.flatten(1)
        best_margin = torch.full((len(delta),), math.inf, device=delta.device)
        best_delta, best_chosen, best_logits = flat, taken, logits.float()
        for k in range(indices.shape[1]):
            index, value = indices[:, k : k + 1], values[:, k : k + 1]
            trial = flat.scatter(1, index, value)
            trial_logits = self.logits(trial.view_as(delta)).float()
            margin = self.margin_of(trial_logits)
            better = (margin < best_margin) & (value[:, 0] != 0)
            best_margin = torch.where(better, margin, best_margin)
            best_delta = torch.where(better[:, None], trial, best_delta)
            best_chosen = torch.where(better[:, None], taken.scatter(1, index, True), best_chosen)
            best_logits = torch.where(better[:, None], trial_logits, best_logits)
        return best_delta.view_as(delta), best_chosen.view_as(chosen), best_margin, best_logits


def greedy_search(
    search: Search, delta: Tensor, steps: int, count: int, record: Callable[[int, Tensor, Tensor], None]
) -> Tensor:
    """Grow each sample's support one entry per step until it flips (see the module docstring).

    ``record(step, δ, logits)`` is called after every step with the whole batch's δ and logits there (the
    success bookkeeping). Every :data:`CHECK_EVERY` steps the search stops when every sample is done, and
    otherwise goes on with the samples not yet done once half of its working set is (fewer passes for the
    batch: a sample's passes end when it flips). Returns δ.
    """
    chosen = torch.zeros_like(delta, dtype=torch.bool)
    logits_all = search.logits(delta)
    done = search.margin_of(logits_all) <= search.crosses
    rows = torch.arange(len(delta), device=delta.device)
    current = search
    shape = (-1, *([1] * (delta.dim() - 1)))
    for step in range(1, steps + 1):
        grown, grown_chosen, margin, grown_logits = current.best_addition(delta[rows], chosen[rows], count)
        grow = (~done[rows] & torch.isfinite(margin)).view(shape)
        delta = delta.index_copy(0, rows, torch.where(grow, grown, delta[rows]))
        chosen = chosen.index_copy(0, rows, torch.where(grow, grown_chosen, chosen[rows]))
        # a sample that did not grow keeps its δ; its logits there are the step's gradient forward's
        logits_all = logits_all.index_copy(0, rows, grown_logits)
        record(step, delta, logits_all)
        done = done.index_copy(0, rows, done[rows] | (grow.view(-1) & (margin <= search.crosses)))
        if step % CHECK_EVERY == 0:  # one host sync every CHECK_EVERY steps
            active = ~done[rows]
            left = int(active.sum())
            if left == 0:
                break
            if 2 * left <= len(rows):
                rows = rows[active]
                current = search.take(rows)
    return delta


def swap_search(search: Search, values: Tensor, kept: Tensor, rounds: int, count: int) -> tuple[Tensor, Tensor]:
    """Shrink flipping supports by one entry per success of "drop two, add one" (see the module docstring).

    ``values`` (B, ...) holds each sample's kept entries at their end values (0 elsewhere), ``kept`` its
    support. Each round works on the samples with two or more kept entries only. Returns the new values and
    support. Shapes: as values.
    """
    flat_values, flat_kept = values.flatten(1), kept.flatten(1)
    shaped = (-1, *values.shape[1:])
    for _ in range(rounds):
        rows = torch.nonzero(flat_kept.sum(dim=1) >= 2)[:, 0]  # one host sync per round
        if rows.numel() == 0:
            break
        sub = search.take(rows)
        sub_values, sub_kept = flat_values[rows], flat_kept[rows]
        importance = _importance(sub, sub_values, sub_kept, values.shape)
        pool = importance.topk(min(SWAP_POOL, importance.shape[1]), dim=1, largest=False).indices
        improved = torch.zeros(len(rows), dtype=torch.bool, device=values.device)
        for i in range(pool.shape[1]):
            for j in range(i + 1, pool.shape[1]):
                pair = torch.zeros_like(sub_kept).scatter(1, pool[:, [i, j]], True)
                eligible = (pair & sub_kept).sum(dim=1) == 2
                reduced = sub_kept & ~pair
                start = torch.where(reduced, sub_values, torch.zeros_like(sub_values))
                # the dropped pair may not come back: re-adding one of it is a single drop, already known to fail
                grown, chosen, margin, _ = sub.best_addition(start.view(shaped), (reduced | pair).view(shaped), count)
                accept = eligible & ~improved & (margin <= search.crosses)
                sub_kept = torch.where(accept[:, None], chosen.flatten(1) & ~pair, sub_kept)
                sub_values = torch.where(accept[:, None], grown.flatten(1), sub_values)
                improved |= accept
        flat_values = flat_values.index_copy(0, rows, sub_values)
        flat_kept = flat_kept.index_copy(0, rows, sub_kept)
    return flat_values.view_as(values), flat_kept.view_as(kept)


def refine_search(search: Search, values: Tensor, kept: Tensor, rounds: int, steps: int) -> tuple[Tensor, Tensor]:
    """Shrink flipping supports by "drop one, re-optimise the rest" (the continuous step swaps cannot take).

    Each round, every sample with two or more kept entries and no failed round drops its least important entry
    (the one whose removal costs the least margin) and moves the values of the rest by ``steps`` projected
    sign-gradient steps inside their intervals (step size from half the interval width, shrinking linearly),
    so that entries pushed to an end can settle in between or at the other end. Where any iterate crosses the
    boundary, the support is one smaller and that iterate is kept; a sample whose round fails stops. Returns
    the new values and support. Shapes: as values.
    """
    flat_values, flat_kept = values.flatten(1), kept.flatten(1)
    shaped = (-1, *values.shape[1:])
    trying = flat_kept.sum(dim=1) >= 2
    for _ in range(rounds):
        rows = torch.nonzero(trying & (flat_kept.sum(dim=1) >= 2))[:, 0]  # one host sync per round
        if rows.numel() == 0:
            break
        sub = search.take(rows)
        sub_values, sub_kept = flat_values[rows], flat_kept[rows]
        importance = _importance(sub, sub_values, sub_kept, values.shape)
        reduced = sub_kept.scatter(1, importance.argmin(dim=1, keepdim=True), False)
        lower, upper = sub.lower.flatten(1), sub.upper.flatten(1)
        delta = torch.where(reduced, sub_values, torch.zeros_like(sub_values))
        accepted = torch.zeros(len(rows), dtype=torch.bool, device=values.device)
        found = sub_values
        for step in range(steps + 1):
            logits, grad = sub.gradient(delta.view(shaped))
            flips = (sub.margin_of(logits.float()) <= search.crosses) & ~accepted
            found = torch.where(flips[:, None], delta, found)
            accepted |= flips
            if step == steps:
                break
            size = 0.5 * (1 - step / steps) * (upper - lower)
            moved = (delta - size * grad.flatten(1).sign()).clamp(lower, upper)
            delta = torch.where(reduced & ~accepted[:, None], moved, delta)
        flat_values = flat_values.index_copy(0, rows, torch.where(accepted[:, None], found, sub_values))
        flat_kept = flat_kept.index_copy(0, rows, torch.where(accepted[:, None], reduced, sub_kept))
        trying = trying.index_copy(0, rows, accepted)
    return flat_values.view_as(values), flat_kept.view_as(kept)


def _importance(search: Search, values: Tensor, kept: Tensor, shape: torch.Size) -> Tensor:
    """Per kept entry, the margin when it alone is dropped (lower: less needed); +inf off the support. At rank k
    only the samples with at least k kept entries are evaluated (one host sync per round)."""
    importance = torch.full(kept.shape, math.inf, device=kept.device)
    positions = kept.float().cumsum(dim=1) * kept  # 1-based rank of each kept entry
    counts = kept.sum(dim=1).cpu()  # the round's host sync
    for rank in range(1, int(counts.max()) + 1 if counts.numel() else 1):
        rows = torch.nonzero(counts >= rank)[:, 0].to(kept.device)
        drop = positions[rows] == rank
        trial = torch.where(kept[rows] & ~drop, values[rows], torch.zeros_like(values[rows]))
        margin = search.take(rows).margin(trial.view(-1, *shape[1:]))
        importance = importance.index_copy(
            0, rows, torch.where(drop, margin[:, None].expand_as(drop).float(), importance[rows])
        )
    return importance
