"""Intervals for the toolkit's figures: percentile bootstrap over examples, and Wilson's interval for rates.

Every function is pure numpy and seeded, so the same inputs give the same interval. A bootstrap draws
``samples`` resamples of the n units (examples, samples) with replacement and takes the
``(1 − confidence)/2`` and ``(1 + confidence)/2`` percentiles of the statistic over them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from lstm_adv.results.summaries import Estimate

FloatArray = npt.NDArray[np.float64]

#: Resamples and coverage used where a stage has no setting of its own.
BOOTSTRAP_SAMPLES = 1000
CONFIDENCE = 0.95
# A resample's temporaries (resamples × units × columns) stay below this many elements.
_CHUNK_ELEMENTS = 20_000_000


def resample_counts(n: int, samples: int, seed: int) -> npt.NDArray[np.int64]:
    """How often each of n units is drawn in each resample. Shape: (samples, n); every row sums to n."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n))
    counts = np.zeros((samples, n), dtype=np.int64)
    np.add.at(counts, (np.arange(samples)[:, None], draws), 1)
    return counts


def percentile_interval(values: npt.ArrayLike, confidence: float = CONFIDENCE) -> tuple[FloatArray, FloatArray]:
    """The percentile interval of bootstrap values over their first axis (NaN-aware). Shape: (B, ...) → 2 × (...)."""
    array = np.asarray(values, dtype=np.float64)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(array, [tail, 100.0 - tail], axis=0)
    return np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)


def bootstrap(
    values: npt.ArrayLike,
    statistic: Callable[[FloatArray], FloatArray],
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[FloatArray, FloatArray]:
    """The percentile interval of ``statistic`` over resampled rows of ``values``.

    ``statistic`` maps a batch of resamples (c, n, ...) to one value per resample (c, ...). Resamples
    are drawn in chunks that bound the memory. Shape: values (n, ...) → 2 × (...).
    """
    array = np.asarray(values, dtype=np.float64)
    n = array.shape[0]
    rng = np.random.default_rng(seed)
    per_resample = max(1, int(np.prod(array.shape)))
    chunk = max(1, min(samples, _CHUNK_ELEMENTS // per_resample))
    parts = []
    for start in range(0, samples, chunk):
        draws = rng.integers(0, n, size=(min(chunk, samples - start), n))
        parts.append(np.asarray(statistic(array[draws]), dtype=np.float64))
    return percentile_interval(np.concatenate(parts), confidence)


def median_estimate(
    values: npt.ArrayLike, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> Estimate:
    """The median with its bootstrap interval (None without values)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        return Estimate(None, None, None)
    low, high = bootstrap(
        array, lambda batch: np.median(batch, axis=1), samples=samples, seed=seed, confidence=confidence
    )
    return Estimate(float(np.median(array)), float(low), float(high))


def rate_estimate(
    successes: int, trials: int, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> Estimate:
    """A rate successes / trials with its bootstrap interval over the trials (None without trials)."""
    if trials <= 0:
        return Estimate(None, None, None)
    outcomes = np.zeros(trials)
    outcomes[:successes] = 1.0
    low, high = bootstrap(outcomes, lambda batch: batch.mean(axis=1), samples=samples, seed=seed, confidence=confidence)
    return Estimate(successes / trials, float(low), float(high))


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval of a binomial rate (well behaved at 0 and 1 and for few trials)."""
    if trials <= 0:
        return (0.0, 1.0)
    z = _normal_quantile(0.5 + confidence / 2.0)
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _normal_quantile(q: float) -> float:
    """The standard normal quantile (bisection on erf; accurate to 1e-10)."""
    low, high = -10.0, 10.0
    for _ in range(80):
        mid = (low + high) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            low = mid
        else:
            high = mid
    return (low + high) / 2
