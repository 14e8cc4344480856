"""The samples a report draws: each cohort as the deployment's verdicts compared it.

Recordings are replayed through the daemon's own Router (``report_data``); the samples it
gathers are checked against the metric events of the windows the verdicts name, and
against the sizes the verdicts give (``n_baseline``, ``n_canary``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from coalmine.config.models import DAY, Profile, ReferenceSpec
from coalmine.config.settings import Settings
from coalmine.contract import parse_time
from coalmine.tools.replay import Outcome, read_jsonl, report_data
from coalmine.tools.simulator import simulate, three_deployments
from support.scenario import PROFILE, T0
from tests.unit.test_past import (
    BLUE_GREEN,
    MIGRATION,
    SWITCH,
    blue_green,
    migration_started,
    switch_traffic,
    traffic,
)
from tests.unit.test_same_hours import CHANGE, YESTERDAY

Messages = list[tuple[float, bytes]]
Keep = Callable[[float, dict[str, Any]], bool]


def gathered(
    profile: Profile, deploys: list[tuple[float, dict[str, Any]]], metrics: Messages
) -> tuple[list[dict[str, Any]], list[float], list[float]]:
    """Replay a recording (deploy events first, then metrics in time order) with ``profile``
    as the only one: the verdicts of its one deployment, and its latency samples (baseline,
    canary)."""
    lines = [orjson.dumps(obj) for _, obj in deploys]
    lines += [value for _, value in sorted(metrics, key=lambda m: m[0])]
    names = {name for _, obj in deploys if (name := obj.get("profile"))}
    settings = Settings(profiles=dict.fromkeys({"default", *names}, profile))
    entries = read_jsonl(io.BytesIO(b"\n".join(lines) + b"\n"), settings.topics)
    deployment_id = deploys[0][1]["deployment_id"]
    verdicts, samples, _ = report_data(settings, entries, deployment_id)
    baseline, canary = samples.get("latency_ms", ([], []))
    return verdicts, baseline, canary


def latency(metrics: Messages, keep: Keep) -> list[float]:
    """The latency values of the events ``keep`` accepts (given their time and the event)."""
    out: list[float] = []
    for _, value in metrics:
        for event in orjson.loads(value):
            if event["metric"] == "latency_ms" and keep(parse_time(event["time"]), event):
                out += event["values"]
    return out


def sizes(verdict: dict[str, Any]) -> tuple[int, int]:
    """The latency sample sizes a verdict compared: (baseline, canary)."""
    metric = next(m for m in verdict["metrics"] if m["metric"] == "latency_ms")
    return metric["n_baseline"], metric["n_canary"]


def decided(verdicts: list[dict[str, Any]]) -> float:
    assert verdicts
    assert verdicts[-1]["final"]
    return parse_time(verdicts[-1]["time"])


def same(values: list[float], expected: list[float]) -> bool:
    return sorted(values) == sorted(expected)


# -- a migration: the window before the change, then the change ------------------------------


@pytest.mark.parametrize("factor", [1.0, 1.5])
def test_a_migration_compares_the_window_before_the_change_with_the_events_after_it(factor):
    change = T0 + 1800
    # From 40 minutes before the change: the first 10 minutes lie outside the window.
    metrics = traffic(T0 - 600, change + 900, seed=4, slower_from=change, factor=factor)
    # A migration announces no version: events carrying one count for neither side.
    metrics += traffic(change - 600, change + 300, seed=7, version="v0")
    verdicts, baseline, canary = gathered(MIGRATION, [(change, migration_started(change))], metrics)
    end = decided(verdicts)
    reference = verdicts[-1]["checks"]["reference"]
    assert parse_time(reference["window_start"]) == change - 1800

    def unversioned(when: Callable[[float], bool]) -> Keep:
        return lambda t, e: when(t) and "version" not in e

    assert same(baseline, latency(metrics, unversioned(lambda t: change - 1800 <= t < change)))
    assert same(canary, latency(metrics, unversioned(lambda t: change <= t <= end)))
    assert (len(baseline), len(canary)) == sizes(verdicts[-1])


# -- blue-green: side by side, then green against blue's window before the switch ------------


def switch_deploys(profile: str) -> list[tuple[float, dict[str, Any]]]:
    deploys = blue_green(T0, T0 + 600)
    for _, obj in deploys:
        obj["profile"] = profile
    return deploys


def is_version(name: str) -> Keep:
    return lambda _, event: event.get("version") == name


@pytest.mark.parametrize("factor", [1.0, 1.5])
def test_a_switch_compares_green_after_it_with_blue_of_the_reference_window(factor):
    switch = T0 + 600
    # Blue served before the preview: 20 of the 30 minutes before the switch are before it.
    earlier = traffic(T0 - 1800, T0, seed=9, version="blue")
    draining = traffic(switch, switch + 60, seed=11, version="blue")  # judged by neither
    metrics = earlier + switch_traffic(T0, switch, seed=2, factor=factor) + draining
    verdicts, baseline, canary = gathered(SWITCH, switch_deploys("switch"), metrics)
    end = decided(verdicts)
    blue, green = is_version("blue"), is_version("green")
    assert same(baseline, latency(metrics, lambda t, e: switch - 1800 <= t < switch and blue(t, e)))
    # Green's preview events lie in the window too: they are neither cohort now.
    assert same(canary, latency(metrics, lambda t, e: switch <= t <= end and green(t, e)))
    assert (len(baseline), len(canary)) == sizes(verdicts[-1])


def test_without_a_profile_reference_a_switch_compares_with_blue_of_the_preview_only():
    switch = T0 + 600
    earlier = traffic(T0 - 1800, T0, seed=9, version="blue")  # not kept: no reference
    metrics = earlier + switch_traffic(T0, switch, seed=3)
    verdicts, baseline, canary = gathered(BLUE_GREEN, switch_deploys("default"), metrics)
    end = decided(verdicts)
    assert parse_time(verdicts[-1]["checks"]["reference"]["window_start"]) == switch - 1800
    blue, green = is_version("blue"), is_version("green")
    assert same(baseline, latency(metrics, lambda t, e: T0 <= t < switch and blue(t, e)))
    assert same(canary, latency(metrics, lambda t, e: switch <= t <= end and green(t, e)))
    assert (len(baseline), len(canary)) == sizes(verdicts[-1])


def test_a_preview_decided_before_its_switch_keeps_the_two_versions_side_by_side():
    switch = T0 + 600
    # Green twice as slow from the start: rolled back while previewing, never switched.
    blue = traffic(T0, switch, seed=5, version="blue")
    green = traffic(T0, switch, seed=6, version="green", factor=2.0, slower_from=T0)
    verdicts, baseline, canary = gathered(BLUE_GREEN, switch_deploys("default"), blue + green)
    end = decided(verdicts)
    assert end < switch
    assert all("reference" not in v["checks"] for v in verdicts)
    assert same(baseline, latency(blue, lambda t, _: t <= end))
    assert same(canary, latency(green, lambda t, _: t <= end))
    assert (len(baseline), len(canary)) == sizes(verdicts[-1])


# -- the same hours days earlier ----------------------------------------------------------------


def days_back(days: tuple[int, ...], before: float | None = None, least: float = 300) -> Profile:
    reference = ReferenceSpec(days=days, before=before)
    return YESTERDAY.model_copy(update={"reference": reference, "min_duration": least})


def day_traffic(days: tuple[int, ...]) -> Messages:
    """Each day back: the hour from the change's time of day; today: the hour before the
    change and 16 minutes after it."""
    out: Messages = []
    for d in days:
        start = CHANGE - d * DAY
        out += traffic(start, start + 3600, seed=10 + d)
    return out + traffic(CHANGE - 3600, CHANGE + 960, seed=1)


@pytest.mark.parametrize(
    ("days", "before", "least"),
    [((1,), None, 300), ((1, 2), None, 300), ((1,), 600.0, 300), ((2,), None, 900)],
)
def test_the_same_hours_days_earlier_are_the_baseline_as_far_as_the_verdict_reached(
    days, before, least
):
    metrics = day_traffic(days)
    deploys = [(CHANGE, migration_started(CHANGE))]
    profile = days_back(days, before, least)
    verdicts, baseline, canary = gathered(profile, deploys, metrics)
    end = decided(verdicts)
    # Healthy: promoted at min_duration; at 900 s that is max_duration, where each day's
    # window ends.
    assert end == CHANGE + least
    reference = verdicts[-1]["checks"]["reference"]
    assert reference["days"] == ",".join(map(str, days))
    assert ("window_start" in reference) == (before is not None)
    start = CHANGE - (before or 0.0)

    def in_baseline(t: float, _: dict[str, Any]) -> bool:
        moved = [t + d * DAY for d in days]
        length = profile.max_duration
        return any(CHANGE <= m <= end and m < CHANGE + length for m in moved) or start <= t < CHANGE

    assert same(baseline, latency(metrics, in_baseline))
    assert same(canary, latency(metrics, lambda t, _: CHANGE <= t <= end))
    assert (len(baseline), len(canary)) == sizes(verdicts[-1])


def test_a_switch_against_yesterday_leaves_out_yesterdays_events_of_green():
    switch = T0 + DAY + 600
    deploys = blue_green(T0 + DAY, switch)
    yesterday = traffic(switch - DAY, switch - DAY + 1800, seed=12, version="blue")
    tried = traffic(switch - DAY, switch - DAY + 600, seed=13, version="green")
    untagged = traffic(switch - DAY + 600, switch - DAY + 1200, seed=14)
    today = switch_traffic(T0 + DAY, switch, seed=15)
    metrics = yesterday + tried + untagged + today
    verdicts, baseline, canary = gathered(days_back((1,)), deploys, metrics)
    end = decided(verdicts)
    assert "window_start" not in verdicts[-1]["checks"]["reference"]
    green = is_version("green")

    def in_baseline(t: float, event: dict[str, Any]) -> bool:
        return switch <= t + DAY <= end and not green(t, event)

    assert same(baseline, latency(metrics, in_baseline))
    assert same(canary, latency(metrics, lambda t, e: switch <= t <= end and green(t, e)))
    assert (len(baseline), len(canary)) == sizes(verdicts[-1])


def test_the_published_verdicts_name_the_windows_when_the_stream_lacks_the_deploy_events():
    change = T0 + 1800
    metrics = traffic(T0, change + 900, seed=4, slower_from=change, factor=1.5)
    deploys = [(change, migration_started(change))]
    verdicts, baseline, canary = gathered(MIGRATION, deploys, metrics)
    # Only the metrics: the replay opens no deployment and makes no verdict.
    settings = Settings(profiles={"default": MIGRATION, "migration": MIGRATION})
    lines = b"".join(value + b"\n" for _, value in metrics)
    known = Outcome("orders-expand", service="orders", profile="migration", started=change)
    known.decided_at = parse_time(verdicts[-1]["time"])
    entries = read_jsonl(io.BytesIO(lines), settings.topics)
    replayed, samples, _ = report_data(
        settings, entries, "orders-expand", known=known, published=verdicts
    )
    assert replayed == []
    assert samples["latency_ms"] == (baseline, canary)
    assert (len(baseline), len(canary)) == sizes(verdicts[-1])


# -- a concurrent baseline ----------------------------------------------------------------------


@pytest.mark.parametrize("deployment_id", ["search-v7", "checkout-v42", "payments-v3"])
def test_a_concurrent_baseline_is_each_cohort_while_the_deployment_was_open(deployment_id):
    messages = list(simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3))
    deploys = [(m.time, orjson.loads(m.value)) for m in messages if m.topic == "deployments"]
    metrics = [(m.time, m.value) for m in messages if m.topic == "metrics"]
    deploys = [d for d in deploys if d[1]["deployment_id"] == deployment_id]
    verdicts, baseline, canary = gathered(PROFILE, deploys, metrics)
    end = parse_time(verdicts[-1]["time"])
    started = parse_time(deploys[0][1]["time"])

    def cohort(name: str) -> Keep:
        return lambda t, e: (
            e.get("deployment_id") == deployment_id
            and e.get("cohort") == name
            and started <= t <= end
        )

    assert all("reference" not in v["checks"] for v in verdicts)
    assert same(baseline, latency(metrics, cohort("baseline")))
    assert same(canary, latency(metrics, cohort("canary")))
    assert (len(baseline), len(canary)) == sizes(verdicts[-1])
