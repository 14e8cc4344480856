"""Prometheus samples from prometheus-kafka-adapter (``SERIALIZATION_FORMAT=json``).

One sample per message::

    {"timestamp": "2026-11-26T10:01:00Z", "value": "1.5", "name": "http_requests_total",
     "labels": {"__name__": "http_requests_total", "job": "checkout", "code": "200"}}

``value`` is a string (``"+Inf"``, ``"-Inf"`` and ``"NaN"`` occur; ``NaN`` is also how a
staleness marker arrives). The ``PrometheusAdapterDecoder`` turns the series an
``InputSettings`` maps into ``MetricEvent`` objects:

- gauges are samples of a distribution metric; counters (for a distribution metric: a name
  ending in ``_total``, or ``counter = true``) give per-second rates;
- counters feeding a ratio metric give per-interval deltas: the first sample of a series
  is only its baseline, a lower value is a reset (the delta is the new value);
- a classic histogram (``<name>_bucket`` series with an ``le`` label) feeds ``bad`` with
  ``above``: the ``+Inf`` bucket and the ``le = above`` bucket of one scrape (same labels,
  same timestamp) are paired, and ``count above = bucket(+Inf) - bucket(above)``; when
  ``total`` names the same histogram, it is the ``+Inf`` bucket of the same pair.

Malformed messages raise ``ContractError("prometheus_invalid", ...)`` (``invalid_json`` if
not JSON). Samples of series no mapping uses are ignored.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import orjson

from coalmine._exceptions import ContractError
from coalmine.contract import parse_time
from coalmine.formats.mapping import MessageEvents, RatioAccumulator, SeriesTracker

if TYPE_CHECKING:
    from coalmine.contract import MetricEvent
    from coalmine.formats.mapping import InputSettings, LabelMatcher, RatioKey

REASON = "prometheus_invalid"


def _invalid(message: str) -> ContractError:
    return ContractError(REASON, message)


@dataclass(frozen=True, slots=True)
class _Use:
    metric: str
    role: Literal["samples", "total", "bad"]
    matcher: LabelMatcher
    counter: bool = True


@dataclass(frozen=True, slots=True)
class _BucketUse:
    metric: str
    matcher: LabelMatcher
    above: float
    with_total: bool  # a histogram ratio: total is the +Inf bucket of the same pair


class _Sample(NamedTuple):  # a tuple: one is made for every message
    name: str
    labels: dict[str, str]
    seconds: float
    value: float


class PrometheusAdapterDecoder:
    """Stateful decoder of prometheus-kafka-adapter JSON messages for one input.

    Attributes:
        skipped: Samples (of mapped series) that produced nothing, by reason:
            ``first_point`` (baseline of a counter), ``stale`` (not newer than the
            series' last sample), ``no_service`` / ``no_version``, ``non_finite`` (NaN,
            staleness markers, infinities), ``no_interval``, ``bad_le`` (a bucket without a
            numeric ``le``), ``inconsistent_buckets`` (``+Inf`` bucket below the ``above``
            one), ``unpaired_bucket`` (a bucket whose partner never came, forgotten).
        resets: Counters seen to restart.
    """

    def __init__(self, settings: InputSettings) -> None:
        self._service = settings.service_label
        self._version = settings.version_label
        self._instance = settings.instance_label
        self._plain, self._buckets = _index(settings)
        self._max = settings.max_series
        self._tracker = SeriesTracker(settings.max_series)
        self._ratios = RatioAccumulator(settings.max_series)
        self._pairs: OrderedDict[tuple[Any, ...], list[float | None]] = OrderedDict()
        self.skipped: Counter[str] = Counter()
        self.resets = 0

    @property
    def tracked_series(self) -> int:
        """Input series whose last sample is remembered."""
        return len(self._tracker)

    def decode(self, value: bytes) -> list[MetricEvent]:
        """The metric events one message yields (possibly none)."""
        sample = _parse(value)
        plain = self._plain.get(sample.name, ())
        buckets = self._buckets.get(sample.name, ())
        if not plain and not buckets:
            return []
        lookup = sample.labels.get
        plain = tuple(use for use in plain if use.matcher.matches(lookup))
        buckets = tuple(use for use in buckets if use.matcher.matches(lookup))
        if not plain and not buckets:
            return []
        service, version = lookup(self._service), lookup(self._version)
        if not service:
            self.skipped["no_service"] += 1
            return []
        if not version:
            self.skipped["no_version"] += 1
            return []
        if not math.isfinite(sample.value):
            self.skipped["non_finite"] += 1
            return []
        who = (service, version, lookup(self._instance) or None)
        out = MessageEvents()
        if plain:
            self._plain_sample(sample, plain, who, out)
        if buckets:
            self._bucket_sample(sample, buckets, who, out)
        return out.events(self._ratios)

    def _plain_sample(
        self,
        sample: _Sample,
        uses: tuple[_Use, ...],
        who: tuple[str, str, str | None],
        out: MessageEvents,
    ) -> None:
        time_ns = round(sample.seconds * 1e9)
        key = (sample.name, tuple(sorted(sample.labels.items())))
        counter = any(use.counter for use in uses)
        step = self._tracker.advance(key, time_ns, (sample.value,), cumulative=counter)
        if step.status == "stale":
            self.skipped["stale"] += 1
            return
        if step.status == "reset":
            self.resets += 1
        if counter and step.delta is None:
            self.skipped[step.status] += 1
        for use in uses:
            target: RatioKey = (use.metric, *who)
            if not use.counter:
                out.add_samples(target, sample.seconds, np.array([sample.value]))
                continue
            if step.delta is None:
                continue
            delta = step.delta[0]
            if use.role == "total":
                out.add_counts(target, sample.seconds, delta, 0.0)
            elif use.role == "bad":
                out.add_counts(target, sample.seconds, 0.0, delta)
            elif step.elapsed:
                out.add_samples(target, sample.seconds, np.array([delta / step.elapsed]))
            else:
                self.skipped["no_interval"] += 1

    def _bucket_sample(
        self,
        sample: _Sample,
        uses: tuple[_BucketUse, ...],
        who: tuple[str, str, str | None],
        out: MessageEvents,
    ) -> None:
        try:
            le = float(sample.labels.get("le", "x"))
        except ValueError:
            self.skipped["bad_le"] += 1
            return
        time_ns = round(sample.seconds * 1e9)
        identity = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        by_bound: dict[float, list[_BucketUse]] = {}
        for use in uses:
            by_bound.setdefault(use.above, []).append(use)
        for above, group in by_bound.items():
            slot = 0 if le == math.inf else 1 if math.isclose(le, above, rel_tol=1e-9) else None
            if slot is None:
                continue
            pair = self._pair(sample.name, identity, above, time_ns, slot, sample.value)
            if pair is None:
                continue
            total, below = pair
            if total < below:
                self.skipped["inconsistent_buckets"] += 1
                continue
            step = self._tracker.advance(
                (sample.name, identity, above), time_ns, (total, total - below), cumulative=True
            )
            if step.delta is None:
                self.skipped[step.status] += 1
                continue
            if step.status == "reset":
                self.resets += 1
            count, count_above = step.delta
            for use in group:
                target: RatioKey = (use.metric, *who)
                out.add_counts(
                    target, sample.seconds, count if use.with_total else 0.0, count_above
                )

    def _pair(
        self,
        name: str,
        identity: tuple[tuple[str, str], ...],
        above: float,
        time_ns: int,
        slot: int,
        value: float,
    ) -> tuple[float, float] | None:
        """Hold one bucket of a scrape until its partner (same labels and time) arrives."""
        key = (name, identity, above, time_ns)
        pair = self._pairs.pop(key, None) or [None, None]
        pair[slot] = value
        total, below = pair
        if total is not None and below is not None:
            return total, below
        self._pairs[key] = pair
        if len(self._pairs) > self._max:
            self._pairs.popitem(last=False)
            self.skipped["unpaired_bucket"] += 1
        return None


def _index(
    settings: InputSettings,
) -> tuple[dict[str, tuple[_Use, ...]], dict[str, tuple[_BucketUse, ...]]]:
    plain: dict[str, list[_Use]] = {}
    buckets: dict[str, list[_BucketUse]] = {}
    for mapping in settings.metrics:
        if mapping.kind == "distribution" and mapping.series is not None:
            counter = mapping.counter
            if counter is None:
                counter = mapping.series.endswith("_total")
            use = _Use(mapping.metric, "samples", mapping.matcher, counter)
            plain.setdefault(mapping.series, []).append(use)
            continue
        if mapping.total is None or mapping.bad is None:
            continue
        total_matcher = mapping.matcher + mapping.total.matcher
        bad_matcher = mapping.matcher + mapping.bad.matcher
        if mapping.bad.above is None:
            plain.setdefault(mapping.bad.series, []).append(
                _Use(mapping.metric, "bad", bad_matcher)
            )
        else:
            with_total = mapping.histogram_ratio
            matcher = bad_matcher + mapping.total.matcher if with_total else bad_matcher
            bucket_use = _BucketUse(mapping.metric, matcher, mapping.bad.above, with_total)
            buckets.setdefault(f"{mapping.bad.series}_bucket", []).append(bucket_use)
            if with_total:
                continue
        total_use = _Use(mapping.metric, "total", total_matcher)
        plain.setdefault(mapping.total.series, []).append(total_use)
    return (
        {name: tuple(group) for name, group in plain.items()},
        {name: tuple(group) for name, group in buckets.items()},
    )


def _parse(value: bytes) -> _Sample:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ContractError("invalid_json", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _invalid("a sample must be a JSON object")
    labels = obj.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise _invalid("'labels' must be an object of strings")
    name = obj.get("name", labels.get("__name__"))
    if not isinstance(name, str) or not name:
        raise _invalid("'name' must be a non-empty string")
    if obj.get("timestamp") is None:
        raise _invalid("'timestamp' is required")
    try:
        seconds = parse_time(obj["timestamp"], "timestamp")
    except ContractError as exc:
        raise _invalid(exc.message) from None
    return _Sample(name, labels, seconds, _value(obj.get("value")))


def _value(raw: object) -> float:
    if isinstance(raw, bool) or raw is None:
        raise _invalid("'value' must be a number as a string, e.g. \"1.5\"")
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            pass
    raise _invalid("'value' must be a number as a string, e.g. \"1.5\"")
