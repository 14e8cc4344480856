"""Sample-ratio mismatch: does the canary get the share of traffic it was announced?

A canary that receives far less (or more) traffic than its announced weight points at a
routing problem, and a split that differs between cohorts can bias a comparison. The
check is a chi-square goodness-of-fit test of the observed canary share of events against
the expected one; the rate-ratio e-process itself stays valid under any split, so a
mismatch is reported, not turned into a rollback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scipy import special

if TYPE_CHECKING:
    from coalmine.analyzers.result import DetailValue


def sample_ratio_check(
    canary: int, baseline: int, expected_share: float, alpha: float
) -> dict[str, DetailValue]:
    """Observed against expected canary share; ``mismatch`` when the test rejects at ``alpha``."""
    total = canary + baseline
    if total == 0 or not 0.0 < expected_share < 1.0:
        return {"expected_share": expected_share, "observed_share": None, "mismatch": False}
    expected_c = expected_share * total
    expected_b = total - expected_c
    chi2 = (canary - expected_c) ** 2 / expected_c + (baseline - expected_b) ** 2 / expected_b
    p_value = float(special.chdtrc(1, chi2))  # = scipy.stats.chi2.sf(chi2, 1), 30x cheaper
    return {
        "expected_share": expected_share,
        "observed_share": canary / total,
        "events": total,
        "p_value": p_value,
        "mismatch": p_value < alpha,
    }
