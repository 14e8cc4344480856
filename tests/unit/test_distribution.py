from dataclasses import dataclass, field

import numpy as np

from coalmine.analyzers.base import Look
from coalmine.analyzers.burn_rate import BurnWindow
from coalmine.analyzers.distribution import DistributionAnalyzer
from coalmine.analyzers.instances import InstanceMeans
from coalmine.config.models import MetricSpec

LOOK = Look(alpha=0.025, window=BurnWindow(now=600.0, duration=3600.0, elapsed=600.0))


@dataclass
class Cohort:
    """A cohort's data as a deployment hands it over, from plain arrays."""

    values: np.ndarray
    per_instance: list[np.ndarray] = field(default_factory=list)
    good: int = 0
    total: int = 0

    @property
    def instance_count(self) -> int:
        return len(self.per_instance)

    def samples(self) -> np.ndarray:
        return self.values

    def instances(self) -> InstanceMeans:
        counts = np.array([float(x.size) for x in self.per_instance])
        means = np.array([float(np.log(x).mean()) for x in self.per_instance])
        return InstanceMeans(counts, means, log=True)


def cohort(seed: int, instances: int = 0) -> Cohort:
    rng = np.random.default_rng(seed)
    parts = [rng.lognormal(4.6, 0.5, 200) for _ in range(max(instances, 1))]
    return Cohort(np.concatenate(parts), parts if instances else [])


def test_requests_are_the_unit_until_the_events_name_instances():
    analyzer = DistributionAnalyzer(MetricSpec(name="latency_ms"))
    assert analyzer.analyze(cohort(1), cohort(2), LOOK).analyzer == "mann_whitney"
    per_instance = analyzer.analyze(cohort(1, instances=2), cohort(2, instances=1), LOOK)
    assert per_instance.analyzer == "instance_welch"
    # One baseline instance gives no spread between instances to compare with.
    assert analyzer.analyze(cohort(1, 1), cohort(2, 1), LOOK).analyzer == "mann_whitney"


def test_the_unit_asked_for_wins():
    by_request = DistributionAnalyzer(MetricSpec(name="latency_ms", unit="request"))
    result = by_request.analyze(cohort(1, instances=3), cohort(2, instances=3), LOOK)
    assert result.analyzer == "mann_whitney"
    by_instance = DistributionAnalyzer(MetricSpec(name="latency_ms", unit="instance"))
    result = by_instance.analyze(cohort(1), cohort(2), LOOK)
    assert (result.analyzer, result.outcome) == ("instance_welch", "nodata")


def test_a_critical_metric_is_checked_as_its_canary_samples_grow_by_a_tenth():
    analyzer = DistributionAnalyzer(MetricSpec(name="latency_ms", critical=True, min_samples=50))

    def due(stored: int, *, canary: bool = True) -> bool:
        return analyzer.observe(0.0, canary, 0, 0, Cohort(np.ones(stored)))

    assert not due(49)
    assert due(50)
    assert not due(55)  # 50 x 1.1 is a hair above 55 in floating point
    assert due(56)
    assert not due(500, canary=False)
    assert due(500)
    plain = DistributionAnalyzer(MetricSpec(name="latency_ms"))
    assert not plain.observe(0.0, True, 0, 0, Cohort(np.ones(500)))
