"""coalmine's own Prometheus metrics, on a registry per daemon instance.

Also the stopwatch the shell times its work with: the pure core reads no clock.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip


class Telemetry:
    """The counters, gauges and histograms of the wire contract, plus a few more.

    Each instance has its own ``CollectorRegistry`` so that several daemons (tests, the
    demo) can live in one process.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        # Registered in this order, which is the order of the exposition.
        self._register_flow(self.registry)
        self._register_outcomes(self.registry)
        self._register_bus_and_inputs(self.registry)
        # ``Counter.labels`` validates and takes a lock on every call (~1 us): the hot
        # paths keep each label's child, per counter, and increment it directly.
        self._consumed: dict[str, Callable[[float], None]] = {}
        self._dropped: dict[str, Callable[[float], None]] = {}
        self._ignored: dict[str, Callable[[float], None]] = {}
        self._ended: dict[str, Callable[[float], None]] = {}

    def _register_flow(self, r: CollectorRegistry) -> None:
        """Messages in, verdicts out, and how long handling and publishing take."""
        self.events_consumed = Counter(
            "coalmine_events_consumed", "Messages consumed, per topic.", ["topic"], registry=r
        )
        self.invalid_events = Counter(
            "coalmine_invalid_events",
            "Messages sent to the dead-letter topic, per reason.",
            ["reason"],
            registry=r,
        )
        self.verdicts = Counter(
            "coalmine_verdicts", "Verdicts published, per decision.", ["decision"], registry=r
        )
        self.active_deployments = Gauge(
            "coalmine_active_deployments", "Deployments under analysis.", registry=r
        )
        self.analysis_duration = Histogram(
            "coalmine_analysis_duration_seconds",
            "Time to handle one fetch of records: decode, route, buffer and judge.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.verdict_lag = Histogram(
            "coalmine_verdict_lag_seconds",
            "Wall time from receipt of the event that closed a judgement to the broker's ack.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_duration = Histogram(
            "coalmine_publish_duration_seconds",
            "Time of one publish of queued verdicts and dead letters: send to the broker's ack.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def _register_outcomes(self, r: CollectorRegistry) -> None:
        """What was not analysed or not published, and readiness."""
        self.dropped_samples = Counter(
            "coalmine_dropped_samples",
            "Valid observations not analysed, per reason (no open deployment, metric not in "
            "the profile).",
            ["reason"],
            registry=r,
        )
        self.ignored_events = Counter(
            "coalmine_ignored_events",
            "Deploy events ignored, per reason (a second 'started', an unknown deployment).",
            ["reason"],
            registry=r,
        )
        self.ended_deployments = Counter(
            "coalmine_ended_deployments",
            "Deployments the pipeline completed or aborted itself.",
            ["event"],
            registry=r,
        )
        self.publish_failures = Counter(
            "coalmine_publish_failures", "Publishes that failed and will be retried.", registry=r
        )
        self.ready = Gauge("coalmine_ready", "1 when the daemon is ready to judge.", registry=r)
        self.verdicts_suppressed = Counter(
            "coalmine_verdicts_suppressed",
            "Judgements re-made while rebuilding from the log and already on the verdict topic.",
            registry=r,
        )
        self.actions = Counter(
            "coalmine_actions",
            "Actions taken on published verdicts, per action kind and outcome (delivered,"
            " retried, failed, dry_run).",
            ["kind", "outcome"],
            registry=r,
        )

    def _register_bus_and_inputs(self, r: CollectorRegistry) -> None:
        """Consumer lag and placement, limits, recovery, foreign inputs, reloads."""
        self.consumer_lag = Gauge(
            "coalmine_consumer_lag",
            "Records between the consumer position and the end of the log, per topic.",
            ["topic"],
            registry=r,
        )
        self.misplaced_records = Counter(
            "coalmine_misplaced_records",
            "Keyed records of the deployments or metrics topic on a partition the murmur2"
            " partitioner would not give their key (a producer with another partitioner).",
            ["topic"],
            registry=r,
        )
        self.limit_exceeded = Counter(
            "coalmine_limit_exceeded",
            "Inputs refused or reduced by a [limits] cap, per limit.",
            ["limit"],
            registry=r,
        )
        self.recovered_deployments = Counter(
            "coalmine_recovered_deployments",
            "Open deployments rebuilt from the log after a restart or a rebalance.",
            registry=r,
        )
        self.input_points_skipped = Counter(
            "coalmine_input_points_skipped",
            "Data points of a foreign-format input (OTLP, prometheus-adapter) that yielded no"
            " event, per input topic and reason (first_point, stale, no_version, ...).",
            ["topic", "reason"],
            registry=r,
        )
        self.input_counter_resets = Counter(
            "coalmine_input_counter_resets",
            "Cumulative counter resets seen by a foreign-format input, per input topic.",
            ["topic"],
            registry=r,
        )
        self.config_reloads = Counter(
            "coalmine_config_reloads",
            "Configuration reloads on SIGHUP, per outcome (ok, rejected).",
            ["outcome"],
            registry=r,
        )

    def consumed(self, topic: str, count: int = 1) -> None:
        """Count messages consumed from ``topic``."""
        inc = self._consumed.get(topic)
        if inc is None:
            inc = self._consumed[topic] = self.events_consumed.labels(topic).inc
        inc(count)

    def dropped(self, reason: str, count: int) -> None:
        """Count observations that were valid but not analysed."""
        inc = self._dropped.get(reason)
        if inc is None:
            inc = self._dropped[reason] = self.dropped_samples.labels(reason).inc
        inc(count)

    def ignored(self, reason: str) -> None:
        """Count a deploy event that changed nothing."""
        inc = self._ignored.get(reason)
        if inc is None:
            inc = self._ignored[reason] = self.ignored_events.labels(reason).inc
        inc(1)

    def ended(self, event: str) -> None:
        """Count a deployment the pipeline ended itself."""
        inc = self._ended.get(event)
        if inc is None:
            inc = self._ended[event] = self.ended_deployments.labels(event).inc
        inc(1)

    def action(self, kind: str, outcome: str) -> None:
        """Count what one action did for one verdict."""
        self.actions.labels(kind, outcome).inc()

    def input_news(self, topic: str, skipped: Mapping[str, int], resets: int) -> None:
        """Count what a foreign-format input's decoder skipped (per reason) and reset."""
        for reason, count in skipped.items():
            self.input_points_skipped.labels(topic, reason).inc(count)
        if resets > 0:
            self.input_counter_resets.labels(topic).inc(resets)


class Stopwatch:
    """Wall time since the last :meth:`restart`, for the shell: the core reads no clock."""

    def __init__(self, limit: float = math.inf) -> None:
        self.limit = limit
        """Seconds after which :meth:`overdue` answers True."""
        self._since = time.perf_counter()

    def restart(self) -> None:
        """Start timing again from now."""
        self._since = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the last restart."""
        return time.perf_counter() - self._since

    def overdue(self) -> bool:
        """Whether more than :attr:`limit` seconds passed since the last restart."""
        return time.perf_counter() - self._since > self.limit
