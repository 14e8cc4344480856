"""Blue-green switches and migration phases fed through the real router, one run at a time.

What ``benchmarks/switch_quality.py`` measures and ``tests/simulation/test_switch_quality.py``
checks: a scenario of :mod:`support.quality.switches` for one seed, fed as a live daemon
reads it (one fetch per event time) or as a replay does (deploy events first), and the
final verdict it ends in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

from coalmine.bus.base import Record
from coalmine.config.models import (
    LimitSettings,
    MetricSpec,
    Profile,
    ReferenceSpec,
    TopicsSettings,
)
from coalmine.contract import encode_verdict, parse_time
from coalmine.daemon.router import Router
from support.quality.switches import SCENARIOS, SwitchRun

TOPICS = TopicsSettings()
REPLAY_FETCH = 500
REQUESTS = MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True)
TIMING = {"interval": 60, "min_duration": 600, "max_duration": 1800, "alpha": 0.05}
BLUE_GREEN = Profile(
    **TIMING,
    metrics=(MetricSpec(name="latency_ms"), REQUESTS),
    reference=ReferenceSpec(before=1800),
)
MIGRATION = Profile(
    **TIMING,
    metrics=(
        MetricSpec(name="query_ms", effect="shift", quantiles=(0.99,), tail_allowed_change=0.1),
        REQUESTS,
    ),
    reference=ReferenceSpec(before=1800),
)
BLUE_GREEN_YESTERDAY = BLUE_GREEN.model_copy(update={"reference": ReferenceSpec(days=(1,))})


@dataclass(frozen=True, slots=True)
class Outcome:
    """One run: the final decision, when (seconds after the change), what its summary named."""

    scenario: str
    decision: str
    after_change: float
    named: bool
    reference_minutes: float


def records(run: SwitchRun) -> list[tuple[float, Record]]:
    """The run's messages as records of the two topics, each topic's offsets from 0."""
    offsets = {"deployments": 0, "metrics": 0}
    out = []
    for t, message in run.timed():
        topic = TOPICS.deployments if message.topic == "deployments" else TOPICS.metrics
        out.append((t, Record(topic, message.value, message.key, offset=offsets[message.topic])))
        offsets[message.topic] += 1
    return out


def live_fetches(timed: list[tuple[float, Record]]) -> list[tuple[float, list[Record]]]:
    """What a live daemon fetches: every record of one event time together."""
    fetches: list[tuple[float, list[Record]]] = []
    for t, record in timed:
        if fetches and fetches[-1][0] == t:
            fetches[-1][1].append(record)
        else:
            fetches.append((t, [record]))
    return fetches


def replay_fetches(timed: list[tuple[float, Record]]) -> list[tuple[float, list[Record]]]:
    """What a replay fetches: the deployments topic to its end, then metrics by 500."""
    deploys = [r for _, r in timed if r.topic == TOPICS.deployments]
    metrics = [r for _, r in timed if r.topic == TOPICS.metrics]
    now = timed[-1][0] + 86400.0
    chunks = [metrics[i : i + REPLAY_FETCH] for i in range(0, len(metrics), REPLAY_FETCH)]
    return [(now, deploys)] + [(now, chunk) for chunk in chunks]


def judge(
    run: SwitchRun, fetches: list[tuple[float, list[Record]]], *, to_end: bool = False
) -> list[bytes]:
    """Feed the fetches to a fresh Router; the encoded verdicts (up to the final one)."""
    router = Router({"default": profile_of(run)}, TOPICS, LimitSettings())
    out: list[bytes] = []
    for now, batch in fetches:
        effects = router.handle(batch, now=now)
        if effects.dead_letters:
            raise RuntimeError(f"{run.name}: dead letter {effects.dead_letters[0].headers}")
        out += [encode_verdict(v) for v in effects.verdicts]
        if not to_end and any(v.final for v in effects.verdicts):
            break
    return out


def profile_of(run: SwitchRun) -> Profile:
    """The profile a run is judged with: its reference in the started event, as configured."""
    if run.strategy == "migration":
        return MIGRATION
    return BLUE_GREEN_YESTERDAY if run.reference.get("days") else BLUE_GREEN


def failing_name(run: SwitchRun) -> str:
    """What a rollback's summary should name: the metric (and quantile) made worse."""
    if run.regression.tail_factor != 1.0:
        return f"{run.latency_metric} p99"
    if run.regression.error_factor != 1.0:
        return run.ratio_metric
    return run.latency_metric


def one_run(task: tuple[str, int]) -> Outcome:
    """Judge one seeded run live; its final verdict."""
    name, seed = task
    run = SCENARIOS[name](seed)
    verdicts = [orjson.loads(v) for v in judge(run, live_fetches(records(run)))]
    final = next((v for v in verdicts if v["final"]), None)
    if final is None:
        return Outcome(name, "no final", math.inf, False, math.nan)
    after = parse_time(final["time"]) - run.change_time
    named = final["decision"] == "rollback" and failing_name(run) in final["summary"]
    latency = next(m for m in final["metrics"] if m["metric"] == run.latency_metric)
    covered = latency["n_baseline"] / run.load.samples_per_minute
    return Outcome(name, final["decision"], after, named, covered)


def replay_mismatch(task: tuple[str, int]) -> bool:
    """Do the live and the replayed feeds of one run give different verdict bytes?"""
    name, seed = task
    run = SCENARIOS[name](seed)
    timed = records(run)
    live = judge(run, live_fetches(timed), to_end=True)
    return live != judge(run, replay_fetches(timed), to_end=True)
