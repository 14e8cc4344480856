"""Effect measures of a distribution metric that see changes a rank shift can miss.

The Hodges-Lehmann shift is the median of the pairwise differences; with heavy ties (a
metric that is mostly zeros, histogram buckets, whole milliseconds) it is exactly 0 while
the distributions differ a lot: a retries metric whose non-zero share goes from 8% to 30%
has a shift of 0 and a mean 4x the baseline's. The relative change of the **mean** (the
effect size Kayenta's classifier uses next to its Mann-Whitney interval) sees it. Its
interval here is a confidence sequence, so a metric shown within tolerance by it stays
correctly shown however often coalmine looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from coalmine.analyzers.confidence import mixture_radius

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["MeanChange", "mean_change"]

_MIN_TAU = 0.05
"""Mixture width used when the tolerance is 0 (any change fails)."""


@dataclass(frozen=True, slots=True)
class MeanChange:
    """Relative change of the canary's mean over the baseline's.

    Attributes:
        mean_baseline: the baseline's sample mean.
        mean_canary: the canary's sample mean.
        estimate: ``mean_canary / mean_baseline - 1`` (over ``|mean_baseline|`` when a mean
            is not positive); 0 when both cohorts are the same constant.
        low: lower end of the confidence sequence for ``estimate``.
        high: upper end.
        scale: ``log`` (the interval is built for the log of the ratio, both means
            positive), ``raw`` (for the difference over ``|mean_baseline|``), or
            ``constant`` (both cohorts hold one and the same value: no change).
    """

    mean_baseline: float
    mean_canary: float
    estimate: float
    low: float
    high: float
    scale: Literal["log", "raw", "constant"]


def mean_change(
    baseline: NDArray[np.float64], canary: NDArray[np.float64], alpha: float, tolerance: float
) -> MeanChange:
    """The relative change of the mean with a two-sided ``1 - alpha`` confidence sequence.

    The variance of the estimate is the delta method's (the cohorts' sample variances over
    their sizes, on the log scale when both means are positive); the mixture width is the
    tolerance, where the sequence is meant to decide. A cohort of one sample, or a
    baseline mean of 0 with a non-zero canary, gives an unbounded interval.
    """
    n_b, n_c = int(baseline.size), int(canary.size)
    mean_b, mean_c = float(baseline.mean()), float(canary.mean())
    var_b = float(baseline.var(ddof=1)) if n_b > 1 else math.inf
    var_c = float(canary.var(ddof=1)) if n_c > 1 else math.inf
    tau = max(tolerance, _MIN_TAU)
    if var_b == 0.0 and var_c == 0.0 and mean_b == mean_c:
        return MeanChange(mean_b, mean_c, 0.0, 0.0, 0.0, "constant")
    if mean_b > 0.0 and mean_c > 0.0:
        log_ratio = math.log(mean_c / mean_b)
        variance = var_c / (n_c * mean_c * mean_c) + var_b / (n_b * mean_b * mean_b)
        radius = mixture_radius(variance, tau, alpha)
        return MeanChange(
            mean_b,
            mean_c,
            math.expm1(log_ratio),
            math.expm1(log_ratio - radius),
            _expm1(log_ratio + radius),
            "log",
        )
    if mean_b == 0.0:
        estimate = 0.0 if mean_c == 0.0 else math.copysign(math.inf, mean_c)
        return MeanChange(mean_b, mean_c, estimate, -math.inf, math.inf, "raw")
    scale = abs(mean_b)
    estimate = (mean_c - mean_b) / scale
    radius = mixture_radius((var_c / n_c + var_b / n_b) / (scale * scale), tau, alpha)
    return MeanChange(mean_b, mean_c, estimate, estimate - radius, estimate + radius, "raw")


def _expm1(x: float) -> float:
    return math.inf if x > 700.0 else math.expm1(x)
