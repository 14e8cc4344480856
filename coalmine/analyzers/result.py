"""What every analyzer returns for one metric at one look."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping

Outcome = Literal["pass", "fail", "nodata", "error"]
"""``fail`` is a regression; ``nodata`` and ``error`` are kept apart from failures."""

DetailValue = float | int | str | bool | None


def json_number(x: float) -> DetailValue:
    """A detail number that survives JSON: NaN becomes None, infinities ``"inf"``/``"-inf"``."""
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


@dataclass(frozen=True, slots=True)
class MetricResult:
    """One metric's outcome at one judgement, with the numbers that led there.

    Attributes:
        metric: the profile metric's name.
        analyzer: which analyzer produced it (``mann_whitney``, ``burn_rate``).
        outcome: ``pass``, ``fail``, ``nodata`` or ``error``.
        critical: a failing critical metric rolls the canary back at once.
        measured: the evidence is strong enough to promote on (the detectable effect is
            within tolerance); a metric that passes but is not measured blocks promotion.
        n_baseline: samples (distribution) or events (ratio) seen for the baseline.
        n_canary: the same for the canary.
        reason: a short human phrase, e.g. ``"latency_ms +48% (95% CI +41%..+55%)"``.
        detail: estimates, intervals, p-values, burn rates, counts.
    """

    metric: str
    analyzer: str
    outcome: Outcome
    critical: bool
    measured: bool
    n_baseline: int
    n_canary: int
    reason: str
    detail: Mapping[str, DetailValue] = field(default_factory=dict)
