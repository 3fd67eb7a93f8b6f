"""Threat models: what an attack may change, and how a change reaches the model.

An attack searches over a variable δ; a threat says what δ is and turns it into the model input.

- :class:`CellThreat` (``cells = all`` or ``observed``): δ is a change of the model input itself,
  (B, 48, 19), inside the box ``x + δ ∈ [0, 1]``, zero off the allowed cells (the attack's mask, and per
  sample e.g. its measured cells). ``observed`` changes a measured cell but not the interpolated,
  carried-forward and back-filled cells the same measurement produced: such an input is not what
  preprocessing yields from any record (a comparison, not a data-entry error).
- :class:`RecordThreat` (``cells = record``): δ is a change of the sample's *record*
  (:mod:`lstm_adv.domain.record`), (B, 49, 19): of its measured hourly values and, with ``prewindow``,
  of the pre-window bin that back-fills the start. The model sees ``fill(record + δ)``, the same
  interpolation, carry-forward, back-fill and winsorizing as preprocessing
  (:class:`~lstm_adv.attacks.record.FillPlan`), so every adversarial input is one an altered record
  produces. One changed entry is one **altered measurement**. An altered value stays in its feature's
  box ([0, 1] scaled: p5–p95 clinically) or keeps its original value, and within ``max_change`` (scaled
  units, per feature) of it; only present entries change (an unmeasured hour has no value to alter).

The feasible set of one record entry with value r is ``{0} ∪ [lower, upper]`` (``lower = −r``,
``upper = 1 − r``, cut to ±max_change): an interval holding 0 when r is inside the box, else an
interval beside 0. :meth:`BatchThreat.prox` and :meth:`BatchThreat.project` are exact for that set
(the better of the interval's point and 0), and equal the plain clamp when the interval holds 0.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import attrs
import numpy as np
import torch
from torch import Tensor

from lstm_adv.attacks.record import FillPlan
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.record import RECORD_SHAPE
from lstm_adv.domain.shapes import CELL_SHAPE, N_FEATURES

ArrayLike = Tensor | np.ndarray


def soft_threshold(u: Tensor, threshold: float | Tensor) -> Tensor:
    """sign(u)·max(|u| − threshold, 0), element-wise (threshold a number or a broadcastable tensor)."""
    if isinstance(threshold, Tensor):
        return u - torch.maximum(torch.minimum(u, threshold), -threshold)
    return u - u.clamp(-threshold, threshold)


def prox_l1_box(u: Tensor, threshold: float | Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """argmin_d ½(d − u)² + threshold·|d| subject to lower ≤ d ≤ upper, element-wise.

    Both terms are separable and the box contains 0, so the prox is the soft-threshold projected to the box.
    """
    return torch.minimum(torch.maximum(soft_threshold(u, threshold), lower), upper)


def _as_tensor(value: ArrayLike) -> Tensor:
    return torch.as_tensor(value)


@attrs.frozen(eq=False)
class SampleInputs:
    """Per-sample inputs of a threat, on the host or a device: the allowed cells (N, 48, 19) of a cell
    threat, or the record (N, 49, 19) float32 (NaN where not measured) of the record threat."""

    allowed: Tensor | None = None
    record: Tensor | None = None

    def take(self, rows: Tensor | slice) -> SampleInputs:
        """The samples ``rows``."""
        return SampleInputs(
            None if self.allowed is None else self.allowed[rows], None if self.record is None else self.record[rows]
        )

    def to(self, device: torch.device) -> SampleInputs:
        """The same inputs on ``device``."""
        return SampleInputs(
            None if self.allowed is None else self.allowed.to(device),
            None if self.record is None else self.record.to(device),
        )


class BatchThreat(abc.ABC):
    """One batch's threat on the device: the clean inputs, the bounds of δ and the map δ → model input.

    Shapes: x (B, 48, 19); lower, upper and δ (B, *variable_shape).
    """

    x: Tensor
    lower: Tensor
    upper: Tensor

    @property
    def allowed(self) -> Tensor:
        """Which entries of δ may change (a non-empty feasible interval). Shape: as δ."""
        return self.upper > self.lower

    def zeros(self) -> Tensor:
        """δ = 0 (the clean input). Shape: as δ."""
        return torch.zeros_like(self.lower)

    @abc.abstractmethod
    def apply(self, delta: Tensor) -> Tensor:
        """The model input for δ (differentiable). Shape: δ → (B, 48, 19)."""

    def prox(self, u: Tensor, threshold: float | Tensor) -> Tensor:
        """argmin_d ½(d − u)² + threshold·|d| over the feasible set of δ, element-wise."""
        return prox_l1_box(u, threshold, self.lower, self.upper)

    def project(self, u: Tensor) -> Tensor:
        """The nearest feasible δ, element-wise."""
        return torch.minimum(torch.maximum(u, self.lower), self.upper)

    def input_delta(self, delta: Tensor) -> Tensor:
        """The change of the model input that δ makes. Shape: δ → (B, 48, 19)."""
        with torch.no_grad():
            return self.apply(delta) - self.x

    @property
    def record_space(self) -> bool:
        """Whether δ is a change of the record (altered measurements) rather than of the model input."""
        return False

    @abc.abstractmethod
    def take(self, rows: Tensor) -> BatchThreat:
        """The threat of the samples ``rows`` (a search that drops finished samples works on fewer)."""


@attrs.define(eq=False)
class CellBatch(BatchThreat):
    """δ changes the model input directly: ``x + δ`` in the box, 0 off the allowed cells."""

    x: Tensor
    lower: Tensor
    upper: Tensor

    def apply(self, delta: Tensor) -> Tensor:
        """``x + δ``."""
        return self.x + delta

    def take(self, rows: Tensor) -> CellBatch:
        """The samples ``rows``."""
        return CellBatch(self.x[rows], self.lower[rows], self.upper[rows])


@attrs.define(eq=False)
class RecordBatch(BatchThreat):
    """δ changes record entries; the model sees ``x + fill(r + δ) − fill(r)`` (= fill(r + δ) up to rounding,
    and exactly x at δ = 0)."""

    x: Tensor
    lower: Tensor
    upper: Tensor
    record: Tensor
    median: Tensor
    plan: FillPlan
    clean: Tensor  # fill(r), (B, 48, 19)

    def apply(self, delta: Tensor) -> Tensor:
        """The model input of the altered record."""
        return (self.x + (self.plan.apply(self.record + delta, self.median) - self.clean)).clamp(0.0, 1.0)

    def prox(self, u: Tensor, threshold: float | Tensor) -> Tensor:
        """The prox over ``{0} ∪ [lower, upper]``: the interval's minimizer, or 0 where that costs less."""
        inside = prox_l1_box(u, threshold, self.lower, self.upper)
        tau = threshold if isinstance(threshold, Tensor) else torch.tensor(threshold, dtype=u.dtype, device=u.device)
        cost = 0.5 * (inside - u) ** 2 + tau * inside.abs()
        return torch.where(cost < 0.5 * u * u, inside, torch.zeros_like(u))

    def project(self, u: Tensor) -> Tensor:
        """The nearest point of ``{0} ∪ [lower, upper]`` (0 on a tie: the original value)."""
        inside = torch.minimum(torch.maximum(u, self.lower), self.upper)
        return torch.where((inside - u).abs() < u.abs(), inside, torch.zeros_like(u))

    @property
    def record_space(self) -> bool:
        """Always True."""
        return True

    def take(self, rows: Tensor) -> RecordBatch:
        """The samples ``rows``."""
        plan = FillPlan(self.plan.first[rows], self.plan.second[rows], self.plan.weight[rows])
        return RecordBatch(
            self.x[rows], self.lower[rows], self.upper[rows], self.record[rows], self.median, plan, self.clean[rows]
        )


class Threat(abc.ABC):
    """What an attack may change (the part shared by every sample); see the module docstring."""

    #: The name of the threat in settings and summaries (``all``, ``observed``, ``record``).
    name: str
    #: The shape of δ for one sample.
    variable_shape: tuple[int, int]

    @abc.abstractmethod
    def inputs(self, n: int, *, allowed: ArrayLike | None, record: ArrayLike | None) -> SampleInputs:
        """The per-sample inputs of ``n`` samples, checked (a wrong shape or a missing input is a DataError)."""

    @abc.abstractmethod
    def editable(self, inputs: SampleInputs) -> Tensor | None:
        """Which entries of δ each sample may change (None: every entry of every sample).

        Shape: (N, *variable_shape)."""

    @abc.abstractmethod
    def batch(self, x: Tensor, inputs: SampleInputs) -> BatchThreat:
        """The threat of one batch (``x`` and ``inputs`` on the device)."""

    @abc.abstractmethod
    def trial_inputs(self, x: Tensor) -> SampleInputs:
        """Inputs for a batch of random samples ``x`` (sizing batches to memory), every entry changeable."""

    @abc.abstractmethod
    def to(self, device: torch.device) -> Threat:
        """The same threat with its tensors on ``device``."""


def check_mask(mask: ArrayLike | None) -> Tensor | None:
    """A (48, 19) bool cell mask with at least one cell, or ``None`` (every cell); else a ConfigError."""
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


class CellThreat(Threat):
    """Cells of the model input (``all``; ``observed`` with each sample's measured cells as ``allowed``)."""

    variable_shape = CELL_SHAPE

    def __init__(self, name: str = "all", *, mask: ArrayLike | None = None) -> None:
        if name not in ("all", "observed"):
            raise ConfigError(f"a cell threat is 'all' or 'observed', got {name!r}")
        self.name = name
        self.mask = check_mask(mask)

    def inputs(self, n: int, *, allowed: ArrayLike | None, record: ArrayLike | None) -> SampleInputs:
        """``allowed`` (N, 48, 19) bool, or None (every cell); ``record`` is not used."""
        if allowed is None:
            if self.name == "observed":
                raise DataError("cells 'observed' needs each sample's measured cells (allowed=…)")
            return SampleInputs()
        cells = _as_tensor(allowed)
        if cells.dtype != torch.bool or tuple(cells.shape) != (n, *CELL_SHAPE):
            raise DataError(
                f"attack allowed cells must be a bool array of shape ({n}, 48, 19), got {tuple(cells.shape)}"
            )
        return SampleInputs(allowed=cells)

    def editable(self, inputs: SampleInputs) -> Tensor | None:
        """The allowed cells within the mask (None without per-sample cells)."""
        if inputs.allowed is None:
            return None
        return inputs.allowed if self.mask is None else inputs.allowed & self.mask.to(inputs.allowed.device)

    def batch(self, x: Tensor, inputs: SampleInputs) -> CellBatch:
        """Bounds ``[−x, 1 − x]`` on the allowed cells, ``[0, 0]`` elsewhere."""
        lower, upper = -x, 1.0 - x
        allowed = self.editable(inputs)
        if allowed is None and self.mask is not None:
            allowed = self.mask.to(x.device)
        if allowed is not None:
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            lower, upper = torch.where(allowed, lower, zero), torch.where(allowed, upper, zero)
        return CellBatch(x, lower, upper)

    def trial_inputs(self, x: Tensor) -> SampleInputs:
        """Every cell allowed (as ``observed`` inputs would take memory)."""
        return SampleInputs(allowed=torch.ones(x.shape, dtype=torch.bool, device=x.device))

    def to(self, device: torch.device) -> CellThreat:
        """The same threat, its mask on ``device``."""
        return CellThreat(self.name, mask=None if self.mask is None else self.mask.to(device))

    def __repr__(self) -> str:
        return f"CellThreat({self.name!r}, mask={'None' if self.mask is None else 'set'})"


class RecordThreat(Threat):
    """Altered measurements of the record, pushed through the fill (see the module docstring).

    ``median`` (19,): the training median in scaled units (what the fill uses for never-measured series);
    ``mask`` (48, 19): the features and hours whose measurements may change (the pre-window bin of a feature
    counts as hour 0's: allowed when hour 0 of that feature is); ``max_change`` (19,): the largest change
    of one measurement per feature in scaled units (``inf`` or None: unbounded); ``prewindow``: whether
    the pre-window bin may change.
    """

    name = "record"
    variable_shape = RECORD_SHAPE

    def __init__(
        self,
        median: ArrayLike,
        *,
        mask: ArrayLike | None = None,
        max_change: ArrayLike | None = None,
        prewindow: bool = True,
    ) -> None:
        self.median = torch.as_tensor(
            np.asarray(median, dtype=np.float32) if isinstance(median, np.ndarray) else median
        )
        if tuple(self.median.shape) != (N_FEATURES,) or not bool(torch.isfinite(self.median).all()):
            raise ConfigError(
                f"the record threat's median must be 19 finite values, got shape {tuple(self.median.shape)}"
            )
        self.median = self.median.float()
        self.mask = check_mask(mask)
        self.max_change = None if max_change is None else _bounds(max_change)
        self.prewindow = prewindow

    def inputs(self, n: int, *, allowed: ArrayLike | None, record: ArrayLike | None) -> SampleInputs:
        """``record`` (N, 49, 19) float32, NaN where nothing was measured; ``allowed`` is not used."""
        if record is None:
            raise DataError("cells 'record' needs each sample's record (record=…, a features run's record)")
        values = _as_tensor(record)
        if values.dtype != torch.float32 or tuple(values.shape) != (n, *RECORD_SHAPE):
            raise DataError(
                f"attack record must be a float32 array of shape ({n}, 49, 19), got "
                f"{str(values.dtype).removeprefix('torch.')} {tuple(values.shape)}"
            )
        if bool(torch.isinf(values).any()):
            raise DataError("attack record must hold finite values or NaN (not measured), got infinity")
        return SampleInputs(record=values)

    def changeable(self, device: torch.device) -> Tensor:
        """Which record rows and features may change at all (mask and pre-window rule). Shape: (49, 19)."""
        hours = torch.ones(CELL_SHAPE, dtype=torch.bool, device=device) if self.mask is None else self.mask.to(device)
        pre = hours[:1] & self.prewindow
        return torch.cat([pre, hours], dim=0)

    def editable(self, inputs: SampleInputs) -> Tensor:
        """The present entries the mask and the pre-window rule allow. Shape: (N, 49, 19)."""
        assert inputs.record is not None
        present = ~torch.isnan(inputs.record)
        return present & self.changeable(present.device)

    def batch(self, x: Tensor, inputs: SampleInputs) -> RecordBatch:
        """Bounds of each altered value (box [0, 1] or its original value, within ``max_change``) and the fill plan."""
        assert inputs.record is not None
        present = ~torch.isnan(inputs.record)
        record = torch.where(present, inputs.record, torch.zeros((), dtype=x.dtype, device=x.device))
        lower, upper = -record, 1.0 - record
        if self.max_change is not None:
            bound = self.max_change.to(x.device)
            lower, upper = torch.maximum(lower, -bound), torch.minimum(upper, bound)
        allowed = present & self.changeable(x.device) & (lower <= upper)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        lower, upper = torch.where(allowed, lower, zero), torch.where(allowed, upper, zero)
        median = self.median.to(x.device)
        plan = FillPlan.from_present(present)
        return RecordBatch(x, lower, upper, record, median, plan, plan.apply(record, median))

    def trial_inputs(self, x: Tensor) -> SampleInputs:
        """Random records with every entry present."""
        generator = torch.Generator(device=x.device).manual_seed(0)
        shape = (x.shape[0], *RECORD_SHAPE)
        return SampleInputs(record=torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype))

    def to(self, device: torch.device) -> RecordThreat:
        """The same threat with its tensors on ``device``."""
        moved = RecordThreat(self.median.to(device), prewindow=self.prewindow)
        moved.mask = None if self.mask is None else self.mask.to(device)
        moved.max_change = None if self.max_change is None else self.max_change.to(device)
        return moved

    def __repr__(self) -> str:
        bounded = "None" if self.max_change is None else "set"
        mask = "None" if self.mask is None else "set"
        return f"RecordThreat(prewindow={self.prewindow}, mask={mask}, max_change={bounded})"


def _bounds(value: ArrayLike | Sequence[float]) -> Tensor:
    bounds = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if tuple(bounds.shape) != (N_FEATURES,) or bool(torch.isnan(bounds).any()) or bool((bounds < 0).any()):
        raise ConfigError("the record threat's max_change must be 19 values ≥ 0 (inf: unbounded), without NaN")
    return bounds
