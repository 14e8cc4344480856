"""Anytime-valid tests: validity under repeated looks and power, by seeded simulation.

Tolerances: with R runs, the standard error of a rejection rate near alpha = 0.05 is
sqrt(0.05 * 0.95 / R); bounds below allow about three standard errors above alpha.
"""

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from coalmine.analyzers.mann_whitney import rank_sum_test
from coalmine.analyzers.sequential import (
    AucMixture,
    RateRatioEProcess,
    auc_log_e,
    binomial_guard_log_e,
    logsumexp,
)

ALPHA = 0.05
THRESHOLD = math.log(1 / ALPHA)


def auc_first_rejection(
    seed: int, factor: float, looks: int = 30, per_look: int = 50, centre: float = 0.0
):
    rng = np.random.default_rng(seed)
    base, canary = [], []
    evidence = AucMixture(centre=centre)
    for look in range(1, looks + 1):
        base.append(np.round(rng.lognormal(4.6, 0.5, per_look)))  # whole ms: ties
        canary.append(np.round(factor * rng.lognormal(4.6, 0.5, per_look)))
        test = rank_sum_test(np.concatenate(base), np.concatenate(canary))
        evidence.update(
            test.auc, test.variance, test.n_baseline, test.n_canary, 1.0, one_sided=True
        )
        if evidence.max_log_e >= THRESHOLD:
            return look
    return None


def test_auc_mixture_holds_alpha_over_thirty_looks():
    # 300 A/A runs, 30 looks each: a fixed test would reject in ~25% (statistics.md section
    # 3). The e-process must stay below alpha: bound 0.05 + 3 x 0.0126 = 0.088.
    rejected = sum(auc_first_rejection(seed, 1.0) is not None for seed in range(300))
    assert rejected / 300 < 0.088


def test_auc_mixture_detects_a_ten_percent_slowdown():
    looks = [auc_first_rejection(1000 + seed, 1.10) for seed in range(60)]
    found = [look for look in looks if look is not None]
    assert len(found) >= 54  # >= 90% within 30 looks of 50 samples per cohort
    assert np.median(found) <= 15


def test_auc_log_e_is_zero_without_evidence_and_grows_with_it():
    assert auc_log_e(0.0, 1e-4, 0.03, one_sided=False) < 0
    weak = auc_log_e(0.01, 1e-4, 0.03, one_sided=True)
    strong = auc_log_e(0.05, 1e-4, 0.03, one_sided=True)
    assert strong > weak
    # One-sided: evidence for the harmless direction is not evidence of harm.
    assert auc_log_e(-0.05, 1e-4, 0.03, one_sided=True) < 0
    assert auc_log_e(0.05, 0.0, 0.03, one_sided=True) == 0.0


@pytest.mark.parametrize("one_sided", [True, False])
@pytest.mark.parametrize("centre", [0.0, 0.02, 0.04, 0.1])
@pytest.mark.parametrize("theta", [-0.03, 0.0, 0.01, 0.06])
def test_auc_log_e_is_the_likelihood_ratio_integrated_over_the_prior(one_sided, centre, theta):
    # The closed form against numerical integration of the normal likelihood ratio over
    # the prior: N(centre, tau^2) truncated to the harmful side when one-sided, the even
    # mixture of N(+centre, tau^2) and N(-centre, tau^2) when not.
    variance, tau = 4e-4, 0.03

    def ratio(t: float) -> float:
        return math.exp(t * theta / variance - t * t / (2 * variance))

    def density(t: float) -> float:
        if one_sided:
            return stats.norm.pdf(t, centre, tau) / stats.norm.sf(0.0, centre, tau)
        return 0.5 * (stats.norm.pdf(t, centre, tau) + stats.norm.pdf(t, -centre, tau))

    low = 0.0 if one_sided else -1.0
    value, _ = integrate.quad(lambda t: ratio(t) * density(t), low, 1.0, points=[theta])
    got = auc_log_e(theta, variance, tau, one_sided=one_sided, centre=centre)
    assert got == pytest.approx(math.log(value), rel=1e-6, abs=1e-9)


def test_centred_prior_holds_alpha_over_thirty_looks():
    # Same bound as the half-normal's: any prior gives a valid mixture (measured: 6 of 300,
    # the half-normal 5).
    rejected = sum(auc_first_rejection(seed, 1.0, centre=0.04) is not None for seed in range(300))
    assert rejected / 300 < 0.088


def test_centred_prior_finds_a_ten_percent_slowdown_sooner():
    # The same 100 seeded canaries (+10%, AUC shift ~0.054), judged with the prior centred
    # on 0.04 and on 0: measured mean first rejection 9.3 looks against 10.2, median 7
    # against 9 (a canary not found in 30 looks counts as 31).
    seeds = range(2000, 2100)
    centred = [auc_first_rejection(s, 1.10, centre=0.04) or 31 for s in seeds]
    half = [auc_first_rejection(s, 1.10) or 31 for s in seeds]
    assert np.mean(centred) < np.mean(half) - 0.5, (np.mean(centred), np.mean(half))
    assert np.median(centred) <= np.median(half)


def rate_first_rejection(seed: int, ratio: float, looks: int = 120, rps: float = 20.0):
    rng = np.random.default_rng(seed)
    evidence = RateRatioEProcess()
    for look in range(1, looks + 1):
        swing = 1 + 0.5 * math.sin(2 * math.pi * look / looks)
        total_b = rng.poisson(rps * 60 * swing)
        total_c = rng.poisson(rps * 60 * swing * 0.8)  # split differs from 50/50
        evidence.add(
            rng.binomial(total_c, 0.001 * ratio), total_c, rng.binomial(total_b, 0.001), total_b
        )
        evidence.update()
        if evidence.max_log_e >= THRESHOLD:
            return look
    return None


def test_rate_ratio_e_process_holds_alpha_over_120_looks():
    # 600 A/A runs; a per-minute exact test would reject in ~25%. Bound 0.05 + 3 x 0.0089.
    rejected = sum(rate_first_rejection(seed, 1.0) is not None for seed in range(600))
    assert rejected / 600 < 0.077


@pytest.mark.parametrize(("ratio", "median_bound"), [(2.0, 20), (5.0, 4)])
def test_rate_ratio_e_process_finds_more_errors_quickly(ratio, median_bound):
    looks = [rate_first_rejection(5000 + seed, ratio) for seed in range(80)]
    found = [look for look in looks if look is not None]
    assert len(found) >= 76  # >= 95% within 120 minutes
    assert np.median(found) <= median_bound  # statistics.md: 14 min for 2x, 3 min for 5x


def test_rate_ratio_waits_for_both_cohorts_before_using_a_batch():
    evidence = RateRatioEProcess()
    evidence.add(5, 100, 0, 0)
    evidence.update()
    assert evidence.batches == 0
    evidence.add(0, 0, 0, 100)
    evidence.update()
    assert evidence.batches == 1
    assert evidence.max_log_e > 0


def test_binomial_guard_is_valid_at_its_level_and_finds_a_higher_ratio():
    def first(seed: int, ratio: float, level: float = 0.0144):
        rng = np.random.default_rng(seed)
        bad = total = 0
        for look in range(1, 121):
            total += 100
            bad += rng.binomial(100, ratio)
            if binomial_guard_log_e(bad, total, level) >= THRESHOLD:
                return look
        return None

    # At exactly the level (the hardest null): 400 runs, bound 0.05 + 3 x 0.011.
    assert sum(first(seed, 0.0144) is not None for seed in range(400)) / 400 < 0.083
    found = [first(9000 + seed, 0.05) for seed in range(50)]
    assert all(look is not None and look <= 10 for look in found)


def test_binomial_guard_edge_cases():
    assert binomial_guard_log_e(0, 0, 0.01) == 0.0
    assert binomial_guard_log_e(5, 10, 1.0) == 0.0
    assert binomial_guard_log_e(0, 10_000, 0.01) < 0


def test_logsumexp_is_scipys_bit_for_bit():
    # The e-process compares its log e-value with log(1/alpha): the numpy version must not
    # move it by an ulp, so decisions stay those of scipy.special.logsumexp.
    rng = np.random.default_rng(5)
    for i in range(3000):
        n = int(rng.integers(1, 300))
        a = rng.normal(size=n) * 10 ** rng.uniform(-3, 3) - (1e4 if i % 3 == 0 else 0.0)
        if i % 4 == 1:
            a = np.round(a)  # several terms tie for the largest
        if i % 5 == 2:
            a[rng.integers(0, n)] = -np.inf
        assert logsumexp(a) == float(special.logsumexp(a))
    for a in ([5.0], [-np.inf, -np.inf], [np.inf, 1.0], [np.nan, 1.0]):
        expected = float(special.logsumexp(np.array(a)))
        assert logsumexp(np.array(a)) == expected or (math.isnan(expected))
    evidence = RateRatioEProcess()
    for _ in range(200):
        evidence.add(int(rng.poisson(3)), 1000, int(rng.poisson(2)), 1000)
        evidence.update()
        reference = float(special.logsumexp(evidence._log_w + evidence.log_lr))
        assert evidence.log_e == pytest.approx(reference, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("ratio", [0.8, 1.0, 1.5])
def test_rate_ratio_mixture_summed_only_when_it_may_rise_equals_summing_every_batch(ratio):
    # The mixture is not summed after a batch whose canary share of bad events is at most
    # theta0's (every alternative lost): its running maximum must equal the maximum of the
    # mixture summed after every batch, to the bit. And the log likelihood ratios kept in
    # their rewritten form equal the binomial's, summed batch by batch.
    rng = np.random.default_rng(7)
    lazy = RateRatioEProcess(r0=1.2)
    ratios = lazy._ratios
    log_lr = np.zeros_like(ratios)
    best = 0.0
    skipped = 0
    for _ in range(400):
        total_c, total_b = int(rng.integers(50, 500)), int(rng.integers(50, 500))
        bad_c = int(rng.binomial(total_c, 0.01 * ratio))
        bad_b = int(rng.binomial(total_b, 0.01))
        lazy.add(bad_c, total_c, bad_b, total_b)
        lazy.update()
        skipped += lazy._log_e is None
        best = max(best, lazy.log_e)  # summed now if the update did not
        assert lazy.max_log_e == best
        if bad_c + bad_b:
            rho = total_c / (total_c + total_b)
            theta = rho * ratios / (rho * ratios + 1.0 - rho)
            theta0 = rho * 1.2 / (rho * 1.2 + 1.0 - rho)
            log_lr += bad_c * np.log(theta / theta0) + bad_b * np.log(
                (1.0 - theta) / (1.0 - theta0)
            )
        assert lazy.log_lr == pytest.approx(log_lr, rel=1e-9, abs=1e-9)
    assert skipped > 20  # the shortcut was taken: a real test of it
    assert lazy.log_e == pytest.approx(logsumexp(lazy._log_w + log_lr), rel=1e-12, abs=1e-9)
