"""Tail tests: has the slowest part of the canary's requests got slower?

A canary whose slowest 10% of requests are 1.5 times slower moves the median not at all and
the mean by about a tenth; the rank test on the whole distribution barely sees it, and the
Hodges-Lehmann shift not at all. Per upper quantile ``q`` this module compares the cohorts'
tails with a **tail-weighted rank statistic**: each sample of the pooled cohorts scores
``max(0, u - q) / (1 - q)`` at its pooled rank position ``u`` (tied samples share their
group's average score), and the statistic is the difference between the canary's and the
baseline's mean score. Under "no difference" every assignment of the pooled samples to the
cohorts is equally likely, so its exact permutation mean is 0 and its variance is known;
like the Mann-Whitney U (which is the same statistic with score ``u``) it is asymptotically
normal, so the anytime-valid mixture test of :mod:`coalmine.analyzers.sequential` applies.

It responds to any change in the tail, at the quantile or beyond it: exceedances over a
fixed quantile do not (a slowest 1% that doubles still exceeds the baseline's p99 in 1% of
requests). The effect it reports is the relative change of the **tail mean**, the mean of
each cohort's slowest ``1 - q`` (the p99 tail mean of a slowest 1% that doubled is +100%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

__all__ = ["MIN_TAIL_SAMPLES", "TailChange", "TailTest", "tail_changes", "tail_tests"]

MIN_TAIL_SAMPLES = 30
"""Pooled samples beyond the quantile before its test counts: the normal approximation of
a statistic that rests on a handful of values is poor, and its false alarms rise."""


@dataclass(frozen=True, slots=True)
class TailTest:
    """The tail-weighted rank statistic of one upper quantile.

    Attributes:
        quantile: ``q``, e.g. 0.99.
        effect: canary mean score minus baseline mean score (0 under no difference; up to
            about ``(1 - q) / 2`` when the canary holds the whole pooled tail).
        variance: the permutation variance of ``effect`` under no difference.
        tail_samples: pooled samples beyond the pooled ``q`` quantile.
    """

    quantile: float
    effect: float
    variance: float
    tail_samples: int

    @property
    def z(self) -> float:
        """The standardised effect (0 when the statistic has no variance)."""
        return self.effect / math.sqrt(self.variance) if self.variance > 0.0 else 0.0


@dataclass(frozen=True, slots=True)
class TailChange:
    """How one upper quantile and the tail beyond it moved.

    Attributes:
        quantile: ``q``.
        baseline_quantile: the baseline's ``q`` quantile.
        canary_quantile: the canary's ``q`` quantile.
        baseline_tail_mean: mean of the baseline's largest ``1 - q``.
        canary_tail_mean: mean of the canary's largest ``1 - q``.
        relative_change: ``canary_tail_mean / baseline_tail_mean - 1`` (over the absolute
            baseline value; 0 or infinite when the baseline's tail mean is 0).
    """

    quantile: float
    baseline_quantile: float
    canary_quantile: float
    baseline_tail_mean: float
    canary_tail_mean: float
    relative_change: float


def tail_tests(
    baseline: NDArray[np.float64], canary: NDArray[np.float64], quantiles: Sequence[float]
) -> list[TailTest]:
    """The tail statistic of two **sorted** cohorts at each quantile.

    Only the pooled samples beyond the smallest quantile carry a score, so only they are
    merged and ranked: every value from the smallest one among the largest
    ``(1 - q) N + 1`` of each cohort up (whole tie groups), a tenth of the data at q = 0.9.
    """
    n_b, n_c = int(baseline.size), int(canary.size)
    total = n_b + n_c
    if not quantiles or total < 2:
        return []
    # Positions r (1-based) score when (r - 0.5) / N > q: the top N - floor(qN + 0.5).
    need = total - math.floor(min(quantiles) * total + 0.5) + 1
    top = np.sort(np.concatenate((baseline[-need:], canary[-need:])))[-need:]
    first = top[0]
    from_b = int(np.searchsorted(baseline, first, side="left"))
    from_c = int(np.searchsorted(canary, first, side="left"))
    tail_c = canary[from_c:]
    pooled = np.sort(np.concatenate((baseline[from_b:], tail_c)), kind="stable")
    size = pooled.size
    starts = np.flatnonzero(np.concatenate(([True], pooled[1:] != pooled[:-1])))
    ends = np.append(starts[1:], size)
    lengths = ends - starts
    values = pooled[starts]
    in_canary = np.searchsorted(tail_c, values, side="right") - np.searchsorted(
        tail_c, values, side="left"
    )
    positions = (np.arange(total - size, total) + 0.5) / total
    scale = total / n_b  # canary mean - pooled mean, to canary mean - baseline mean
    out = []
    for q in quantiles:
        scores = np.maximum(positions - q, 0.0) / (1.0 - q)
        cumulative = np.concatenate(([0.0], np.cumsum(scores)))
        group = (cumulative[ends] - cumulative[starts]) / lengths
        mean_all = float(cumulative[-1]) / total
        # Sum of squared deviations over all N positions; those below the tail score 0.
        spread = float(np.sum(lengths * group * group)) - total * mean_all * mean_all
        canary_mean = float(np.dot(in_canary, group)) / n_c
        variance_sum = n_c * n_b / (total * (total - 1.0)) * max(spread, 0.0)
        out.append(
            TailTest(
                quantile=q,
                effect=(canary_mean - mean_all) * scale,
                variance=variance_sum / (n_c * n_c) * scale * scale,
                tail_samples=int(np.count_nonzero(scores)),
            )
        )
    return out


def tail_changes(
    baseline: NDArray[np.float64], canary: NDArray[np.float64], quantiles: Sequence[float]
) -> list[TailChange]:
    """Each quantile and tail mean of two **sorted** cohorts, and the tail mean's change."""
    out = []
    for q in quantiles:
        tail_b, tail_c = _tail_mean(baseline, q), _tail_mean(canary, q)
        out.append(
            TailChange(
                quantile=q,
                baseline_quantile=_quantile(baseline, q),
                canary_quantile=_quantile(canary, q),
                baseline_tail_mean=tail_b,
                canary_tail_mean=tail_c,
                relative_change=_relative(tail_c - tail_b, tail_b),
            )
        )
    return out


def _tail_mean(x: NDArray[np.float64], q: float) -> float:
    """Mean of the largest ``ceil((1 - q) n)`` values of a sorted array (at least one)."""
    k = max(1, math.ceil((1.0 - q) * x.size - 1e-9))
    return float(x[-k:].mean())


def _quantile(x: NDArray[np.float64], q: float) -> float:
    pos = q * (x.size - 1)
    low = math.floor(pos)
    high = min(low + 1, x.size - 1)
    return float(x[low] + (x[high] - x[low]) * (pos - low))


def _relative(delta: float, base: float) -> float:
    if base != 0.0:
        return delta / abs(base)
    return 0.0 if delta == 0.0 else math.copysign(math.inf, delta)
