"""Changes with no concurrent baseline: blue-green switches and migration phases, seeded.

The issue-18 simulator. Where ``simulator.py`` plays two cohorts side by side, here one
service changes as a whole and the only baseline is its own past, so the traffic has what
makes a time-shifted comparison hard:

- **A daily cycle.** Requests per second
  ``r(t) = base_rate * (1 + swing * cos(2 pi (t - peak_time) / 86400))``: the peak
  (``1 + swing`` times the base) at ``peak_time`` seconds into the UTC day, the trough
  12 h later. (The same curve as ``sin(2 pi (t - peak_time + 21600) / 86400)``.)
- **Latency that follows load.** Lognormal (log-sd ``log_sd``) with median
  ``median(t) = median_ms * (1 + load_factor * (r(t) / base_rate - 1))``: with the
  defaults (swing 0.5, load factor 0.3) 15% slower at the peak, 15% faster at the trough.
  Optionally a per-minute wobble of the median (``wobble``: log-sd of a factor drawn per
  minute of event time, shared by every version), the variation between windows a
  time-shifted baseline has to allow for.
- **Regressions from the change on** (``Regression``): every latency times a factor; the
  slowest ``tail_fraction`` of requests only times a factor (with ``tail_fraction`` above
  0.01 every quantile above ``1 - tail_fraction``, p99 included, moves by exactly that
  factor and the ones below not at all); the error ratio times a factor.

Every ``step`` seconds (10 s) of event time, per version serving, one metric message
(a JSON array, as ``coalmine/tools/simulator.py`` writes them): a distribution event
(``values``: a random sample of the interval's requests, at most ``samples_per_minute``
per minute) and a ratio event (``good`` / ``total``: all the interval's requests). The
events name the service and, for a blue-green switch, the ``version`` serving (blue
before the switch, green after it, and green's mirrored share during the preview); a
migration's carry no version and no cohort: before and after are told apart by time. A
metric event at time ``t`` covers ``(t - step, t]``, so the one stamped exactly at the
change time still describes the traffic before it.

Deploy events: a blue-green deployment is ``started`` (strategy ``blue_green``, phase
``preview``, baseline blue, canary green, weight 0, the ``reference``) ``preview``
seconds before the switch, then a ``step`` with phase ``switched`` and weight 100 at the
switch. A migration phase is one ``started`` (strategy ``migration``, the phase name,
the ``reference``) at the change. History is emitted from ``before`` seconds before the
change, and for every ``days`` entry of the reference only the window the reference
needs: the span judged (the change to ``after`` past it), that many days earlier.

Messages are ``(topic_kind, key, value)`` with ``topic_kind`` ``"deployments"`` or
``"metrics"`` and the service name as key, in event-time order (at equal times deploy
events first). A run depends only on its seed and arguments; options left at their
defaults draw nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import orjson

from coalmine.contract import format_time

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from numpy.typing import ArrayLike, NDArray

DAY = 86400.0
MIDNIGHT = 1_750_032_000.0
"""2025-06-16T00:00:00Z: the day every scenario's change happens on."""

TopicKind = Literal["deployments", "metrics"]
Decision = Literal["promote", "rollback"]
Strategy = Literal["blue_green", "migration"]


class Message(NamedTuple):
    """One message for the bus: which topic, its key (the service) and its value."""

    topic: TopicKind
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Load:
    """The healthy service: its daily cycle, its latency and how metrics are sampled.

    Attributes:
        base_rate: mean requests per second over the day.
        swing: amplitude of the daily cycle (0.5: +-50%); in [0, 1).
        peak_time: seconds into the UTC day at which traffic peaks (14:00 by default).
        median_ms: latency median at the base rate.
        log_sd: log-sd of the lognormal latency.
        load_factor: how the median follows load (``k``; 0: not at all).
        error_ratio: share of bad requests.
        samples_per_minute: cap of the latency samples per minute and version.
        step: seconds of event time per metric message.
        wobble: log-sd of a per-minute factor on the latency median (0: none).
        decimals: latencies are rounded to this many decimals.
    """

    base_rate: float = 100.0
    swing: float = 0.5
    peak_time: float = 14 * 3600.0
    median_ms: float = 100.0
    log_sd: float = 0.5
    load_factor: float = 0.3
    error_ratio: float = 0.001
    samples_per_minute: float = 200.0
    step: float = 10.0
    wobble: float = 0.0
    decimals: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.swing < 1.0:
            raise ValueError("swing must be in [0, 1)")
        positive = ("base_rate", "median_ms", "log_sd", "samples_per_minute", "step")
        bad = [name for name in positive if not getattr(self, name) > 0]
        if bad:
            raise ValueError(f"{', '.join(bad)} must be > 0")
        if not 0.0 <= self.error_ratio <= 1.0:
            raise ValueError("error_ratio must be in [0, 1]")
        if self.wobble < 0 or self.load_factor * self.swing >= 1.0:
            raise ValueError("wobble must be >= 0 and load_factor * swing < 1")

    def rate(self, t: ArrayLike) -> NDArray[np.float64]:
        """Requests per second at event time ``t`` (Unix seconds)."""
        angle = 2.0 * math.pi * (np.asarray(t, dtype=np.float64) - self.peak_time) / DAY
        return self.base_rate * (1.0 + self.swing * np.cos(angle))

    def median(self, t: ArrayLike) -> NDArray[np.float64]:
        """The latency median at event time ``t``, without wobble or regression."""
        return self.median_ms * (1.0 + self.load_factor * (self.rate(t) / self.base_rate - 1.0))


@dataclass(frozen=True, slots=True)
class Regression:
    """How the changed service differs from before the change (all 1: not at all).

    Attributes:
        latency_factor: multiplies every latency.
        tail_factor: multiplies the slowest ``tail_fraction`` of requests.
        tail_fraction: which requests ``tail_factor`` applies to, in (0, 1).
        error_factor: multiplies the error ratio.
    """

    latency_factor: float = 1.0
    tail_factor: float = 1.0
    tail_fraction: float = 0.01
    error_factor: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.tail_fraction < 1.0:
            raise ValueError("tail_fraction must be in (0, 1)")
        if not (self.latency_factor > 0 and self.tail_factor > 0 and self.error_factor >= 0):
            raise ValueError("factors must be > 0 (error_factor >= 0)")

    @property
    def worse(self) -> bool:
        """True when the change makes something worse (what a judge should roll back)."""
        return max(self.latency_factor, self.tail_factor, self.error_factor) > 1.0


@dataclass(frozen=True, slots=True)
class SwitchRun:
    """One simulated change: its messages in event-time order and what a judge should say.

    ``times[i]`` is the event time of ``messages[i]``. ``change_time`` is the switch (blue
    green) or the start of the phase (migration), ``started_time`` the ``started`` event's.
    """

    name: str
    description: str
    expected: Decision
    strategy: Strategy
    deployment_id: str
    service: str
    change_time: float
    started_time: float
    load: Load
    regression: Regression
    reference: Mapping[str, Any]
    latency_metric: str
    ratio_metric: str
    messages: tuple[Message, ...]
    times: tuple[float, ...] = field(repr=False)

    def timed(self) -> Iterator[tuple[float, Message]]:
        """Each message with its event time."""
        return zip(self.times, self.messages, strict=True)


@dataclass(frozen=True, slots=True)
class _Stream:
    """One version's metric messages: at ``times``, seeing ``share`` of the load."""

    version: str | None
    times: NDArray[np.float64]
    share: float
    changed: NDArray[np.bool_]


def blue_green(
    seed: int | np.random.Generator,
    *,
    switch_at: float,
    load: Load | None = None,
    regression: Regression | None = None,
    blue: str = "v1",
    green: str = "v2",
    service: str = "checkout",
    deployment_id: str | None = None,
    preview: float = 600.0,
    mirror_share: float = 0.05,
    before: float = 2400.0,
    after: float = 3600.0,
    reference: Mapping[str, Any] | None = None,
    regression_in_preview: bool = False,
    profile: str | None = None,
    latency_metric: str = "latency_ms",
    ratio_metric: str = "requests",
    name: str = "blue-green",
    description: str = "",
) -> SwitchRun:
    """A blue-green deployment: a preview with mirrored traffic, then the switch.

    Blue serves everything until ``switch_at`` and nothing after it; from ``preview``
    seconds before the switch green also gets a mirrored ``mirror_share`` of the requests
    (tagged with its version), then everything. ``regression`` applies to green from the
    switch on (and to its mirrored share too with ``regression_in_preview``).
    ``reference`` defaults to ``{"before": "30m"}``.
    """
    load = load or Load()
    regression = regression or Regression()
    reference = dict(reference or {"before": "30m"})
    _check_window(load, preview, before, after, reference)
    if not 0.0 < mirror_share <= 1.0:
        raise ValueError("mirror_share must be in (0, 1]")
    rng = np.random.default_rng(seed)
    step = load.step
    deployment_id = deployment_id or f"{service}-{green}"
    grid = _grid(switch_at, before, after, step)
    before_switch = grid <= switch_at
    started_at = switch_at - math.floor(preview / step + 1e-9) * step
    preview_grid = grid[before_switch & (grid - step >= started_at - 1e-6)]
    streams = [
        *(
            _Stream(blue, window, 1.0, np.zeros(len(window), dtype=bool))
            for window in _past_windows(switch_at, after, step, reference)
        ),
        _Stream(blue, grid[before_switch], 1.0, np.zeros(int(before_switch.sum()), dtype=bool)),
        _Stream(
            green,
            preview_grid,
            mirror_share,
            np.full(len(preview_grid), regression_in_preview),
        ),
        _Stream(green, grid[~before_switch], 1.0, np.ones(int((~before_switch).sum()), bool)),
    ]
    common = {"deployment_id": deployment_id, "service": service}
    started = {
        "event": "started",
        **common,
        "time": format_time(started_at),
        "strategy": "blue_green",
        "phase": "preview",
        **({"profile": profile} if profile is not None else {}),
        "baseline": {"version": blue},
        "canary": {"version": green},
        "traffic_weight": 0,
        "reference": reference,
    }
    switched = {
        "event": "step",
        **common,
        "time": format_time(switch_at),
        "strategy": "blue_green",
        "phase": "switched",
        "traffic_weight": 100,
    }
    deploys = [(started_at, started), (switch_at, switched)]
    messages, times = _assemble(
        rng, load, regression, streams, deploys, service, (latency_metric, ratio_metric)
    )
    return SwitchRun(
        name=name,
        description=description or f"blue-green switch {blue} -> {green}",
        expected="rollback" if regression.worse else "promote",
        strategy="blue_green",
        deployment_id=deployment_id,
        service=service,
        change_time=switch_at,
        started_time=started_at,
        load=load,
        regression=regression,
        reference=reference,
        latency_metric=latency_metric,
        ratio_metric=ratio_metric,
        messages=messages,
        times=times,
    )


def migration(
    seed: int | np.random.Generator,
    *,
    start_at: float,
    load: Load | None = None,
    regression: Regression | None = None,
    service: str = "orders-db",
    phase: str = "expand",
    deployment_id: str | None = None,
    before: float = 2400.0,
    after: float = 3600.0,
    reference: Mapping[str, Any] | None = None,
    profile: str | None = None,
    latency_metric: str = "query_ms",
    ratio_metric: str = "requests",
    name: str = "migration",
    description: str = "",
) -> SwitchRun:
    """One migration phase starting at ``start_at``: the whole service changes at once.

    Metric events carry no version and no cohort. ``regression`` applies from the start
    of the phase on. ``reference`` defaults to ``{"before": "30m"}``.
    """
    load = load or Load()
    regression = regression or Regression()
    reference = dict(reference or {"before": "30m"})
    _check_window(load, 0.0, before, after, reference)
    rng = np.random.default_rng(seed)
    deployment_id = deployment_id or f"{service}-{phase}"
    grid = _grid(start_at, before, after, load.step)
    streams = [
        *(
            _Stream(None, window, 1.0, np.zeros(len(window), dtype=bool))
            for window in _past_windows(start_at, after, load.step, reference)
        ),
        _Stream(None, grid, 1.0, grid > start_at),
    ]
    started = {
        "event": "started",
        "deployment_id": deployment_id,
        "service": service,
        "time": format_time(start_at),
        "strategy": "migration",
        "phase": phase,
        **({"profile": profile} if profile is not None else {}),
        "reference": reference,
    }
    messages, times = _assemble(
        rng,
        load,
        regression,
        streams,
        [(start_at, started)],
        service,
        (latency_metric, ratio_metric),
    )
    return SwitchRun(
        name=name,
        description=description or f"migration phase {phase}",
        expected="rollback" if regression.worse else "promote",
        strategy="migration",
        deployment_id=deployment_id,
        service=service,
        change_time=start_at,
        started_time=start_at,
        load=load,
        regression=regression,
        reference=reference,
        latency_metric=latency_metric,
        ratio_metric=ratio_metric,
        messages=messages,
        times=times,
    )


def duration_seconds(text: str) -> float:
    """Seconds of a reference duration such as ``"30m"``, ``"90s"``, ``"1h"`` or ``"1d"``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    unit = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}[match.group(2)]
    return float(match.group(1)) * unit


def _check_window(
    load: Load, preview: float, before: float, after: float, reference: Mapping[str, Any]
) -> None:
    if after < load.step or before < load.step:
        raise ValueError("before and after must be at least one step")
    if preview > before:
        raise ValueError("the preview must start inside the history (preview <= before)")
    if "before" in reference and duration_seconds(reference["before"]) > before:
        raise ValueError(f"history of {before:g} s is shorter than the reference window")
    days = reference.get("days", [])
    if not all(isinstance(d, int) and d >= 1 for d in days):
        raise ValueError("reference days must be whole days >= 1")


def _grid(change: float, before: float, after: float, step: float) -> NDArray[np.float64]:
    """Metric times covering ``(change - before, change + after]``, one on ``change``."""
    n_before = math.floor(before / step + 1e-9)
    n_after = math.floor(after / step + 1e-9)
    return change + np.arange(-n_before + 1, n_after + 1, dtype=np.float64) * step


def _past_windows(
    change: float, after: float, step: float, reference: Mapping[str, Any]
) -> list[NDArray[np.float64]]:
    """Metric times of the span judged, ``days`` earlier, oldest first."""
    span = np.arange(1, math.floor(after / step + 1e-9) + 1, dtype=np.float64) * step
    return [change - d * DAY + span for d in sorted(set(reference.get("days", [])), reverse=True)]


def _assemble(
    rng: np.random.Generator,
    load: Load,
    regression: Regression,
    streams: list[_Stream],
    deploys: list[tuple[float, dict[str, Any]]],
    service: str,
    metrics: tuple[str, str],
) -> tuple[tuple[Message, ...], tuple[float, ...]]:
    """Every message of a run, in event-time order (deploy events first at equal times)."""
    key = service.encode()
    wobble = _wobble(rng, load, streams)
    by_time: dict[float, list[dict[str, Any]]] = {}
    for stream in streams:
        for time, events in _stream_events(rng, load, regression, stream, wobble, service, metrics):
            by_time.setdefault(time, []).extend(events)
    timed: list[tuple[float, int, Message]] = [
        (time, 0, Message("deployments", key, orjson.dumps(event))) for time, event in deploys
    ]
    timed += [
        (time, 1, Message("metrics", key, orjson.dumps(events))) for time, events in by_time.items()
    ]
    timed.sort(key=lambda item: (item[0], item[1]))
    return tuple(m for _, _, m in timed), tuple(t for t, _, _ in timed)


def _wobble(
    rng: np.random.Generator, load: Load, streams: list[_Stream]
) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    """The per-minute median factor as a function of interval midpoints (1 without wobble)."""
    if load.wobble == 0.0:
        return np.ones_like
    mids = np.concatenate([s.times for s in streams]) - load.step / 2.0
    minutes = np.unique(np.floor(mids / 60.0))
    factors = np.exp(load.wobble * rng.standard_normal(len(minutes)))

    def factor(mid: NDArray[np.float64]) -> NDArray[np.float64]:
        return factors[np.searchsorted(minutes, np.floor(mid / 60.0))]

    return factor


def _stream_events(
    rng: np.random.Generator,
    load: Load,
    regression: Regression,
    stream: _Stream,
    wobble: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    service: str,
    metrics: tuple[str, str],
) -> Iterator[tuple[float, list[dict[str, Any]]]]:
    """Per metric time: the stream's distribution event (if it sampled any) and ratio event."""
    totals, bad, counts, values = _draw(rng, load, regression, stream, wobble)
    latency_metric, ratio_metric = metrics
    tag = {"version": stream.version} if stream.version is not None else {}
    ends = np.cumsum(counts)
    starts = ends - counts
    for k, time in enumerate(stream.times.tolist()):
        stamp = format_time(time)
        events = []
        if counts[k]:
            samples = values[starts[k] : ends[k]].tolist()
            events.append(
                {
                    "service": service,
                    **tag,
                    "metric": latency_metric,
                    "time": stamp,
                    "values": samples,
                }
            )
        total = int(totals[k])
        events.append(
            {
                "service": service,
                **tag,
                "metric": ratio_metric,
                "time": stamp,
                "good": total - int(bad[k]),
                "total": total,
            }
        )
        yield time, events


def _draw(
    rng: np.random.Generator,
    load: Load,
    regression: Regression,
    stream: _Stream,
    wobble: Callable[[NDArray[np.float64]], NDArray[np.float64]],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Requests, bad requests, sample counts and the samples of one stream's intervals."""
    step = load.step
    mid = stream.times - step / 2.0
    changed = stream.changed
    totals = rng.poisson(load.rate(mid) * stream.share * step)
    p_bad = np.where(
        changed, min(1.0, load.error_ratio * regression.error_factor), load.error_ratio
    )
    bad = rng.binomial(totals, p_bad)
    cap = load.samples_per_minute * step / 60.0
    whole = math.floor(cap)
    counts = np.full(len(mid), whole, dtype=np.int64)
    if cap > whole:
        counts += rng.random(len(mid)) < cap - whole
    counts = np.minimum(counts, totals)
    z = rng.standard_normal(int(counts.sum()))
    median = np.repeat(load.median(mid) * wobble(mid), counts)
    changed_sample = np.repeat(changed, counts)
    log_factor = np.where(changed_sample, math.log(regression.latency_factor), 0.0)
    if regression.tail_factor != 1.0:
        threshold = NormalDist().inv_cdf(1.0 - regression.tail_fraction)
        slow = changed_sample & (z > threshold)
        log_factor += np.where(slow, math.log(regression.tail_factor), 0.0)
    values = np.round(median * np.exp(load.log_sd * z + log_factor), load.decimals)
    return totals, bad, counts, values


# --- the target scenarios -----------------------------------------------------


def _time_of_day(rng: np.random.Generator, step: float) -> float:
    """A change time on the metric grid, uniform over the scenario day."""
    return MIDNIGHT + float(rng.integers(0, int(DAY / step))) * step


def _random_switch(seed: int, load: Load, **kwargs: Any) -> SwitchRun:
    """A blue-green switch at a seeded random time of day (see :func:`blue_green`)."""
    rng = np.random.default_rng(seed)
    return blue_green(rng, switch_at=_time_of_day(rng, load.step), load=load, **kwargs)


def _random_phase(seed: int, load: Load, **kwargs: Any) -> SwitchRun:
    """A migration phase at a seeded random time of day (see :func:`migration`)."""
    rng = np.random.default_rng(seed)
    return migration(rng, start_at=_time_of_day(rng, load.step), load=load, **kwargs)


def healthy_switch(seed: int) -> SwitchRun:
    """Healthy blue-green switch at a random time of day; reference: the previous 30 min."""
    return _random_switch(
        seed,
        Load(),
        reference={"before": "30m"},
        name="healthy-switch",
        description="healthy blue-green switch, reference = previous 30 min",
    )


def healthy_switch_at_peak(seed: int, reference: str = "days") -> SwitchRun:
    """Healthy switch 30 min before the daily peak, judged across it; reference: yesterday.

    The span judged (the hour from the switch) has the peak in its middle; the day before
    is emitted for that hour only. ``reference="before"``: the 30 min before the switch
    instead, where traffic and latency are lower than across the peak.
    """
    load = Load()
    yesterday = reference == "days"
    return blue_green(
        seed,
        switch_at=MIDNIGHT + load.peak_time - 1800.0,
        load=load,
        reference={"days": [1]} if yesterday else {"before": "30m"},
        name="healthy-switch-peak" if yesterday else "healthy-switch-peak-before",
        description="healthy switch across the daily peak, reference = "
        + ("same hours yesterday" if yesterday else "previous 30 min"),
    )


def healthy_switch_at_peak_before(seed: int) -> SwitchRun:
    """The same switch judged against the 30 min before it: reported beside, for contrast."""
    return healthy_switch_at_peak(seed, reference="before")


def green_errors_5x(seed: int) -> SwitchRun:
    """Green fails 5x as many requests after the switch (0.1% -> 0.5%, 100 req/s)."""
    load = Load(base_rate=100.0, error_ratio=0.001)
    return _random_switch(
        seed,
        load,
        regression=Regression(error_factor=5.0),
        name="green-errors-5x",
        description="green with 5x errors after the switch (0.1% base, 100 req/s)",
    )


WOBBLE = 0.1
"""Log-sd of the per-minute latency factor of the ``-wobble`` scenarios: each minute's
median 10% off at random, on both sides of the change (a noisy neighbour, cache refills)."""


def green_latency_20(seed: int, wobble: float = 0.0) -> SwitchRun:
    """Every green request 20% slower after the switch; 200 latency samples per minute.

    ``wobble``: the latency median off at random from minute to minute (log-sd).
    """
    suffix = "-wobble" if wobble else ""
    return _random_switch(
        seed,
        Load(samples_per_minute=200.0, wobble=wobble),
        regression=Regression(latency_factor=1.2),
        name=f"green-latency-20{suffix}",
        description="green with +20% latency after the switch, 200 samples/min"
        + (f", latency median wobbling {wobble:.0%} per minute" if wobble else ""),
    )


def green_latency_20_wobble(seed: int) -> SwitchRun:
    """Green 20% slower, latency wobbling from minute to minute: reported, no target."""
    return green_latency_20(seed, wobble=WOBBLE)


def healthy_switch_wobble(seed: int) -> SwitchRun:
    """A healthy switch whose latency wobbles from minute to minute: reported, no target."""
    return _random_switch(
        seed,
        Load(wobble=WOBBLE),
        reference={"before": "30m"},
        name="healthy-switch-wobble",
        description="healthy switch, latency median wobbling 10% per minute",
    )


QUERY_SAMPLES_PER_MINUTE = 600.0
"""Query latencies a migration's metrics carry per minute: one query in ten at 100 per second."""


def migration_p99_30(seed: int, samples_per_minute: float = QUERY_SAMPLES_PER_MINUTE) -> SwitchRun:
    """A migration phase making the slowest 2% of queries 30% slower: p99 +30%, p95 unchanged.

    Queries: median 20 ms at the base rate, ``samples_per_minute`` of them sampled;
    reference: the 30 min before the phase.
    """
    load = Load(median_ms=20.0, samples_per_minute=samples_per_minute)
    sparse = samples_per_minute != QUERY_SAMPLES_PER_MINUTE
    return _random_phase(
        seed,
        load,
        regression=Regression(tail_factor=1.3, tail_fraction=0.02),
        phase="backfill",
        name="migration-p99-30-sparse" if sparse else "migration-p99-30",
        description=f"migration phase raising p99 query latency by 30%,"
        f" {samples_per_minute:g} samples/min",
    )


def migration_p99_30_sparse(seed: int) -> SwitchRun:
    """The same phase with a third of the samples (200 a minute): harder, reported only."""
    return migration_p99_30(seed, samples_per_minute=200.0)


def healthy_migration(seed: int) -> SwitchRun:
    """A migration phase that changes nothing, at a random time of day: the control."""
    load = Load(median_ms=20.0, samples_per_minute=QUERY_SAMPLES_PER_MINUTE)
    return _random_phase(
        seed,
        load,
        phase="expand",
        name="healthy-migration",
        description="healthy migration phase, reference = previous 30 min",
    )


SCENARIOS: dict[str, Callable[[int], SwitchRun]] = {
    "healthy-switch": healthy_switch,
    "healthy-switch-peak": healthy_switch_at_peak,
    "healthy-switch-peak-before": healthy_switch_at_peak_before,
    "green-errors-5x": green_errors_5x,
    "green-latency-20": green_latency_20,
    "migration-p99-30": migration_p99_30,
    "migration-p99-30-sparse": migration_p99_30_sparse,
    "healthy-migration": healthy_migration,
    "healthy-switch-wobble": healthy_switch_wobble,
    "green-latency-20-wobble": green_latency_20_wobble,
}
"""The issue's target scenarios by name, each a function of the seed."""
