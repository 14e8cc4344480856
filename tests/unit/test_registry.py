from typing import get_args

from coalmine.analyzers.burn_rate import RatioAnalyzer
from coalmine.analyzers.distribution import DistributionAnalyzer
from coalmine.analyzers.registry import ANALYZERS, analyzer_for
from coalmine.config.models import MetricKind, MetricSpec


def test_every_metric_kind_has_an_analyzer():
    assert set(ANALYZERS) == set(get_args(MetricKind))


def test_each_metric_gets_a_fresh_analyzer_of_its_kind():
    ratio = MetricSpec(name="requests", kind="ratio", objective=0.999)
    first, second = analyzer_for(ratio), analyzer_for(ratio)
    assert isinstance(first, RatioAnalyzer)
    assert first is not second
    assert isinstance(analyzer_for(MetricSpec(name="latency_ms")), DistributionAnalyzer)


def test_only_a_critical_ratio_metric_is_ever_urgent():
    critical = analyzer_for(MetricSpec(name="e", kind="ratio", objective=0.999, critical=True))
    plain = analyzer_for(MetricSpec(name="e", kind="ratio", objective=0.999))
    latency = analyzer_for(MetricSpec(name="latency_ms", critical=True))
    assert critical.urgent(90, 100)
    assert not critical.urgent(100, 100)
    assert not plain.urgent(90, 100)
    assert not latency.urgent(90, 100)
