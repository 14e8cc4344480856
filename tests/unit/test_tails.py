"""The tail tests: the tail-weighted rank statistic and the tail's change."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from coalmine.analyzers.tails import tail_changes, tail_tests


def _brute(b: np.ndarray, c: np.ndarray, q: float) -> tuple[float, float]:
    """The statistic from its definition: scores at every pooled rank, tie groups averaged."""
    pooled = np.concatenate((b, c))
    total = pooled.size
    ranks = stats.rankdata(pooled, method="ordinal")  # 1..N, ties in input order
    position_score = np.maximum((np.arange(1, total + 1) - 0.5) / total - q, 0.0) / (1 - q)
    scores = position_score[ranks - 1]
    for value in np.unique(pooled):  # tied samples share their group's average score
        tied = pooled == value
        scores[tied] = scores[tied].mean()
    n_b, n_c = b.size, c.size
    effect = scores[n_b:].mean() - scores[:n_b].mean()
    variance_sum = n_c * n_b / (total * (total - 1)) * np.sum((scores - scores.mean()) ** 2)
    variance = variance_sum / n_c**2 * (total / n_b) ** 2
    return float(effect), float(variance)


@pytest.mark.parametrize("seed", range(12))
def test_the_statistic_equals_its_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_b, n_c = rng.integers(20, 400, size=2)
    # Whole numbers from a narrow range: many ties, some straddling the quantiles.
    b = np.sort(np.rint(rng.lognormal(2.0, 0.6, n_b)))
    c = np.sort(np.rint(rng.lognormal(2.1, 0.6, n_c)))
    quantiles = (0.75, 0.9, 0.99)
    for test in tail_tests(b, c, quantiles):
        effect, variance = _brute(b, c, test.quantile)
        assert test.effect == pytest.approx(effect, abs=1e-12)
        assert test.variance == pytest.approx(variance, rel=1e-9, abs=1e-15)


def test_mostly_zero_cohorts_score_the_tied_zeros_alike() -> None:
    rng = np.random.default_rng(3)
    b = np.sort(np.where(rng.random(3000) < 0.08, 1 + rng.poisson(1, 3000), 0).astype(float))
    c = np.sort(np.where(rng.random(3000) < 0.30, 1 + rng.poisson(1, 3000), 0).astype(float))
    (test,) = tail_tests(b, c, (0.9,))
    effect, variance = _brute(b, c, 0.9)
    assert test.effect == pytest.approx(effect, abs=1e-12)
    assert test.variance == pytest.approx(variance, rel=1e-9)
    assert test.z > 10


def test_under_no_difference_the_standardised_statistic_is_standard_normal() -> None:
    # 4000 A/A draws of 400 samples a side: z has mean 0 and sd 1 within sampling error
    # (sd of the mean 1/sqrt(4000) = 0.016; of the sd about 0.011), and its upper 1% tail
    # holds 1% of the draws within 3 binomial sd (0.47%).
    rng = np.random.default_rng(4)
    z = np.array(
        [
            [
                t.z
                for t in tail_tests(
                    *(np.sort(np.rint(rng.lognormal(4.6, 0.5, 400))) for _ in "bc"), (0.9, 0.99)
                )
            ]
            for _ in range(4000)
        ]
    )
    assert np.abs(z.mean(axis=0)).max() < 0.06
    assert np.abs(z.std(axis=0) - 1.0).max() < 0.05
    assert (z[:, 0] > stats.norm.ppf(0.99)).mean() < 0.01 + 0.0047


def test_a_slower_tail_moves_the_statistic_the_median_does_not_see() -> None:
    # The slowest 10% of the canary 1.5x slower: median unchanged, tail clearly worse.
    rng = np.random.default_rng(5)
    z = rng.standard_normal(2000)
    slow = np.where(z > stats.norm.ppf(0.9), math.log(1.5), 0.0)
    b = np.sort(100 * np.exp(0.5 * rng.standard_normal(2000)))
    c = np.sort(100 * np.exp(0.5 * z + slow))
    p90 = tail_tests(b, c, (0.9,))[0]
    assert p90.z > 5
    change = tail_changes(b, c, (0.9,))[0]
    assert change.relative_change == pytest.approx(0.5, abs=0.1)
    assert abs(np.median(c) / np.median(b) - 1) < 0.05


def test_tail_changes_report_quantiles_and_tail_means() -> None:
    b = np.arange(1.0, 101.0)
    c = b * 2
    (change,) = tail_changes(b, c, (0.9,))
    assert change.baseline_tail_mean == pytest.approx(np.mean(b[-10:]))
    assert change.canary_tail_mean == pytest.approx(np.mean(c[-10:]))
    assert change.relative_change == pytest.approx(1.0)
    assert change.baseline_quantile == pytest.approx(np.quantile(b, 0.9))
    zero = tail_changes(np.zeros(50), np.ones(50), (0.9,))[0]
    assert math.isinf(zero.relative_change)
