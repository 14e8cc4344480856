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

__all__ = ["MIN_TAIL_SAMPLES", "TailComparison", "compare_tails"]

MIN_TAIL_SAMPLES = 30
"""Pooled samples beyond the quantile before its test counts: the normal approximation of
a statistic that rests on a handful of values is poor, and its false alarms rise."""


@dataclass(frozen=True, slots=True)
class TailComparison:
    """Both cohorts' tails beyond one upper quantile.

    Attributes:
        quantile: ``q``, e.g. 0.99.
        effect: canary mean score minus baseline mean score (0 under no difference; up to
            about ``(1 - q) / 2`` when the canary holds the whole pooled tail).
        variance: the permutation variance of ``effect`` under no difference.
        tail_samples: pooled samples beyond the pooled ``q`` quantile.
        baseline_quantile: the baseline's ``q`` quantile.
        canary_quantile: the canary's ``q`` quantile.
        baseline_tail_mean: mean of the baseline's slowest ``1 - q``.
        canary_tail_mean: mean of the canary's slowest ``1 - q``.
        relative_change: ``canary_tail_mean / baseline_tail_mean - 1`` (over the absolute
            baseline value; 0 or infinite when the baseline's tail mean is 0).
    """

    quantile: float
    effect: float
    variance: float
    tail_samples: int
    baseline_quantile: float
    canary_quantile: float
    baseline_tail_mean: float
    canary_tail_mean: float
    relative_change: float

    @property
    def z(self) -> float:
        """The standardised effect (0 when the statistic has no variance)."""
        return self.effect / math.sqrt(self.variance) if self.variance > 0.0 else 0.0


def compare_tails(
    baseline: NDArray[np.float64], canary: NDArray[np.float64], quantiles: Sequence[float]
) -> list[TailComparison]:
    """Compare the upper tails of two **sorted** cohorts at each quantile."""
    n_b, n_c = int(baseline.size), int(canary.size)
    total = n_b + n_c
    pooled = np.sort(np.concatenate((baseline, canary)), kind="stable")
    starts = np.flatnonzero(np.concatenate(([True], pooled[1:] != pooled[:-1])))
    ends = np.append(starts[1:], total)
    lengths = ends - starts
    values = pooled[starts]
    in_canary = np.searchsorted(canary, values, side="right") - np.searchsorted(
        canary, values, side="left"
    )
    positions = (np.arange(total) + 0.5) / total
    out = []
    for q in quantiles:
        scores = np.maximum(positions - q, 0.0) / (1.0 - q)
        cumulative = np.concatenate(([0.0], np.cumsum(scores)))
        group = (cumulative[ends] - cumulative[starts]) / lengths
        mean_all = float(cumulative[-1]) / total
        spread = float(np.sum(lengths * (group - mean_all) ** 2))
        canary_mean = float(np.dot(in_canary, group)) / n_c
        scale = total / n_b  # canary mean - pooled mean, to canary mean - baseline mean
        variance_sum = n_c * n_b / (total * (total - 1.0)) * spread if total > 1 else 0.0
        tail_b, tail_c = _tail_mean(baseline, q), _tail_mean(canary, q)
        out.append(
            TailComparison(
                quantile=q,
                effect=(canary_mean - mean_all) * scale,
                variance=variance_sum / (n_c * n_c) * scale * scale,
                tail_samples=int(np.count_nonzero(scores)),
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
