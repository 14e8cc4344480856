"""OpenTelemetry metrics from the Collector's kafka exporter (``otlp_json``, ``otlp_proto``).

Each message is one ``ExportMetricsServiceRequest``: in the OTLP/JSON encoding (proto3 JSON
mapping: lowerCamelCase names, 64-bit integers as strings, enums as integers) for an
``otlp_json`` input, in the protobuf binary encoding for an ``otlp_proto`` input (turned
into the same JSON object by :mod:`coalmine.formats.otlp_proto`, so both encodings go
through the same checks and mapping). The ``OtlpDecoder`` turns the series an
``InputSettings`` maps into ``MetricEvent`` objects:

- gauge points (and non-monotonic sums) are samples of a distribution metric;
- monotonic sums are counts: delta points as they are, cumulative points as the
  difference to the series' previous point (the first point of a series is only its
  baseline; a lower value or a new ``startTimeUnixNano`` is a reset, whose delta is the
  new value). For a distribution metric a monotonic sum gives per-second rates;
- histograms give counts (``count``, and the count above a bucket bound for ``bad``) or
  approximate samples (bucket representatives repeated by their counts).

A message is validated whole before any state changes: a malformed one raises
``ContractError("otlp_invalid", ...)`` (``invalid_json`` if it is not JSON,
``invalid_protobuf`` if it is not a protobuf ``ExportMetricsServiceRequest``) and leaves the
decoder as it was. Data points of metrics no mapping uses are not inspected. Exponential
histograms and summaries are not supported (counted in ``skipped``).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson

from coalmine._exceptions import ContractError
from coalmine.formats.mapping import (
    MessageEvents,
    RatioAccumulator,
    SeriesTracker,
    Step,
    count_above,
    histogram_samples,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Container

    from coalmine.contract import MetricEvent
    from coalmine.formats.mapping import InputSettings, LabelMatcher, RatioKey

REASON = "otlp_invalid"

_TEMPORALITY = {
    1: False,
    2: True,
    "AGGREGATION_TEMPORALITY_DELTA": False,
    "AGGREGATION_TEMPORALITY_CUMULATIVE": True,
}
_DATA_KINDS = ("gauge", "sum", "histogram", "exponentialHistogram", "summary")
_SUPPORTED: dict[str, Literal["gauge", "sum", "histogram"]] = {
    "gauge": "gauge",
    "sum": "sum",
    "histogram": "histogram",
}
_NO_RECORDED_VALUE = 1
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_MAX_UINT64 = 2**64 - 1


def _invalid(message: str) -> ContractError:
    return ContractError(REASON, message)


@dataclass(frozen=True, slots=True)
class _Use:
    metric: str
    role: Literal["samples", "total", "bad"]
    matcher: LabelMatcher
    above: float | None = None


@dataclass(frozen=True, slots=True)
class _Point:
    uses: tuple[_Use, ...]
    key: tuple[Any, ...]
    attrs: dict[str, str]
    kind: Literal["gauge", "sum", "histogram"]
    cumulative: bool
    monotonic: bool
    start_ns: int
    time_ns: int
    values: tuple[float, ...]
    bounds: tuple[float, ...] = ()
    low: float | None = None
    high: float | None = None


class OtlpDecoder:
    """Stateful decoder of ``otlp_json`` or ``otlp_proto`` messages for one input.

    Attributes:
        skipped: Data points (of mapped series) that produced nothing, by reason:
            ``first_point`` (baseline of a cumulative series), ``stale`` (not newer than
            the series' last point: duplicate or out of order), ``relayout`` (histogram
            buckets changed: new baseline), ``no_service`` / ``no_version`` (attribute
            missing), ``no_value``, ``non_finite``, ``negative_delta``, ``type_mismatch``
            (e.g. a gauge for a ratio metric), ``no_interval`` (a rate without a known
            interval), ``no_buckets``, ``threshold_not_a_bound``, ``unsupported_type``
            (exponential histogram, summary: counted per metric).
        resets: Cumulative series seen to restart.
    """

    def __init__(self, settings: InputSettings) -> None:
        self._service = settings.service_label
        self._version = settings.version_label
        self._instance = settings.instance_label
        self._cap = settings.max_samples_per_point
        self._uses = _index(settings)
        self._from_proto: Callable[[bytes, Container[str]], dict[str, Any]] | None = None
        if settings.format == "otlp_proto":
            # Imported here: the protobuf runtime loads only for an otlp_proto input.
            from coalmine.formats.otlp_proto import request_to_json_shape  # noqa: PLC0415

            self._from_proto = request_to_json_shape
        self._tracker = SeriesTracker(settings.max_series)
        self._ratios = RatioAccumulator(settings.max_series)
        self.skipped: Counter[str] = Counter()
        self.resets = 0

    @property
    def tracked_series(self) -> int:
        """Input series whose last point is remembered."""
        return len(self._tracker)

    def decode(self, value: bytes) -> list[MetricEvent]:
        """The metric events one message yields (possibly none)."""
        if self._from_proto is not None:
            obj: object = self._from_proto(value, self._uses)
        else:
            try:
                obj = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise ContractError("invalid_json", f"not valid JSON: {exc}") from None
        skipped: Counter[str] = Counter()
        points = self._parse(obj, skipped)
        self.skipped.update(skipped)
        return self._apply(points)

    # ------------------------------------------------------------------ parsing

    def _parse(self, obj: object, skipped: Counter[str]) -> list[_Point]:
        if not isinstance(obj, dict):
            raise _invalid("an ExportMetricsServiceRequest must be a JSON object")
        points: list[_Point] = []
        for r, rm in enumerate(_list(obj, "resourceMetrics", "")):
            where = f"resourceMetrics[{r}]"
            rm_obj = _object(rm, where)
            resource = _object(rm_obj.get("resource") or {}, f"{where}.resource")
            res_attrs = _attributes(resource.get("attributes"), f"{where}.resource")
            for s, sm in enumerate(_list(rm_obj, "scopeMetrics", where)):
                swhere = f"{where}.scopeMetrics[{s}]"
                sm_obj = _object(sm, swhere)
                scope = _object(sm_obj.get("scope") or {}, f"{swhere}.scope")
                scope_name = scope.get("name") or ""
                if not isinstance(scope_name, str):
                    raise _invalid(f"{swhere}.scope.name must be a string")
                for m, metric in enumerate(_list(sm_obj, "metrics", swhere)):
                    mwhere = f"{swhere}.metrics[{m}]"
                    self._parse_metric(
                        _object(metric, mwhere), mwhere, res_attrs, scope_name, points, skipped
                    )
        return points

    def _parse_metric(
        self,
        metric: dict[str, Any],
        where: str,
        res_attrs: dict[str, str],
        scope_name: str,
        points: list[_Point],
        skipped: Counter[str],
    ) -> None:
        name = metric.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(f"{where}.name must be a non-empty string")
        uses = self._uses.get(name)
        if uses is None:
            return
        kind = _data_kind(metric, f"{where} ({name})", skipped)
        if kind is None:
            return
        data = _object(metric[kind], f"{where}.{kind}")
        cumulative, monotonic = False, False
        if kind != "gauge":
            cumulative = _temporality(data.get("aggregationTemporality"), f"{where}.{kind}")
            is_monotonic = data.get("isMonotonic", False)
            if not isinstance(is_monotonic, bool):
                raise _invalid(f"{where}.{kind}.isMonotonic must be a boolean")
            monotonic = kind == "histogram" or is_monotonic
        for p, raw in enumerate(_list(data, "dataPoints", f"{where}.{kind}")):
            pwhere = f"{where}.{kind}.dataPoints[{p}]"
            dp = _object(raw, pwhere)
            attrs = {**res_attrs, **_attributes(dp.get("attributes"), pwhere)}
            start_ns = _uint64(dp.get("startTimeUnixNano", 0), f"{pwhere}.startTimeUnixNano")
            time_ns = _uint64(dp.get("timeUnixNano"), f"{pwhere}.timeUnixNano")
            if time_ns == 0:
                raise _invalid(f"{pwhere}.timeUnixNano must be set")
            flags = _uint64(dp.get("flags", 0), f"{pwhere}.flags")
            if kind == "histogram":
                values, bounds, low, high = _histogram(dp, pwhere)
            else:
                number = _number(dp, pwhere)
                values, bounds, low, high = (number,) if number is not None else (), (), None, None
            if not values or flags & _NO_RECORDED_VALUE:
                skipped["no_value"] += 1
                continue
            points.append(
                _Point(
                    uses=uses,
                    key=(name, scope_name, tuple(sorted(attrs.items()))),
                    attrs=attrs,
                    kind=kind,
                    cumulative=cumulative,
                    monotonic=monotonic,
                    start_ns=start_ns,
                    time_ns=time_ns,
                    values=values,
                    bounds=bounds,
                    low=low,
                    high=high,
                )
            )

    # ------------------------------------------------------------------ applying

    def _apply(self, points: list[_Point]) -> list[MetricEvent]:
        out = MessageEvents()
        for point in points:
            lookup = point.attrs.get
            uses = [use for use in point.uses if use.matcher.matches(lookup)]
            if not uses:
                continue
            service, version = lookup(self._service), lookup(self._version)
            if not service:
                self.skipped["no_service"] += 1
                continue
            if not version:
                self.skipped["no_version"] += 1
                continue
            who = (service, version, lookup(self._instance) or None)
            if point.kind == "gauge" or (point.kind == "sum" and not point.monotonic):
                self._gauge(point, uses, who, out)
            else:
                self._counted(point, uses, who, out)
        return out.events(self._ratios)

    def _gauge(
        self,
        point: _Point,
        uses: list[_Use],
        who: tuple[str, str, str | None],
        out: MessageEvents,
    ) -> None:
        step = self._tracker.advance(point.key, point.time_ns, point.values, cumulative=False)
        if step.status == "stale":
            self.skipped["stale"] += 1
            return
        value = point.values[0]
        for use in uses:
            if use.role != "samples":
                self.skipped["type_mismatch"] += 1
            elif not math.isfinite(value):
                self.skipped["non_finite"] += 1
            else:
                key: RatioKey = (use.metric, *who)
                out.add_samples(key, point.time_ns / 1e9, np.array([value], dtype=np.float64))

    def _counted(
        self,
        point: _Point,
        uses: list[_Use],
        who: tuple[str, str, str | None],
        out: MessageEvents,
    ) -> None:
        if not all(math.isfinite(v) for v in point.values):
            self.skipped["non_finite"] += 1
            return
        step = self._tracker.advance(
            point.key,
            point.time_ns,
            point.values,
            cumulative=point.cumulative,
            start_ns=point.start_ns,
        )
        if step.delta is None:
            self.skipped[step.status] += 1
            return
        if step.status == "reset":
            self.resets += 1
        if any(v < 0 for v in step.delta):
            self.skipped["negative_delta"] += 1
            return
        time = point.time_ns / 1e9
        for use in uses:
            key: RatioKey = (use.metric, *who)
            if point.kind == "sum":
                self._sum_use(use, key, time, step, out)
            else:
                self._histogram_use(use, key, time, point, step.delta, out)

    def _sum_use(
        self, use: _Use, key: RatioKey, time: float, step: Step, out: MessageEvents
    ) -> None:
        count = step.delta[0] if step.delta else 0.0
        if use.role == "total":
            out.add_counts(key, time, count, 0.0)
        elif use.role == "samples" and step.elapsed:
            out.add_samples(key, time, np.array([count / step.elapsed], dtype=np.float64))
        elif use.role == "samples":
            self.skipped["no_interval"] += 1
        elif use.above is None:
            out.add_counts(key, time, 0.0, count)
        else:
            self.skipped["type_mismatch"] += 1

    def _histogram_use(
        self,
        use: _Use,
        key: RatioKey,
        time: float,
        point: _Point,
        delta: tuple[float, ...],
        out: MessageEvents,
    ) -> None:
        count, buckets = delta[0], delta[1:]
        if use.role == "total":
            out.add_counts(key, time, count, 0.0)
        elif use.role == "bad" and use.above is None:
            out.add_counts(key, time, 0.0, count)
        elif not point.bounds:
            self.skipped["no_buckets"] += 1
        elif use.role == "samples":
            samples = histogram_samples(point.bounds, buckets, self._cap, point.low, point.high)
            out.add_samples(key, time, samples)
        else:
            above = count_above(point.bounds, buckets, use.above or 0.0)
            if above is None:
                self.skipped["threshold_not_a_bound"] += 1
            else:
                out.add_counts(key, time, 0.0, above)


def _index(settings: InputSettings) -> dict[str, tuple[_Use, ...]]:
    uses: dict[str, list[_Use]] = {}
    for mapping in settings.metrics:
        if mapping.kind == "distribution" and mapping.series is not None:
            use = _Use(mapping.metric, "samples", mapping.matcher)
            uses.setdefault(mapping.series, []).append(use)
        if mapping.total is not None:
            use = _Use(mapping.metric, "total", mapping.matcher + mapping.total.matcher)
            uses.setdefault(mapping.total.series, []).append(use)
        if mapping.bad is not None:
            matcher = mapping.matcher + mapping.bad.matcher
            use = _Use(mapping.metric, "bad", matcher, mapping.bad.above)
            uses.setdefault(mapping.bad.series, []).append(use)
    return {name: tuple(group) for name, group in uses.items()}


# ---------------------------------------------------------------------- field parsers


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where or 'the request'} must be an object")
    return value


def _list(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(f"{where}.{key} must be an array" if where else f"{key} must be an array")
    return value


def _uint64(value: object, where: str) -> int:
    # proto3 JSON writes 64-bit integers as strings; parsers also accept numbers.
    if type(value) is str and value.isdigit() and value.isascii():
        number = int(value)
    else:
        number = _int64(value, where)
    if not 0 <= number <= _MAX_UINT64:
        raise _invalid(f"{where} must be an unsigned 64-bit integer")
    return number


def _int64(value: object, where: str) -> int:
    if isinstance(value, str):
        text = value.removeprefix("-")
        if text.isdigit() and text.isascii():
            return int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    raise _invalid(f"{where} must be an integer (a string of digits in OTLP/JSON)")


def _double(value: object, where: str) -> float:
    if isinstance(value, bool):
        raise _invalid(f"{where} must be a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        special = _SPECIAL_DOUBLES.get(value)
        if special is not None:
            return special
        try:
            return float(value)
        except ValueError:
            pass
    raise _invalid(f"{where} must be a number")


def _number(dp: dict[str, Any], where: str) -> float | None:
    has_double, has_int = "asDouble" in dp, "asInt" in dp
    if has_double and has_int:
        raise _invalid(f"{where} has both asDouble and asInt")
    if has_double:
        return _double(dp["asDouble"], f"{where}.asDouble")
    if has_int:
        return float(_int64(dp["asInt"], f"{where}.asInt"))
    return None


def _histogram(
    dp: dict[str, Any], where: str
) -> tuple[tuple[float, ...], tuple[float, ...], float | None, float | None]:
    count = _uint64(dp.get("count", 0), f"{where}.count")
    raw_buckets = dp.get("bucketCounts") or []
    raw_bounds = dp.get("explicitBounds") or []
    if not isinstance(raw_buckets, list) or not isinstance(raw_bounds, list):
        raise _invalid(f"{where}.bucketCounts and explicitBounds must be arrays")
    buckets = [_uint64(c, f"{where}.bucketCounts[{i}]") for i, c in enumerate(raw_buckets)]
    bounds = tuple(_double(b, f"{where}.explicitBounds[{i}]") for i, b in enumerate(raw_bounds))
    if buckets:
        if len(buckets) != len(bounds) + 1:
            raise _invalid(f"{where}: bucketCounts needs one more element than explicitBounds")
        if sum(buckets) != count:
            raise _invalid(f"{where}: count must equal the sum of bucketCounts")
    else:
        bounds = ()
    if not all(math.isfinite(b) for b in bounds) or any(
        b >= c for b, c in itertools.pairwise(bounds)
    ):
        raise _invalid(f"{where}.explicitBounds must be finite and strictly increasing")
    low = _double(dp["min"], f"{where}.min") if dp.get("min") is not None else None
    high = _double(dp["max"], f"{where}.max") if dp.get("max") is not None else None
    values = (float(count), *(float(b) for b in buckets))
    return values, bounds, low, high


def _data_kind(
    metric: dict[str, Any], where: str, skipped: Counter[str]
) -> Literal["gauge", "sum", "histogram"] | None:
    kinds = [k for k in _DATA_KINDS if metric.get(k) is not None]
    if len(kinds) > 1:
        raise _invalid(f"{where} has more than one of {', '.join(kinds)}")
    if not kinds:
        return None
    kind = _SUPPORTED.get(kinds[0])
    if kind is None:
        skipped["unsupported_type"] += 1
    return kind


def _temporality(value: object, where: str) -> bool:
    cumulative = _TEMPORALITY.get(value) if isinstance(value, int | str) else None
    if cumulative is None or isinstance(value, bool):
        raise _invalid(f"{where}.aggregationTemporality must be 1 (delta) or 2 (cumulative)")
    return cumulative


def _attributes(raw: object, where: str) -> dict[str, str]:
    """Attributes as strings; arrays, maps, bytes and empty values are left out."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise _invalid(f"{where}.attributes must be an array")
    attrs: dict[str, str] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise _invalid(f"{where}.attributes[{i}] must be an object with a string 'key'")
        value = item.get("value")
        if value is None:
            continue
        if not isinstance(value, dict):
            raise _invalid(f"{where}.attributes[{i}].value must be an AnyValue object")
        text = _any_value(value, f"{where}.attributes[{i}].value")
        if text is not None:
            attrs[item["key"]] = text
    return attrs


def _any_value(value: dict[str, Any], where: str) -> str | None:
    if "stringValue" in value:
        text = value["stringValue"]
        if not isinstance(text, str):
            raise _invalid(f"{where}.stringValue must be a string")
        return text
    if "boolValue" in value:
        flag = value["boolValue"]
        if not isinstance(flag, bool):
            raise _invalid(f"{where}.boolValue must be a boolean")
        return "true" if flag else "false"
    if "intValue" in value:
        return str(_int64(value["intValue"], f"{where}.intValue"))
    if "doubleValue" in value:
        return repr(_double(value["doubleValue"], f"{where}.doubleValue"))
    return None
