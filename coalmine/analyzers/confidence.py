"""Confidence sequences: intervals that stay valid however often they are looked at.

A fixed-sample interval checked at every look covers the truth less and less often, so a
promotion decided on one ("the change is shown within tolerance") would be wrong more often
than its level says. The intervals here come from the normal-mixture martingale
(Robbins 1970; asymptotic form after Waudby-Smith et al. 2021, "Time-uniform central limit
theory"): for an estimate that is asymptotically ``N(theta, V)`` and built from all data so
far, ``|estimate - theta| <= radius(V)`` holds at every look at once with probability at
least ``1 - alpha``. It is the boundary of the same mixture likelihood ratio that the
anytime-valid tests in :mod:`coalmine.analyzers.sequential` use.
"""

from __future__ import annotations

import math

__all__ = ["mixture_radius"]


def mixture_radius(variance: float, tau: float, alpha: float) -> float:
    """Half-width of a two-sided ``1 - alpha`` confidence sequence at variance ``variance``.

    ``tau`` is the width of the normal mixture on the parameter: the sequence is tightest
    when ``V`` is near ``tau^2 / 10``, so ``tau`` should be about the effect size that
    matters (the tolerance). The radius is
    ``sqrt(V (1 + V / tau^2) (2 log(1 / alpha) + log(1 + tau^2 / V)))``, about 1.7 times
    the fixed-sample ``z_{1-alpha}`` interval at its tightest. Zero variance gives zero;
    infinite or NaN variance gives infinity.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if tau <= 0.0:
        raise ValueError(f"tau must be positive, got {tau}")
    if not variance >= 0.0 or math.isinf(variance):
        return math.inf
    if variance == 0.0:
        return 0.0
    ratio = tau * tau / variance
    return math.sqrt(
        variance * (1.0 + 1.0 / ratio) * (2.0 * math.log(1.0 / alpha) + math.log1p(ratio))
    )
