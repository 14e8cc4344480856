"""The mean's change and its confidence sequence; the mixture radius behind it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coalmine.analyzers.confidence import mixture_radius
from coalmine.analyzers.effects import mean_change
from coalmine.analyzers.sequential import auc_log_e


@pytest.mark.parametrize(("variance", "tau", "alpha"), [(1e-4, 0.1, 0.025), (0.02, 0.05, 0.05)])
def test_the_radius_is_where_the_mixture_likelihood_ratio_reaches_one_over_alpha(
    variance: float, tau: float, alpha: float
) -> None:
    radius = mixture_radius(variance, tau, alpha)
    log_e = auc_log_e(radius, variance, tau, one_sided=False)
    assert log_e == pytest.approx(math.log(1 / alpha), rel=1e-9)


def test_the_radius_handles_degenerate_variances() -> None:
    assert mixture_radius(0.0, 0.1, 0.05) == 0.0
    assert math.isinf(mixture_radius(math.inf, 0.1, 0.05))
    assert math.isinf(mixture_radius(math.nan, 0.1, 0.05))
    with pytest.raises(ValueError, match="alpha"):
        mixture_radius(1.0, 0.1, 1.5)


def test_the_sequence_covers_the_true_change_at_every_look() -> None:
    # 400 canaries whose mean is truly 5% above the baseline's (lognormal, sd 0.5 on the
    # log scale), looked at 40 times as samples grow from 50 to 2000 a side. A fixed 95%
    # interval checked at every look misses the truth in far more than 5% of runs; the
    # sequence at alpha 0.05 must miss it in at most 5% plus three binomial sd (3.3%).
    rng = np.random.default_rng(21)
    missed = 0
    truth = 0.05
    for _ in range(400):
        base = rng.lognormal(4.6, 0.5, 2000)
        canary = rng.lognormal(4.6, 0.5, 2000) * (1 + truth)
        for n in np.linspace(50, 2000, 40).astype(int):
            change = mean_change(base[:n], canary[:n], 0.05, 0.1)
            if not change.low <= truth <= change.high:
                missed += 1
                break
    assert missed / 400 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)


def test_mostly_zero_cohorts_get_the_mean_they_differ_by() -> None:
    # Kayenta's "High Metric (Large Input)" shape: 92% vs 70% zeros. The median and the
    # Hodges-Lehmann shift are 0; the mean is several times the baseline's.
    rng = np.random.default_rng(22)
    base = np.where(rng.random(20_000) < 0.08, 1 + rng.poisson(1, 20_000), 0).astype(float)
    canary = np.where(rng.random(20_000) < 0.30, 1 + rng.poisson(1, 20_000), 0).astype(float)
    change = mean_change(base, canary, 0.05, 0.1)
    assert change.scale == "log"
    assert change.estimate == pytest.approx(30 / 8 - 1, rel=0.1)
    assert change.low > 2.0


def test_constant_cohorts_and_a_zero_baseline() -> None:
    same = mean_change(np.zeros(100), np.zeros(100), 0.05, 0.1)
    assert (same.estimate, same.low, same.high, same.scale) == (0.0, 0.0, 0.0, "constant")
    worse = mean_change(np.zeros(100), np.ones(100), 0.05, 0.1)
    assert math.isinf(worse.estimate)
    assert (worse.low, worse.high) == (-math.inf, math.inf)
    negative = mean_change(np.array([-2.0, -1.0, -3.0]), np.array([-1.0, -0.5, -1.5]), 0.05, 0.1)
    assert negative.scale == "raw"
    assert negative.estimate == pytest.approx(0.5)
