"""Stepped rollouts: a step measured healthy is told to advance; the last one is promoted."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from coalmine._exceptions import ContractError
from coalmine.analyzers.result import MetricResult
from coalmine.bus.base import Record
from coalmine.config.models import LimitSettings, MetricSpec, Profile, TopicsSettings
from coalmine.contract import decode_deploy_event, encode_deploy_event, encode_verdict, format_time
from coalmine.daemon.router import Router
from coalmine.judge import Step, judge
from support.scenario import T0

TOPICS = TopicsSettings()
PROFILE = Profile(
    interval=60,
    min_duration=600,
    max_duration=3600,
    metrics=(
        MetricSpec(name="latency_ms"),
        MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True),
    ),
)
PLAN = [5, 25, 50, 100]


def started(**extra: object) -> dict[str, object]:
    return {
        "event": "started",
        "deployment_id": "web-v2",
        "service": "web",
        "time": format_time(T0),
        "baseline": {"version": "v1"},
        "canary": {"version": "v2"},
        "traffic_weight": 5,
        **extra,
    }


# -- the contract ----------------------------------------------------------------------------


def test_a_started_event_may_plan_its_steps() -> None:
    event = decode_deploy_event(orjson.dumps(started(steps=PLAN)))
    assert event.steps == (5.0, 25.0, 50.0, 100.0)
    assert decode_deploy_event(orjson.dumps(started())).steps == ()
    value = encode_deploy_event(
        "started", "web-v2", "web", at=T0, baseline="v1", canary="v2", steps=(10, 100)
    )
    assert orjson.loads(value)["steps"] == [10, 100]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "non-empty list"),
        ("5,25", "non-empty list"),
        ([5, "25"], "numbers"),
        ([5, True], "numbers"),
        ([0, 50], "above 0"),
        ([5, 101], "at most 100"),
        ([25, 5], "must increase"),
        ([5, 5, 100], "must increase"),
    ],
)
def test_planned_steps_must_be_increasing_weights(steps: object, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        decode_deploy_event(orjson.dumps(started(steps=steps)))


# -- the judge -------------------------------------------------------------------------------


def _healthy() -> list[MetricResult]:
    return [
        MetricResult("latency_ms", "test", "pass", False, True, 100, 100, "latency_ms ok"),
        MetricResult("requests", "test", "pass", True, True, 100, 100, "requests ok"),
    ]


def test_a_healthy_step_advances_once_before_min_duration_and_then_waits() -> None:
    step = Step(5.0, 25.0, 60.0, advanced=False)
    first = judge(PROFILE, _healthy(), elapsed=60, at_end=False, step=step)
    assert (first.decision, first.final) == ("advance", False)
    assert first.summary.startswith("5% healthy, advance to 25%")
    again = judge(
        PROFILE, _healthy(), elapsed=120, at_end=False, step=step.__class__(5.0, 25.0, 120.0, True)
    )
    assert (again.decision, again.summary) == ("continue", "advanced at 5%: waiting for 25%")
    # Without a plan (or at its last step) the same look waits for min_duration.
    assert judge(PROFILE, _healthy(), elapsed=60, at_end=False).decision == "continue"
    assert judge(PROFILE, _healthy(), elapsed=600, at_end=False).decision == "promote"


def test_a_step_waits_for_min_step_duration_and_failures_still_roll_back() -> None:
    profile = PROFILE.model_copy(update={"min_step_duration": 300.0})
    early = judge(
        profile, _healthy(), elapsed=60, at_end=False, step=Step(25.0, 50.0, 120.0, False)
    )
    assert early.decision == "continue"
    assert "min_step_duration 5m" in early.summary
    failing = [*_healthy()[:1], MetricResult("requests", "t", "fail", True, True, 1, 1, "bad")]
    rolled = judge(profile, failing, elapsed=60, at_end=False, step=Step(25.0, 50.0, 400.0, False))
    assert (rolled.decision, rolled.final) == ("rollback", True)


def test_a_rollout_that_runs_out_of_time_below_its_last_step_is_inconclusive() -> None:
    end = judge(PROFILE, _healthy(), elapsed=3600, at_end=True, step=Step(50.0, 100.0, 9.0, True))
    assert (end.decision, end.final) == ("inconclusive", True)


# -- through the router, with a pipeline that steps on the verdicts ---------------------------


def _messages(t: float, weight: float, rng: np.random.Generator, slower: float) -> list[bytes]:
    """Ten seconds of both versions' traffic, 200 requests/s split by ``weight``."""
    out = []
    for version, share, factor in (("v1", 100 - weight, 1.0), ("v2", weight, slower)):
        total = int(rng.poisson(2000 * share / 100))
        samples = max(5, total // 20)
        values = np.round(rng.lognormal(4.6, 0.3, samples) * factor, 2).tolist()
        bad = int(rng.binomial(total, 0.0005))
        base = {"service": "web", "version": version, "time": format_time(t)}
        out.append(
            orjson.dumps(
                [
                    base | {"metric": "latency_ms", "values": values},
                    base | {"metric": "requests", "good": total - bad, "total": total},
                ]
            )
        )
    return out


def _roll_out(slower: float = 1.0, seed: int = 3) -> list[dict]:
    """Feed a stepped rollout; on each ``advance`` the pipeline raises the weight at once."""
    rng = np.random.default_rng(seed)
    router = Router({"default": PROFILE}, TOPICS, LimitSettings())
    offsets = {"d": 0, "m": 0}

    def deploy(obj: dict[str, object]) -> list[Record]:
        offsets["d"] += 1
        return [Record(TOPICS.deployments, orjson.dumps(obj), b"web", offset=offsets["d"])]

    verdicts: list[dict] = []
    pending = deploy(started(steps=PLAN))
    weight = 5.0
    for t in np.arange(T0 + 10, T0 + 3600 + 70, 10.0):
        records = pending + [
            Record(TOPICS.metrics, m, b"web", offset=offsets["m"] + i)
            for i, m in enumerate(_messages(float(t), weight, rng, slower))
        ]
        offsets["m"] += 2
        pending = []
        for verdict in router.handle(records, now=0.0).verdicts:
            verdicts.append(orjson.loads(encode_verdict(verdict)))
            if verdict.decision == "advance":
                weight = next(w for w in PLAN if w > weight)
                step = {
                    "event": "step",
                    "deployment_id": "web-v2",
                    "service": "web",
                    "time": format_time(float(t)),
                    "traffic_weight": weight,
                }
                pending = deploy(step)
        if verdicts and verdicts[-1]["final"]:
            break
    return verdicts


def test_a_healthy_rollout_advances_at_each_step_and_is_promoted_at_the_last() -> None:
    verdicts = _roll_out()
    advances = [v for v in verdicts if v["decision"] == "advance"]
    assert [v["traffic_weight"] for v in advances] == [5, 25, 50]
    assert all(not v["final"] for v in advances)
    final = verdicts[-1]
    assert (final["decision"], final["final"], final["traffic_weight"]) == ("promote", True, 100)
    # The sample-ratio check compares counts since the start with the weight: only while
    # the first weight is the only one there was.
    stepped = verdicts.index(advances[0]) + 1
    assert all("sample_ratio" in v["checks"] for v in verdicts[1:stepped])
    assert all("sample_ratio" not in v["checks"] for v in verdicts[stepped + 1 :])
    # Each step advanced at its first healthy look: no look at a step said "continue"
    # while its metrics were already measured healthy and not yet advanced.
    for v in verdicts:
        if v["decision"] == "continue" and all(m["measured"] for m in v["metrics"]):
            assert v["summary"].startswith("advanced at") or "min_duration" in v["summary"]


def test_a_slower_canary_is_rolled_back_before_it_reaches_the_last_step() -> None:
    verdicts = _roll_out(slower=1.5)
    assert verdicts[-1]["decision"] == "rollback"
    assert verdicts[-1]["traffic_weight"] < 100
