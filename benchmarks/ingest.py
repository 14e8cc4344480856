"""Ingest throughput: coalmine's consume loop against a bare aiokafka consumer, same run.

Run from the repository root: ``python benchmarks/ingest.py [--messages N]
[--samples-per-message K [K ...]] [--formats F [F ...]] [--deployments D] [--partitions P]
[--runs R] [--broker kafka|tansu]``.

A private broker is started (``--broker``: one Apache Kafka node, ``support/kafka_broker.py``,
by default; or tansu, ``support/brokers.py``); each pass gets topics of its own,
filled, before anything is timed, with ``started`` events for D deployments (baseline
``v1``, canary ``v2``) and N metric messages keyed by service, round robin over the
services in event-time order (cohort alternating baseline / canary, the canary repeating
the baseline's data: an A/A test; event time spread evenly over ``--event-minutes`` per
deployment, so that every deployment is judged once per 60 s interval during the run).
One pass per format (``--formats``, default all three):

* ``native``, once per K of ``--samples-per-message``: one JSON object per message per the
  wire contract, ``values`` with K latency samples, or ``value`` when K = 1;
* ``otlp_json``: one ``ExportMetricsServiceRequest`` per service, cohort and tick, as the
  OpenTelemetry Collector's kafka exporter writes it: a delta ``http.server.duration``
  histogram of 100 latency observations (the SDK's default bucket bounds, with min and
  max), from which the daemon derives 100 approximate samples, and a delta request counter
  by status code feeding a ratio metric;
* ``prometheus_adapter``: one gauge sample (``latency_ms``) per message, as
  prometheus-kafka-adapter writes it (``SERIALIZATION_FORMAT=json``).

The foreign formats carry no deployment id: the daemon, configured with the matching
``[[inputs]]`` entry, routes them by service and version. Every message is decoded once
after the fill (not timed) to check it yields what it should and count the samples.

The sides, ``bare``, ``bare+json``, ``bare+decode`` and ``coalmine``, and the timing rule are
``harness/ingest.py``'s; they run interleaved, R times each. The coalmine side opens the D
deployments in its router before it starts (as in production, where they start minutes
before their metrics flow), so that no metric overtakes its ``started`` event; each of its
runs publishes to a verdict topic of its own (the daemon reads the verdict topic when it is
assigned partitions and would suppress the verdicts of an earlier run as already
published). A coalmine run warns if any sample was dropped, a message dead-lettered or
skipped by the decoder, a deployment ended, or a judgement is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks, support, coalmine

from benchmarks.harness.broker import add_broker_option, describe, start_broker
from benchmarks.harness.ingest import (
    BARE_SIDES,
    FORMATS,
    INTERVAL,
    T0,
    VERSIONS,
    Format,
    IngestWorkload,
    Measurement,
    decode_all,
    fill,
    report_runs,
    run_bare,
    run_coalmine,
    service_names,
)
from coalmine.config.models import TopicsSettings
from coalmine.contract import format_time

if TYPE_CHECKING:
    from numpy.typing import NDArray

OTLP_BOUNDS = (0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000)
"""The OpenTelemetry SDKs' default explicit bucket bounds (ms; 16 buckets). Doubles, but
written without a fraction, as the Collector's JSON marshaller writes whole doubles."""
OTLP_OBSERVATIONS = 100
"""Observations per OTLP histogram point: the daemon derives one sample from each."""
ERROR_RATE = 0.005
"""Share of the OTLP requests counted with status code 500."""
TARGET_BATCH_RATIO = 0.60
"""Messages of many samples: coalmine's rate at least this share of the bare consumer's."""
TARGET_SINGLE_RATE = 50_000.0
"""Single-sample messages: at least this many a second."""


# -- the topic contents -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tick:
    """Where message ``index`` of a pass belongs: service, cohort, event time."""

    which: int
    cohort: str
    time: float
    previous: float
    """Event time of the cohort's message before (the deployment's start for the first)."""
    row: int
    """The row of data it carries: a canary repeats its baseline's message just before."""


def _tick(work: IngestWorkload, index: int) -> _Tick:
    which, nth = index % work.deployments, index // work.deployments
    span, per_deployment = work.event_minutes * 60.0, math.ceil(work.messages / work.deployments)
    # A canary message repeats the data of its deployment's baseline message just before
    # it: an A/A test that cannot fail by chance, so no deployment rolls back.
    canary = nth % 2 == 1
    return _Tick(
        which=which,
        cohort="canary" if canary else "baseline",
        time=T0 + span * (nth + 1) / per_deployment,
        previous=T0 + span * max(0, nth - 1) / per_deployment,
        row=index - work.deployments if canary else index,
    )


def _latencies(work: IngestWorkload, seed: int) -> NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return np.round(rng.lognormal(math.log(100.0), 0.5, (work.messages, work.samples)), 1)


def _native_messages(work: IngestWorkload, seed: int) -> list[tuple[bytes, bytes]]:
    """One contract metric event per message: ``values`` (K samples) or ``value``."""
    samples = _latencies(work, seed)
    services = service_names(work.deployments)
    out = []
    for index in range(work.messages):
        tick = _tick(work, index)
        row = samples[tick.row]
        event: dict[str, object] = {
            "service": services[tick.which],
            "cohort": tick.cohort,
            "metric": "latency_ms",
            "time": format_time(tick.time),
        }
        if work.samples == 1:
            event["value"] = float(row[0])
        else:
            event["values"] = row
        value = orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)
        out.append((services[tick.which].encode(), value))
    return out


def _attribute(key: str, value: str) -> dict[str, object]:
    return {"key": key, "value": {"stringValue": value}}


def _nanos(seconds: float) -> str:
    return str(round(seconds * 1e9))


def _otlp_messages(work: IngestWorkload, seed: int) -> list[tuple[bytes, bytes]]:
    """One ``ExportMetricsServiceRequest`` (OTLP/JSON) per service, cohort and tick.

    One resource (the cohort's pod: service name, version, instance, SDK attributes), one
    scope, two metrics, delta temporality: ``http.server.duration``, a histogram of
    ``work.samples`` latency observations over the SDK's default bounds (count, sum, min,
    max), and ``http.server.requests``, a monotonic sum with one point per status code
    (200 and 500; as many requests as observations, ~0.5% of them 500).
    """
    latencies = _latencies(work, seed)
    bounds = np.asarray(OTLP_BOUNDS)
    width = len(OTLP_BOUNDS) + 1
    # Bucket i is (bounds[i-1], bounds[i]]: upper bounds inclusive, as in OTLP.
    bucket = np.searchsorted(bounds, latencies, side="left")
    bucket += np.arange(work.messages)[:, None] * width
    counts = np.bincount(bucket.ravel(), minlength=work.messages * width).reshape(-1, width)
    errors = np.random.default_rng(seed + 1).binomial(work.samples, ERROR_RATE, work.messages)
    services = service_names(work.deployments)
    resources = {
        (service, cohort): {
            "attributes": [
                _attribute("service.name", service),
                _attribute("service.version", version),
                _attribute("service.instance.id", f"{service}-{version}-7f9c4d-x2k8p"),
                _attribute("telemetry.sdk.language", "python"),
                _attribute("telemetry.sdk.name", "opentelemetry"),
                _attribute("telemetry.sdk.version", "1.27.0"),
            ]
        }
        for service in services
        for cohort, version in VERSIONS.items()
    }
    scope = {"name": "opentelemetry.instrumentation.asgi", "version": "0.48b0"}
    route = [_attribute("http.method", "GET"), _attribute("http.route", "/api/orders")]
    out = []
    for index in range(work.messages):
        tick = _tick(work, index)
        service = services[tick.which]
        start, end = _nanos(tick.previous), _nanos(tick.time)
        row = latencies[tick.row]
        bad = int(errors[tick.row])
        histogram = {
            "attributes": route,
            "startTimeUnixNano": start,
            "timeUnixNano": end,
            "count": str(work.samples),
            "sum": round(float(row.sum()), 1),
            "bucketCounts": [str(c) for c in counts[tick.row].tolist()],
            "explicitBounds": OTLP_BOUNDS,
            "min": float(row.min()),
            "max": float(row.max()),
        }
        requests = [
            {
                "attributes": [
                    {"key": "http.response.status_code", "value": {"intValue": code}},
                    *route,
                ],
                "startTimeUnixNano": start,
                "timeUnixNano": end,
                "asInt": str(count),
            }
            for code, count in (("200", work.samples - bad), ("500", bad))
        ]
        request = {
            "resourceMetrics": [
                {
                    "resource": resources[service, tick.cohort],
                    "scopeMetrics": [
                        {
                            "scope": scope,
                            "metrics": [
                                {
                                    "name": "http.server.duration",
                                    "description": "Duration of HTTP server requests.",
                                    "unit": "ms",
                                    "histogram": {
                                        "dataPoints": [histogram],
                                        "aggregationTemporality": 1,
                                    },
                                },
                                {
                                    "name": "http.server.requests",
                                    "unit": "{request}",
                                    "sum": {
                                        "dataPoints": requests,
                                        "aggregationTemporality": 1,
                                        "isMonotonic": True,
                                    },
                                },
                            ],
                        }
                    ],
                }
            ]
        }
        out.append((service.encode(), orjson.dumps(request)))
    return out


def _prometheus_messages(work: IngestWorkload, seed: int) -> list[tuple[bytes, bytes]]:
    """One prometheus-kafka-adapter sample per message: the cohort's ``latency_ms`` gauge."""
    samples = _latencies(work, seed)
    services = service_names(work.deployments)
    out = []
    for index in range(work.messages):
        tick = _tick(work, index)
        service, version = services[tick.which], VERSIONS[tick.cohort]
        labels = {
            "__name__": "latency_ms",
            "instance": f"10.{1 + tick.which // 250}.{tick.which % 250}.{version[1:]}:8080",
            "job": "api",
            "namespace": "shop",
            "service": service,
            "version": version,
        }
        sample = {
            "timestamp": format_time(tick.time),
            "value": repr(float(samples[tick.row, 0])),
            "name": "latency_ms",
            "labels": labels,
        }
        out.append((service.encode(), orjson.dumps(sample)))
    return out


def _metric_messages(work: IngestWorkload, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value) in event-time order, round robin over the services, keyed by service."""
    if work.format == "otlp_json":
        return _otlp_messages(work, seed)
    if work.format == "prometheus_adapter":
        return _prometheus_messages(work, seed)
    return _native_messages(work, seed)


def _report(work: IngestWorkload, runs: list[Measurement], payload: int, samples: float) -> None:
    """The table, then the target: on the best of each side's ratio, or rate."""
    _, ratio = report_runs(runs, samples)
    # The targets are the native format's; the foreign passes are held to them for reference.
    scope = "" if work.format == "native" else f" (native targets; {work.format} for reference)"
    if samples > 1:
        met = "met" if ratio >= TARGET_BATCH_RATIO else "NOT met"
        print(
            f"target: >= {TARGET_BATCH_RATIO:.0%} of the bare consumer's rate (best "
            f"of each side): {met}{scope}"
        )
    else:
        rate = max(m.rate for m in runs if m.side == "coalmine")
        met = "met" if rate >= TARGET_SINGLE_RATE else "NOT met"
        print(f"target: >= {TARGET_SINGLE_RATE:,.0f} single-sample events/s: {met}{scope}")
    print(f"(metric payload {payload / work.messages:,.0f} bytes/message on average)\n")


async def _pass(bootstrap: str, work: IngestWorkload, args: argparse.Namespace) -> None:
    per_deployment = math.ceil(work.messages / work.deployments)
    print(
        f"== {work.name}, N={work.messages:,} messages, "
        f"D={work.deployments} deployments ({per_deployment} messages each), "
        f"P={work.partitions} partitions, event time {work.event_minutes:g} min "
        f"({work.judgements()} judgements per deployment, every {INTERVAL:g} s), "
        f"max_poll_records {args.max_poll_records}"
    )
    begun = time.perf_counter()
    metrics = _metric_messages(work, args.seed)
    await fill(bootstrap, work, metrics)
    print(f"produced in {time.perf_counter() - begun:.1f} s (not measured)")
    values = [value for _, value in metrics]
    decoded = decode_all(work, values)
    samples = decoded.samples / work.messages
    counts = f", {decoded.counted / work.messages:g} requests counted" if decoded.counted else ""
    print(
        f"decoded alone (one thread, not measured): {samples:g} samples/message{counts}; "
        f"{work.messages / decoded.seconds:,.0f} messages/s, "
        f"{decoded.seconds / decoded.samples * 1e6:.2f} s per 1M samples"
    )
    if decoded.skipped:
        print(f"  WARNING the decoder skipped points: {dict(decoded.skipped)}")
    runs: list[Measurement] = []
    for run in range(1, args.runs + 1):  # interleaved: the bare sides, then coalmine, a round
        runs.extend(
            [
                await run_bare(bootstrap, work, run, args.max_poll_records, side=side)
                for side in BARE_SIDES
            ]
        )
        runs.append(await run_coalmine(bootstrap, work, run, args.max_poll_records))
    _report(work, runs, sum(len(value) for value in values), samples)


def _workloads(args: argparse.Namespace) -> list[IngestWorkload]:
    """One pass per native K, then one per foreign format, each on topics of its own."""
    passes: list[tuple[Format, int]] = []
    for fmt in args.formats:
        if fmt == "native":
            passes.extend(("native", samples) for samples in args.samples_per_message)
        else:
            passes.append((fmt, OTLP_OBSERVATIONS if fmt == "otlp_json" else 1))
    out = []
    for fmt, samples in passes:
        tag = uuid.uuid4().hex[:6]
        topics = TopicsSettings(
            deployments=f"bench.{tag}.deployments",
            metrics=f"bench.{tag}.metrics",
            verdicts=f"bench.{tag}.verdicts",
            dead_letter=f"bench.{tag}.dlq",
        )
        source = topics.metrics if fmt == "native" else f"bench.{tag}.{fmt}"
        messages = args.messages or (50_000 if samples > 1 else 200_000)
        out.append(
            IngestWorkload(
                fmt,
                samples,
                messages,
                args.deployments,
                args.partitions,
                args.event_minutes,
                topics,
                source,
                args.broker,
            )
        )
    return out


async def _main(args: argparse.Namespace) -> None:
    cores = os.cpu_count()
    print(f"coalmine ingest benchmark, {cores} CPU(s), python {sys.version.split()[0]}")
    print(
        f"each side runs {args.runs}x, interleaved; 'best' is the faster run of each side; "
        "the broker is a separate process on the same machine, its CPU shown apart"
    )
    print(f"broker: {describe(args.broker)}\n")
    async with start_broker(args.broker) as broker:
        for work in _workloads(args):
            await _pass(broker.bootstrap, work, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="metric messages per pass (default 50,000 for K > 1 and otlp_json, "
        "200,000 for K = 1 and prometheus_adapter)",
    )
    parser.add_argument(
        "--samples-per-message",
        type=int,
        nargs="+",
        default=[100, 1],
        metavar="K",
        help="one native pass per K (default: 100 1); K = 1 sends 'value', else 'values'",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=FORMATS,
        default=list(FORMATS),
        metavar="F",
        help=f"one pass per format, in this order ({', '.join(FORMATS)}; default: all)",
    )
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--event-minutes",
        type=float,
        default=10.0,
        help="event time each deployment's messages cover (judgements every 60 s)",
    )
    parser.add_argument("--runs", type=int, default=2, help="runs of each side (best is shown)")
    parser.add_argument("--max-poll-records", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    add_broker_option(parser)
    args = parser.parse_args()
    if min(args.samples_per_message) < 1 or args.deployments < 1 or args.runs < 1:
        parser.error("K, --deployments and --runs must be at least 1")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
