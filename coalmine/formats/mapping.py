"""Declarative mapping of foreign metric series onto profile metrics, and its bookkeeping.

The mapping is data only: series are chosen by exact name, and by label values matched
with ``re.fullmatch`` against patterns compiled once when the configuration is loaded. No
expression is ever evaluated.

The second half of this module is the state the stateful decoders share:

- ``SeriesTracker`` remembers the last point of every input series (bounded, least
  recently updated evicted first) and turns cumulative values into per-interval deltas
  with reset handling;
- ``RatioAccumulator`` pairs the counts of a ratio metric's ``total`` and ``bad``
  selectors into ``good``/``total`` events (bounded the same way);
- ``histogram_samples`` approximates samples from histogram buckets.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from coalmine.config.models import MetricKind
from coalmine.contract import MetricEvent, new_metric_event

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

    from numpy.typing import NDArray

InputFormat = Literal["native", "otlp_json", "otlp_proto", "prometheus_adapter"]

LABEL_DEFAULTS: dict[str, tuple[str, str, str]] = {
    "native": ("service.name", "service.version", "service.instance.id"),
    "otlp_json": ("service.name", "service.version", "service.instance.id"),
    "otlp_proto": ("service.name", "service.version", "service.instance.id"),
    "prometheus_adapter": ("service", "version", "instance"),
}
"""Default ``service_label``, ``version_label``, ``instance_label`` of each format."""

_REGEX_CHARS = frozenset(".^$*+?{}[]\\|()")
_EMPTY: NDArray[np.float64] = np.empty(0, dtype=np.float64)
_EMPTY.setflags(write=False)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True, slots=True)
class LabelMatcher:
    """Label constraints: every named label must fully match its pattern.

    A label the series does not carry counts as the empty string (as in PromQL), so
    ``{code = ""}`` selects series without a ``code`` label and ``{code = "5.."}`` never
    matches them. Patterns without regex metacharacters are compared as plain strings.
    """

    exact: tuple[tuple[str, str], ...] = ()
    patterns: tuple[tuple[str, re.Pattern[str]], ...] = ()

    def matches(self, lookup: Callable[[str], str | None]) -> bool:
        """Whether the labels ``lookup`` resolves satisfy every constraint."""
        for name, value in self.exact:
            if (lookup(name) or "") != value:
                return False
        for name, pattern in self.patterns:
            if pattern.fullmatch(lookup(name) or "") is None:
                return False
        return True

    def __add__(self, other: LabelMatcher) -> LabelMatcher:
        return LabelMatcher(self.exact + other.exact, self.patterns + other.patterns)


def compile_labels(labels: Mapping[str, str]) -> LabelMatcher:
    """Compile a ``{label: pattern}`` map; raises ``re.error`` on an invalid pattern."""
    exact: list[tuple[str, str]] = []
    patterns: list[tuple[str, re.Pattern[str]]] = []
    for name, value in labels.items():
        if _REGEX_CHARS.isdisjoint(value):
            exact.append((name, value))
        else:
            patterns.append((name, re.compile(value)))
    return LabelMatcher(tuple(exact), tuple(patterns))


def _check_patterns(labels: dict[str, str]) -> dict[str, str]:
    for name, value in labels.items():
        if not name:
            raise ValueError("label names must not be empty")
        try:
            re.compile(value)
        except re.error as exc:
            msg = f"label {name!r}: invalid regular expression {value!r}: {exc}"
            raise ValueError(msg) from None
    return labels


# --------------------------------------------------------------------------- models


class Selector(_Model):
    """One input series of a ratio metric, optionally narrowed by labels.

    Attributes:
        series: The input series (metric) name, matched exactly.
        labels: ``{label: pattern}``; each pattern must match the label value in full.
        above: Only for ``bad``: the series is a histogram and ``bad`` counts its
            observations above this bound (which must be one of its bucket bounds).
    """

    series: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    above: float | None = Field(default=None, allow_inf_nan=False)
    _matcher: LabelMatcher = PrivateAttr(default_factory=LabelMatcher)

    @field_validator("labels")
    @classmethod
    def _valid_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_patterns(value)

    def model_post_init(self, _context: Any, /) -> None:
        """Compile the label patterns once."""
        self._matcher = compile_labels(self.labels)

    @property
    def matcher(self) -> LabelMatcher:
        """The compiled ``labels``."""
        return self._matcher


class SeriesMapping(_Model):
    """How one profile metric is fed from input series.

    A ``distribution`` metric takes samples from one ``series`` (``labels`` narrow it).
    A ``ratio`` metric takes counts: ``total`` counts every event, ``bad`` the failed (or
    too slow) ones, a subset of ``total``; ``good = total - bad``. ``labels`` on the
    mapping apply to both selectors.

    Attributes:
        metric: The profile metric this feeds.
        kind: ``distribution`` (samples) or ``ratio`` (counts).
        series: For ``distribution``: the input series name.
        labels: ``{label: pattern}`` every used series must match.
        counter: For ``distribution`` from the Prometheus adapter: the series is a
            counter and its samples are per-second rates. Default: counter when the name
            ends with ``_total``. (OTLP says itself whether a series is a counter.)
        total: For ``ratio``: the series counting every event.
        bad: For ``ratio``: the series counting the bad events.
    """

    metric: str = Field(min_length=1)
    kind: MetricKind
    series: str | None = Field(default=None, min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    counter: bool | None = None
    total: Selector | None = None
    bad: Selector | None = None
    _matcher: LabelMatcher = PrivateAttr(default_factory=LabelMatcher)

    @field_validator("labels")
    @classmethod
    def _valid_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_patterns(value)

    @model_validator(mode="after")
    def _fits_kind(self) -> Self:
        if self.kind == "distribution":
            if self.series is None:
                raise ValueError("a distribution metric needs 'series'")
            if self.total is not None or self.bad is not None:
                raise ValueError("'total' and 'bad' belong to ratio metrics; use 'series'")
            return self
        if self.series is not None or self.counter is not None:
            raise ValueError("a ratio metric takes 'total' and 'bad', not 'series'/'counter'")
        if self.total is None or self.bad is None:
            raise ValueError("a ratio metric needs both 'total' and 'bad'")
        if self.total.above is not None:
            raise ValueError("'above' belongs to 'bad'; 'total' counts every observation")
        return self

    def model_post_init(self, _context: Any, /) -> None:
        """Compile the label patterns once."""
        self._matcher = compile_labels(self.labels)

    @property
    def matcher(self) -> LabelMatcher:
        """The compiled mapping-level ``labels``."""
        return self._matcher

    @property
    def histogram_ratio(self) -> bool:
        """``total`` and ``bad`` read one histogram: its count and its count above a bound."""
        return (
            self.total is not None
            and self.bad is not None
            and self.bad.above is not None
            and self.total.series == self.bad.series
        )


class InputSettings(_Model):
    """One input topic: its format and, for foreign formats, how series map to metrics.

    Attributes:
        topic: The topic (Kafka) or topic filter (MQTT) read.
        format: ``native`` (the wire contract); ``otlp_proto`` or ``otlp_json``
            (OpenTelemetry Collector kafka exporter with ``encoding: otlp_proto``, its
            default, or ``otlp_json``); ``prometheus_adapter`` (prometheus-kafka-adapter
            JSON).
        service_label: Attribute / label naming the service.
        version_label: Attribute / label naming the version: it decides the cohort.
        instance_label: Attribute / label naming the instance (optional on the data).
        max_series: Input series whose last point is remembered; the least recently
            updated is forgotten first.
        max_samples_per_point: Cap on the samples approximated from one histogram point.
        metrics: The mappings; required for foreign formats, empty for ``native``.
    """

    topic: str = Field(min_length=1)
    format: InputFormat = "native"
    service_label: str = Field(default="service.name", min_length=1)
    version_label: str = Field(default="service.version", min_length=1)
    instance_label: str = Field(default="service.instance.id", min_length=1)
    max_series: int = Field(default=100_000, gt=0)
    max_samples_per_point: int = Field(default=1_000, gt=0)
    metrics: tuple[SeriesMapping, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _format_label_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            defaults = LABEL_DEFAULTS.get(str(data.get("format", "native")))
            if defaults is not None:
                keys = ("service_label", "version_label", "instance_label")
                missing = {k: v for k, v in zip(keys, defaults, strict=True) if k not in data}
                if missing:
                    return {**data, **missing}
        return data

    @model_validator(mode="after")
    def _metrics_fit_format(self) -> Self:
        if self.format == "native" and self.metrics:
            raise ValueError("a native input takes no [[inputs.metrics]]: events name metrics")
        if self.format != "native" and not self.metrics:
            raise ValueError(f"a {self.format} input needs at least one [[inputs.metrics]]")
        return self


# --------------------------------------------------------------------------- series state


@dataclass(slots=True)
class _Last:
    time_ns: int
    start_ns: int
    values: tuple[float, ...]


class Step(NamedTuple):
    """What one point of a series adds (a tuple: made for every point, it must be cheap).

    ``status``: ``ok``; ``reset`` (the series restarted: ``delta`` is the new value);
    ``first_point`` (a cumulative series seen for the first time: its value is the baseline,
    ``delta`` is None); ``stale`` (not newer than the last point: a duplicate or out of
    order, ignored); ``relayout`` (the number of components changed, e.g. new histogram
    buckets: a new baseline, ``delta`` None).

    ``elapsed``: seconds the delta covers, when known.
    """

    status: Literal["ok", "reset", "first_point", "stale", "relayout"]
    delta: tuple[float, ...] | None = None
    elapsed: float | None = None


class SeriesTracker:
    """The last point of each input series, for deltas and duplicate detection.

    At most ``max_series`` series are remembered; the least recently updated one is
    forgotten first (``evicted`` counts them). A forgotten cumulative series starts over
    with a baseline point.
    """

    def __init__(self, max_series: int) -> None:
        self._max = max_series
        self._last: OrderedDict[Hashable, _Last] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._last)

    def advance(
        self,
        key: Hashable,
        time_ns: int,
        values: tuple[float, ...],
        *,
        cumulative: bool,
        start_ns: int = 0,
    ) -> Step:
        """Record a point; return the delta it adds since the series' previous point.

        ``values`` is a vector (one counter, or a histogram's count and buckets). For a
        delta series (``cumulative=False``) the values are the delta already: only
        duplicates and out-of-order points are detected. A cumulative series has reset
        when ``start_ns`` changed (when known, non-zero) or any component went down; the
        delta is then the new value itself.
        """
        last = self._last.get(key)
        if last is not None and time_ns <= last.time_ns:
            return Step("stale")
        self._remember(key, _Last(time_ns, start_ns, values))
        if not cumulative:
            elapsed = (time_ns - start_ns) / 1e9 if 0 < start_ns < time_ns else None
            return Step("ok", values, elapsed)
        if last is None:
            return Step("first_point")
        if len(values) != len(last.values):
            return Step("relayout")
        restarted = bool(start_ns and last.start_ns and start_ns != last.start_ns)
        if restarted or any(v < p for v, p in zip(values, last.values, strict=True)):
            since = start_ns if 0 < start_ns < time_ns else last.time_ns
            return Step("reset", values, (time_ns - since) / 1e9)
        delta = tuple(v - p for v, p in zip(values, last.values, strict=True))
        return Step("ok", delta, (time_ns - last.time_ns) / 1e9)

    def _remember(self, key: Hashable, last: _Last) -> None:
        self._last[key] = last
        self._last.move_to_end(key)
        if len(self._last) > self._max:
            self._last.popitem(last=False)
            self.evicted += 1


RatioKey = tuple[str, str, str, str | None]
"""``(metric, service, version, instance)``: one stream of ratio counts."""


class RatioAccumulator:
    """Turns ``total`` and ``bad`` counts into ``good``/``total`` metric events.

    The two may come from different series, in different messages, in either order. The
    counts of each ``(metric, service, version, instance)`` are pooled; an event is
    emitted whenever the pool holds at least one whole ``total``, carrying at most that
    many ``bad``. ``bad`` that arrives before its ``total`` waits for the next one, so a
    late ``total`` never shows as a burst of failures. Fractions (float counters) carry
    over. At most ``max_groups`` pools are kept; the least recently updated one is
    dropped first (``evicted``).
    """

    _EPS = 1e-6

    def __init__(self, max_groups: int) -> None:
        self._max = max_groups
        self._pending: OrderedDict[RatioKey, tuple[float, float]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, key: RatioKey, total: float, bad: float, time: float) -> MetricEvent | None:
        """Pool counts; return the event they complete, if any."""
        pool_total, pool_bad = self._pending.pop(key, (0.0, 0.0))
        pool_total += total
        pool_bad += bad
        event = None
        whole = math.floor(pool_total + self._EPS)
        if whole >= 1:
            bad_count = min(max(math.floor(pool_bad + self._EPS), 0), whole)
            pool_total -= whole
            pool_bad -= bad_count
            metric, service, version, instance = key
            event = new_metric_event(
                service, metric, time, _EMPTY, whole - bad_count, whole, True,
                None, None, version, instance,
            )  # fmt: skip
        if abs(pool_total) > self._EPS or abs(pool_bad) > self._EPS:
            self._pending[key] = (pool_total, pool_bad)
            if len(self._pending) > self._max:
                self._pending.popitem(last=False)
                self.evicted += 1
        return event


def _joined(chunks: list[NDArray[np.float64]]) -> NDArray[np.float64]:
    """The chunks end to end (the one chunk itself, uncopied, when there is one)."""
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


class MessageEvents:
    """Collects one message's contributions and turns them into metric events."""

    def __init__(self) -> None:
        self._samples: dict[tuple[RatioKey, float], list[NDArray[np.float64]]] = {}
        self._counts: dict[RatioKey, list[float]] = {}

    def add_samples(self, key: RatioKey, time: float, values: NDArray[np.float64]) -> None:
        """Samples of a distribution metric; samples of one key and time form one event."""
        if values.size:
            self._samples.setdefault((key, time), []).append(values)

    def add_counts(self, key: RatioKey, time: float, total: float, bad: float) -> None:
        """Counts of a ratio metric (pooled per key over the message)."""
        entry = self._counts.setdefault(key, [0.0, 0.0, time])
        entry[0] += total
        entry[1] += bad
        entry[2] = max(entry[2], time)

    def events(self, ratios: RatioAccumulator) -> list[MetricEvent]:
        """The message's events: samples first, then the ratio events it completes."""
        out = [
            new_metric_event(
                service, metric, time, _joined(chunks), 0, 0, False, None, None, version, instance
            )
            for ((metric, service, version, instance), time), chunks in self._samples.items()
        ]
        for key, (total, bad, time) in self._counts.items():
            event = ratios.add(key, total, bad, time)
            if event is not None:
                out.append(event)
        return out


# --------------------------------------------------------------------------- histograms


def bucket_index(bounds: Sequence[float], threshold: float) -> int | None:
    """Index of the bound equal to ``threshold`` (relative tolerance 1e-9), or None."""
    for index, bound in enumerate(bounds):
        if math.isclose(bound, threshold, rel_tol=1e-9, abs_tol=1e-12):
            return index
    return None


def count_above(bounds: Sequence[float], counts: Sequence[float], threshold: float) -> float | None:
    """Observations above ``threshold`` from per-bucket counts (upper bounds inclusive).

    ``counts[i]`` counts ``(bounds[i-1], bounds[i]]``; the last bucket is open above.
    None when ``threshold`` is not one of the bounds.
    """
    index = bucket_index(bounds, threshold)
    if index is None:
        return None
    return float(sum(counts[index + 1 :]))


def bucket_representatives(
    bounds: Sequence[float], low: float | None, high: float | None
) -> NDArray[np.float64]:
    """One value standing for each bucket's observations.

    Inner buckets: the midpoint. The first bucket ``(-inf, b0]``: the midpoint of the
    observed minimum and ``b0`` when the minimum is known, else ``b0``. The last bucket
    ``(bN, +inf)``: the midpoint of ``bN`` and the observed maximum when known, else ``bN``.
    """
    edges = np.asarray(bounds, dtype=np.float64)
    reps = np.empty(len(edges) + 1, dtype=np.float64)
    reps[1:-1] = (edges[:-1] + edges[1:]) / 2
    first, last = float(edges[0]), float(edges[-1])
    reps[0] = (low + first) / 2 if low is not None and low <= first else first
    reps[-1] = (last + high) / 2 if high is not None and high >= last else last
    return reps


def histogram_samples(
    bounds: Sequence[float],
    counts: Iterable[float],
    cap: int,
    low: float | None = None,
    high: float | None = None,
) -> NDArray[np.float64]:
    """Approximate samples: each bucket's representative repeated by its count.

    With more than ``cap`` observations the counts are scaled down to ``cap`` in total
    (largest remainders), keeping the shape of the distribution. Empty without bounds.
    """
    if not bounds:
        return _EMPTY
    weights = np.rint(np.maximum(np.fromiter(counts, dtype=np.float64), 0.0))
    total = float(weights.sum())
    if total <= 0:
        return _EMPTY
    if total > cap:
        scaled = weights * (cap / total)
        weights = np.floor(scaled)
        missing = cap - int(weights.sum())
        if missing > 0:
            order = np.argsort(-(scaled - weights), kind="stable")
            weights[order[:missing]] += 1
    reps = bucket_representatives(bounds, low, high)
    return np.repeat(reps, weights.astype(np.int64))
