"""The analyzer of distribution metrics: per request (Mann-Whitney) or per instance (Welch).

Requests of one instance share its hardware, neighbours and caches, so they are not
independent (statistics.md section 6): when the events name instances, the instances are
the unit of analysis. With ``unit = "auto"`` that is as soon as the baseline has two
instances and the canary one; ``unit = "instance"`` and ``unit = "request"`` fix the unit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coalmine.analyzers.instances import InstanceEvidence, analyze_instances
from coalmine.analyzers.mann_whitney import analyze_distribution
from coalmine.analyzers.sequential import DistributionEvidence

if TYPE_CHECKING:
    from coalmine.analyzers.base import CohortData, Look
    from coalmine.analyzers.result import MetricResult
    from coalmine.config.models import MetricSpec

__all__ = ["DistributionAnalyzer"]

_CRITICAL_GROWTH = 1.1
"""A critical distribution metric is re-checked when its canary samples grow by 10%."""


class DistributionAnalyzer:
    """The analyzer of distribution metrics (``coalmine.analyzers.base.Analyzer``).

    ``analyze_distribution`` on the samples, or ``analyze_instances`` on the instances'
    means, each with its evidence kept from look to look.
    """

    __slots__ = ("_checked_at", "_sequential", "_staged", "spec")

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self._sequential: DistributionEvidence | None = None
        self._staged: InstanceEvidence | None = None
        self._checked_at = 0

    def urgent(self, _good: int, _total: int) -> bool:
        """Never: one message of samples says too little on its own."""
        return False

    def observe(
        self, _time: float, canary: bool, _good: int, _total: int, stored: CohortData
    ) -> bool:
        """Is a critical metric's check due? When its canary samples grew by a tenth.

        Since the last check, and once they reach ``min_samples``. The evidence is updated
        at the looks, from the samples kept.
        """
        if not (canary and self.spec.critical):
            return False
        seen = stored.samples().size
        if seen < self.spec.min_samples or seen < self._checked_at * _CRITICAL_GROWTH:
            return False
        self._checked_at = seen
        return True

    def analyze(self, baseline: CohortData, canary: CohortData, look: Look) -> MetricResult:
        """Per instance when they are the unit, else per request."""
        spec = self.spec
        if self._by_instance(baseline, canary):
            if self._staged is None:
                self._staged = InstanceEvidence()
            return analyze_instances(
                spec, baseline.instances(), canary.instances(), look.alpha, evidence=self._staged
            )
        if self._sequential is None:
            self._sequential = DistributionEvidence.for_spec(
                spec.prior_width, spec.prior_centre, spec.tail_quantiles
            )
        return analyze_distribution(
            spec,
            baseline.samples(),
            canary.samples(),
            look.alpha,
            evidence=self._sequential,
            drift=look.drift.get(spec.name, 0.0),
        )

    def fails(self, baseline: CohortData, canary: CohortData, look: Look) -> bool:
        """Does ``analyze`` fail the metric?"""
        return self.analyze(baseline, canary, look).outcome == "fail"

    def _by_instance(self, baseline: CohortData, canary: CohortData) -> bool:
        """Judge per instance: asked for, or (``auto``) when the events name instances."""
        if self.spec.unit == "request":
            return False
        if self.spec.unit == "instance":
            return True
        return baseline.instance_count >= 2 and canary.instance_count >= 1
