"""Batch sizes for a device: a default on a CPU, and on CUDA the largest batch that fits in memory.

A batch size is a speed setting for the work sized here (every sample of the L1 attack has its own
state, so its results do not depend on it). "auto" means :data:`CPU_BATCH_SIZE` on a CPU. On CUDA,
:func:`probe_batch_size` finds the largest batch a piece of work fits in: it doubles the size from
:data:`PROBE_START` until a try fails or the limit fits, then bisects between the largest size that
fitted and the smallest that did not. A try fails when it raises ``torch.cuda.OutOfMemoryError`` or
when its peak memory passes :data:`MEMORY_MARGIN` of the memory that was free when probing began;
that headroom covers the allocator's fragmentation, workspaces of other shapes and other processes.
The allocator's cache is emptied after every try.

What a probe learned is kept for the process under a key naming the work (for an attack: its kind,
method, kernels and the model's parameter shapes), so each kind of work is probed once, and a later
call with a larger limit continues from what is known.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable

import attrs
import torch

from lstm_adv.domain.errors import DeviceMemoryError

log = logging.getLogger(__name__)

#: Samples per batch on a CPU for "auto".
CPU_BATCH_SIZE = 256
#: The largest batch "auto" chooses.
MAX_BATCH_SIZE = 65_536
#: The first size a probe tries.
PROBE_START = 1024
#: Share of the free device memory a batch may use at its peak.
MEMORY_MARGIN = 0.8
#: A probe stops bisecting when the sizes that fit and fail are this close (relative to the one that fits).
PROBE_TOLERANCE = 1 / 16

#: ``try_batch(size)``: whether a batch of ``size`` fits.
TryBatch = Callable[[int], bool]


@attrs.define
class Bounds:
    """What is known of one piece of work: the largest size that fitted (0: none) and the smallest that did not."""

    fits: int = 0
    fails: int | None = None

    def record(self, size: int, fitted: bool) -> None:
        """Note the outcome of one try."""
        if fitted:
            self.fits = max(self.fits, size)
        else:
            self.fails = size if self.fails is None else min(self.fails, size)

    def failure_within(self, limit: int) -> int | None:
        """The smallest size that failed, if it is at most ``limit``."""
        return self.fails if self.fails is not None and self.fails <= limit else None


def largest_batch(
    try_batch: TryBatch, *, start: int, limit: int, bounds: Bounds | None = None, tolerance: float = 0.0
) -> int:
    """The largest size ≤ ``limit`` for which ``try_batch`` is true; 0 when not even 1 fits.

    Sizes double from ``start`` until one fails or ``limit`` fits, then a bisection between the largest
    size that fitted and the smallest that did not runs until they are ``max(1, tolerance · fitted)``
    apart (``tolerance`` 0: exactly the largest). The answer is always a size that was tried and fitted
    (or known to fit from ``bounds``, which carries what earlier calls learned and is updated).
    """
    if start < 1 or limit < 1:
        raise ValueError(f"largest_batch needs start ≥ 1 and limit ≥ 1, got start {start}, limit {limit}")
    known = bounds if bounds is not None else Bounds()
    if known.fits >= limit:
        return limit
    while known.failure_within(limit) is None:
        size = min(limit, max(start, 2 * known.fits))
        fitted = try_batch(size)
        known.record(size, fitted)
        if fitted and size == limit:
            return limit
    low, high = known.fits, known.failure_within(limit)
    while high is not None and high - low > max(1, math.floor(tolerance * low)):
        middle = (low + high) // 2
        known.record(middle, try_batch(middle))
        low, high = known.fits, known.failure_within(limit)
    return low


def memory_trial(run: Callable[[int], object], device: torch.device, *, margin: float = MEMORY_MARGIN) -> TryBatch:
    """A ``try_batch`` that runs ``run(size)``: it fits unless it raises ``torch.cuda.OutOfMemoryError`` or,
    on CUDA, its peak memory passes ``margin`` of the memory free now. The CUDA cache is emptied after each try."""
    cuda = device.type == "cuda"
    budget, base = math.inf, 0
    if cuda:
        torch.cuda.empty_cache()
        free, _total = torch.cuda.mem_get_info(device)
        budget, base = margin * free, torch.cuda.memory_allocated(device)

    def try_batch(size: int) -> bool:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        try:
            run(size)
            if cuda:
                torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            fitted = False  # leaving the handler drops the traceback and with it the batch's tensors
        else:
            fitted = not cuda or torch.cuda.max_memory_allocated(device) - base <= budget
        if cuda:
            torch.cuda.empty_cache()
        log.debug("batch of %d on %s: %s", size, device, "fits" if fitted else "does not fit")
        return fitted

    return try_batch


_KNOWN: dict[Hashable, Bounds] = {}


def probe_batch_size(
    key: Hashable,
    run: Callable[[int], object],
    device: torch.device,
    *,
    limit: int = MAX_BATCH_SIZE,
    start: int = PROBE_START,
    margin: float = MEMORY_MARGIN,
    tolerance: float = PROBE_TOLERANCE,
) -> int:
    """The largest batch (≤ ``limit``) of the work ``run(size)`` that fits on ``device``; learned once per
    process under ``key`` (see the module docstring). Raises :class:`DeviceMemoryError` when none fits."""
    bounds = _KNOWN.setdefault(key, Bounds())
    if bounds.fits >= limit:
        return limit
    started = time.perf_counter()
    trial = memory_trial(run, device, margin=margin)
    size = largest_batch(trial, start=min(start, limit), limit=limit, bounds=bounds, tolerance=tolerance)
    if size == 0:
        raise DeviceMemoryError(
            f"not even a batch of 1 sample fits in {margin:.0%} of the free memory of {device}; "
            "free memory on the device (other processes) or use --device cpu"
        )
    log.info("batch size %d on %s (probed in %.1f s)", size, device, time.perf_counter() - started)
    return size


def auto_batch_size(
    key: Hashable, run: Callable[[int], object], device: torch.device, *, limit: int = MAX_BATCH_SIZE
) -> int:
    """What batch size "auto" means on ``device``: :data:`CPU_BATCH_SIZE` off CUDA, on CUDA the probed size;
    never more than ``limit`` (e.g. the most samples one call handles) or :data:`MAX_BATCH_SIZE`."""
    limit = max(1, min(limit, MAX_BATCH_SIZE))
    if device.type != "cuda":
        return min(CPU_BATCH_SIZE, limit)
    return probe_batch_size(key, run, device, limit=limit)


def forget_probes() -> None:
    """Forget every probed batch size of this process (the next "auto" probes again)."""
    _KNOWN.clear()
