"""Which analyzer judges which kind of metric.

A deployment asks ``analyzer_for(spec)`` for each metric of its profile and calls what it
gets through the ``coalmine.analyzers.base.Analyzer`` interface alone. A new kind of metric
is a class implementing that interface and one entry in ``ANALYZERS``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from coalmine.analyzers.burn_rate import RatioAnalyzer
from coalmine.analyzers.distribution import DistributionAnalyzer

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from coalmine.analyzers.base import Analyzer
    from coalmine.config.models import MetricKind, MetricSpec

__all__ = ["ANALYZERS", "analyzer_for"]

ANALYZERS: Mapping[MetricKind, Callable[[MetricSpec], Analyzer]] = MappingProxyType(
    {"distribution": DistributionAnalyzer, "ratio": RatioAnalyzer}
)
"""Per metric kind, what makes a metric's analyzer from its profile entry."""


def analyzer_for(spec: MetricSpec) -> Analyzer:
    """A fresh analyzer for one metric, by its kind (no evidence yet)."""
    return ANALYZERS[spec.kind](spec)
