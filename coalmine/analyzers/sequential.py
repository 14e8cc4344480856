"""Anytime-valid tests: evidence that stays valid however often coalmine looks.

A daemon that judges every interval looks at the data 30 or 60 times per canary; a
fixed-sample test at 5% then raises a false alarm in 20-30% of healthy canaries
(statistics.md section 3). These tests are e-processes: non-negative (super)martingales
under "canary no worse", so by Ville's inequality the chance that one *ever* reaches
``1 / alpha`` is at most ``alpha``, whenever and however often it is checked.

* ``AucMixture``: mixture sequential probability ratio test on the Mann-Whitney AUC, or on
  any other asymptotically normal rank statistic such as the tail tests'
  (valid asymptotically; checked by A/A simulation in the tests and the harness).
  ``DistributionEvidence`` holds one per test of a distribution metric.
* ``RateRatioEProcess``: the rate ratio of bad events, canary over baseline, conditional on
  each batch's traffic split (Lindon & Malek 2022; Netflix's canary paper, KDD 2022). Exact.
* ``binomial_guard_log_e``: the canary's bad-event ratio against a fixed level (the
  fast-burn guard), a beta-binomial mixture. Exact.

The state objects are updated in place by the analyzers and kept by the deployment, one per
metric; everything is deterministic, so a replay rebuilds the same evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import special

if TYPE_CHECKING:
    from numpy.typing import NDArray

DEFAULT_TAU = 0.03
"""Prior width on the AUC shift (0.5 = no effect); 0.02-0.05 suits canary effect sizes."""

_GRID_POINTS = 200
_GRID_MAX_RATIO = 50.0
_PRIOR_CENTRE = math.log(2.2)
_PRIOR_SD = 0.5
"""Normal prior on log(rate ratio) around 2.2x, sd 0.5, truncated to ratios above ``r0``:
most weight on 1.3x-3.6x, the regressions a canary must catch quickly. Chosen against an
oracle SPRT that knows the true ratio (benchmarks/decision_quality.py): at a fixed 20 req/s
per cohort and 0.1% errors a 2x canary is found in 1.17x the oracle's median time (2.5x,
sd 0.8: 1.33x), and a 5x one in a median 2.7 min either way."""


def auc_log_e(
    theta: float, variance: float, tau: float, *, one_sided: bool, centre: float = 0.0
) -> float:
    """Log mixture likelihood ratio for an AUC shift ``theta`` (``auc - 1/2``).

    With the normal approximation ``theta_hat ~ N(theta, V)`` and a normal prior of sd
    ``tau`` on ``theta``, centred on ``centre`` (on the harmful side, truncated to it, when
    one-sided; on ``+centre`` and ``-centre`` alike, half its weight each, when not)::

        w = V tau^2 / (V + tau^2),  m = w (theta_hat / V + centre / tau^2)
        log L = 1/2 log(w / tau^2) + m^2 / (2 w) - centre^2 / (2 tau^2)
                [+ log Phi(m / sqrt(w)) - log Phi(centre / tau)]

    With ``centre`` 0 the prior is ``N(0, tau^2)`` (half-normal when one-sided). A prior
    centred on a shift a canary must catch spends less of its weight on shifts too small to
    matter, so a regression of about that size is found sooner.
    """
    if variance <= 0.0:
        return 0.0
    tau2 = tau * tau
    w = variance * tau2 / (variance + tau2)
    base = 0.5 * math.log(w / tau2) - centre * centre / (2.0 * tau2)
    up = w * (theta / variance + centre / tau2)  # m, for the prior's harmful centre
    if one_sided:
        return (
            base
            + up * up / (2.0 * w)
            + float(special.log_ndtr(up / math.sqrt(w)))
            - float(special.log_ndtr(centre / tau))
        )
    down = w * (theta / variance - centre / tau2)
    high, low = sorted((up * up / (2.0 * w), down * down / (2.0 * w)), reverse=True)
    return base + high + math.log1p(math.exp(low - high)) - math.log(2.0)


@dataclass(slots=True)
class AucMixture:
    """Running mixture SPRT on the Mann-Whitney AUC of one metric.

    ``update`` takes the current U statistic (over all samples so far); the evidence is the
    largest likelihood ratio seen, so a rejection, once reached, stands.
    """

    tau: float = DEFAULT_TAU
    centre: float = 0.0
    """Where the prior on the shift is centred (see :func:`auc_log_e`)."""
    log_e: float = 0.0
    max_log_e: float = 0.0
    looks: int = 0

    def update(
        self,
        auc: float,
        u_variance: float,
        n_baseline: int,
        n_canary: int,
        sign: float,
        *,
        one_sided: bool,
    ) -> float:
        """Add a look; ``sign`` is +1 when larger canary values are harmful, -1 when smaller."""
        nm = float(n_baseline) * float(n_canary)
        variance = u_variance / (nm * nm) if nm else 0.0
        return self.observe(sign * (auc - 0.5), variance, one_sided=one_sided)

    def observe(self, effect: float, variance: float, *, one_sided: bool) -> float:
        """Add a look at any asymptotically normal rank statistic.

        ``effect`` is 0 under no difference and positive when harmful; ``variance`` is its
        variance under no difference.
        """
        self.log_e = auc_log_e(effect, variance, self.tau, one_sided=one_sided, centre=self.centre)
        self.max_log_e = max(self.max_log_e, self.log_e)
        self.looks += 1
        return self.log_e

    @property
    def p_value(self) -> float:
        """Anytime-valid p-value: ``min(1, 1 / max e)``."""
        return min(1.0, math.exp(-self.max_log_e))


TAIL_TAU = 0.3
"""Prior width of a tail test, in units of ``1 - q``: a tail that grows 1.5x to 2x moves
the tail statistic by 0.4-0.5 x ``(1 - q)``."""


@dataclass(slots=True)
class DistributionEvidence:
    """The sequential state of one distribution metric: its location test and each tail's."""

    location: AucMixture
    tails: dict[float, AucMixture] = field(default_factory=dict)

    @classmethod
    def for_spec(
        cls, prior_width: float, prior_centre: float, quantiles: tuple[float, ...]
    ) -> DistributionEvidence:
        """Fresh evidence for a metric with this prior and these tail quantiles."""
        tails = {q: AucMixture(tau=TAIL_TAU * (1.0 - q)) for q in quantiles}
        return cls(AucMixture(tau=prior_width, centre=prior_centre), tails)


def logsumexp(a: NDArray[np.float64]) -> float:
    """``log(sum(exp(a)))`` of a 1-D array, as ``scipy.special.logsumexp`` computes it.

    The same operations in the same order (the largest terms taken out of the sum and
    added back through ``log1p``), so the result is bit-identical, without scipy's
    array-API dispatch: 7 us where scipy takes 57 us on the 200-point grid, and it runs on
    every update of a ratio metric's e-process that may raise it.
    """
    a_max = a.max()
    if not np.isfinite(a_max):
        return float(special.logsumexp(a))  # infinities and NaNs: scipy's conventions
    top = a == a_max
    count = np.float64(np.count_nonzero(top))
    total = np.exp(np.where(top, -np.inf, a) - a_max).sum()
    if total != 0.0:
        total = total / count
    return float(np.log1p(total) + np.log(count) + a_max)


def _grid(r0: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Alternative rate ratios above ``r0`` and their log prior weights (summing to 1)."""
    low = math.log(r0)
    log_r = np.linspace(low, math.log(max(_GRID_MAX_RATIO, 2.0 * r0)), _GRID_POINTS + 1)[1:]
    log_w = -0.5 * ((log_r - _PRIOR_CENTRE) / _PRIOR_SD) ** 2
    log_w -= logsumexp(log_w)
    return np.exp(log_r), log_w


@dataclass(slots=True)
class RateRatioEProcess:
    """Rate ratio of bad events, canary over baseline, against ``H0: ratio <= r0``.

    In each batch the canary's share of traffic ``rho`` comes from the event totals; given
    the bad events of both cohorts, each is the canary's with probability
    ``theta(r) = rho r / (rho r + 1 - rho)``. The likelihood ratio of ``r`` against ``r0``
    multiplies across batches; the e-process mixes it over a grid of ``r > r0``. It stays
    valid when the split drifts or differs from the announced weight. Counts are gathered
    with ``add`` and enter the evidence at ``update``, once both cohorts have traffic.

    A batch with ``c`` of its ``k`` bad events the canary's adds
    ``c log(r / r0) - k (log1p(rho (r - 1)) - log1p(rho (r0 - 1)))`` to the log likelihood
    ratio of ``r`` (the binomial's, rewritten). Its first term needs only the running sum of
    ``c``, so each batch costs four operations on the grid.
    """

    r0: float = 1.0
    max_log_e: float = 0.0
    batches: int = 0
    _log_e: float | None = field(default=0.0, repr=False)
    """The current log e-value; None until it is asked for after batches that lowered it."""
    _ratios: NDArray[np.float64] = field(init=False, repr=False)
    _log_w: NDArray[np.float64] = field(init=False, repr=False)
    _log_r: NDArray[np.float64] = field(init=False, repr=False)
    """``log(r / r0)`` on the grid."""
    _r_less_one: NDArray[np.float64] = field(init=False, repr=False)
    _weighted: NDArray[np.float64] = field(init=False, repr=False)
    """Log prior weights less every batch's ``k log1p(rho (r - 1))``."""
    _scratch: NDArray[np.float64] = field(init=False, repr=False)
    _canary_bad: int = field(default=0, repr=False)
    _offset: float = field(default=0.0, repr=False)
    """Every batch's ``k log1p(rho (r0 - 1))``."""
    _pending: list[int] = field(default_factory=lambda: [0, 0, 0, 0], repr=False)

    def __post_init__(self) -> None:
        self._ratios, self._log_w = _grid(self.r0)
        self._log_r = np.log(self._ratios / self.r0)
        self._r_less_one = self._ratios - 1.0
        self._weighted = self._log_w.copy()
        self._scratch = np.empty_like(self._ratios)

    @property
    def log_lr(self) -> NDArray[np.float64]:
        """The log likelihood ratio of each ratio on the grid against ``r0``."""
        return self._canary_bad * self._log_r + (self._weighted - self._log_w) + self._offset

    def add(
        self, bad_canary: int, total_canary: int, bad_baseline: int, total_baseline: int
    ) -> None:
        """Gather counts for the next batch."""
        pending = self._pending
        pending[0] += bad_canary
        pending[1] += total_canary
        pending[2] += bad_baseline
        pending[3] += total_baseline

    def update(self) -> None:
        """Fold the gathered batch into the evidence."""
        bad_c, total_c, bad_b, total_b = self._pending
        if total_c > 0 and total_b > 0:
            self._pending = [0, 0, 0, 0]
            bad = bad_c + bad_b
            if bad > 0:
                rho = total_c / (total_c + total_b)
                scratch = self._scratch
                np.multiply(self._r_less_one, rho, out=scratch)
                np.log1p(scratch, out=scratch)
                scratch *= bad
                self._weighted -= scratch
                self._canary_bad += bad_c
                self._offset += bad * math.log1p(rho * (self.r0 - 1.0))
                theta0 = rho * self.r0 / (rho * self.r0 + 1.0 - rho)
                if bad_c > theta0 * bad:
                    self._log_e = self._mixture()
                    self.max_log_e = max(self.max_log_e, self._log_e)
                else:
                    # The canary's share of the batch's bad events is at most theta0's:
                    # every alternative's likelihood ratio fell, so did the mixture, and
                    # the maximum stands. The mixture is summed when asked for.
                    self._log_e = None
            self.batches += 1

    @property
    def log_e(self) -> float:
        """The current log e-value."""
        if self._log_e is None:
            self._log_e = self._mixture()
        return self._log_e

    @property
    def p_value(self) -> float:
        """Anytime-valid p-value: ``min(1, 1 / max e)``."""
        return min(1.0, math.exp(-self.max_log_e))

    def _mixture(self) -> float:
        scratch = self._scratch
        np.multiply(self._log_r, self._canary_bad, out=scratch)
        scratch += self._weighted
        return logsumexp(scratch) + self._offset


def binomial_guard_log_e(bad: int, total: int, level: float) -> float:
    """Log e-value against ``H0: bad-event ratio <= level`` from cumulative counts.

    A beta-binomial mixture over ratios above ``level`` (prior Beta(1, b) with mean
    ``2 x level``, truncated to ``p > level``); a supermartingale under any ratio at or below
    ``level``, so it may be checked after every message.
    """
    if total <= 0 or level >= 1.0 or level <= 0.0:
        return 0.0
    a = 1.0
    b = max((1.0 - 2.0 * level) / (2.0 * level), 1.0)
    good = total - bad
    tail_post = float(special.betaincc(a + bad, b + good, level))
    tail_prior = float(special.betaincc(a, b, level))
    if tail_post <= 0.0:
        return -math.inf
    return (
        float(special.betaln(a + bad, b + good))
        + math.log(tail_post)
        - float(special.betaln(a, b))
        - math.log(tail_prior)
        - bad * math.log(level)
        - good * math.log1p(-level)
    )
