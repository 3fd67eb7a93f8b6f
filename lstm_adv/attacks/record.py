"""The differentiable fill: a record (pre-window bin + 48 hourly bin means) to the model input, in torch.

The twin of :func:`lstm_adv.domain.record.fill_record`, which is the reference (preprocessing builds
every stored model input with it; the tests hold this one equal to it within 1e-6 on the demo and on
synthetic cohorts). The fill is affine in the record's values, and *where* each input cell takes its
value from depends only on which entries are present, which an attack never changes: :class:`FillPlan`
computes those sources and weights once per batch (cumulative max/min along time on the device, no
host synchronisation), and :meth:`FillPlan.apply` is then two gathers, a multiply-add and the clip to
[0, 1] — differentiable in the record's values.

Each input cell (hour t, feature f) is ``a + (b − a)·w`` with ``a``, ``b`` entries of the record
extended by the training median (source row 49):

- measured at t: ``a = b`` = the entry itself;
- between two measurements: the previous and the next one, ``w = (t − prev) / (next − prev)``;
- after the last measurement: the last one (carried forward);
- before the first measurement: the pre-window bin if present, else the first measurement;
- never measured in the window: the pre-window bin if present, else the median.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from lstm_adv.domain.record import PREWINDOW, RECORD_ROWS
from lstm_adv.domain.shapes import N_HOURS

#: The source row of the training median (after the record's 49 rows).
MEDIAN_ROW = RECORD_ROWS


@attrs.frozen(eq=False)
class FillPlan:
    """Where every input cell of a batch takes its value from. Shapes: first, second (B, 48, F) int64 source
    rows (0 pre-window, 1 + k hour k, 49 the median); weight (B, 48, F) of the second source."""

    first: Tensor
    second: Tensor
    weight: Tensor

    @classmethod
    def from_present(cls, present: Tensor) -> FillPlan:
        """The plan for records whose entries ``present`` holds. Shape: present (B, 49, F) bool."""
        seen = present[:, PREWINDOW + 1 :]
        hours = torch.arange(N_HOURS, device=present.device).view(1, N_HOURS, 1)
        never, beyond = torch.full_like(hours, -1), torch.full_like(hours, N_HOURS)
        prev = torch.where(seen, hours, never).cummax(dim=1).values  # last measured hour <= t, -1 if none
        nxt = torch.where(seen, hours, beyond).flip(1).cummin(dim=1).values.flip(1)  # first >= t, 48 if none
        has_prev, has_next = prev >= 0, nxt < N_HOURS
        pre = present[:, PREWINDOW : PREWINDOW + 1]
        # before the first measurement: the pre-window bin, else the first measurement, else the median
        start = torch.where(pre, PREWINDOW, torch.where(has_next, nxt + 1, MEDIAN_ROW))
        first = torch.where(has_prev, prev + 1, start)
        between = has_prev & has_next
        second = torch.where(between, nxt + 1, first)
        weight = torch.where(between, (hours - prev) / (nxt - prev).clamp(min=1), 0.0)
        return cls(first, second, weight.to(torch.float32))

    def apply(self, record: Tensor, median: Tensor) -> Tensor:
        """The model input of ``record`` (absent entries may hold any finite value: the plan never reads them).

        Shape: record (B, 49, F), median (F,) → (B, 48, F) in [0, 1], the record's dtype.
        """
        b, _, f = record.shape
        source = torch.cat([record, median.to(record.dtype).expand(b, 1, f)], dim=1)
        a, c = source.gather(1, self.first), source.gather(1, self.second)
        return (a + (c - a) * self.weight.to(record.dtype)).clamp(0.0, 1.0)


def fill_record(record: Tensor, present: Tensor, median: Tensor) -> Tensor:
    """The model input of each record: the fill of preprocessing, then winsorize to [0, 1] (see the module
    docstring). Absent entries (``present`` false) are ignored whatever they hold (NaN included).

    Shape: record (B, 49, F), present (B, 49, F) bool, median (F,) → (B, 48, F).
    """
    plan = FillPlan.from_present(present)
    return plan.apply(torch.where(present, record, torch.zeros((), dtype=record.dtype, device=record.device)), median)
