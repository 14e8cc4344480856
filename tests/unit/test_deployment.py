import math

import numpy as np
import pytest

from coalmine.analyzers.burn_rate import RatioAnalyzer
from coalmine.config.models import MetricSpec, Profile
from coalmine.contract import DeployEvent, MetricEvent
from coalmine.daemon.deployment import Deployment
from coalmine.daemon.observations import AnalysisLimits
from support.scenario import PROFILE, T0


def started(profile_name: str = "default") -> DeployEvent:
    return DeployEvent(
        event="started",
        deployment_id="checkout-v42",
        service="checkout",
        time=T0,
        profile=profile_name,
        baseline_version="v41",
        canary_version="v42",
    )


def latency(cohort: str, time: float, values: np.ndarray) -> MetricEvent:
    return MetricEvent(
        service="checkout", metric="latency_ms", time=time, values=values, cohort=cohort
    )


def requests(cohort: str, time: float, good: int, total: int) -> MetricEvent:
    return MetricEvent(
        service="checkout",
        metric="requests",
        time=time,
        good=good,
        total=total,
        is_ratio=True,
        cohort=cohort,
    )


def feed(
    deployment: Deployment,
    *,
    until: float,
    latency_factor: float = 1.0,
    canary_errors: float = 0.0002,
    errors_from: float = 0.0,
    samples: int = 50,
    requests_per_step: int = 2000,
    seed: int = 1,
):
    """Every 10 s of event time: latency samples and request counts for both cohorts."""
    rng = np.random.default_rng(seed)
    verdicts = []
    t = 10.0
    while t <= until and deployment.is_open:
        now = T0 + t
        for cohort in ("baseline", "canary"):
            factor = latency_factor if cohort == "canary" else 1.0
            values = np.round(100 * factor * rng.lognormal(0, 0.5, samples), 1)
            verdicts += deployment.observe(latency(cohort, now, values), cohort)
            ratio = canary_errors if cohort == "canary" and t > errors_from else 0.0002
            bad = int(rng.binomial(requests_per_step, ratio))
            verdicts += deployment.observe(
                requests(cohort, now, requests_per_step - bad, requests_per_step), cohort
            )
        t += 10.0
    return verdicts


def test_judgements_fall_due_on_event_time_with_sequential_ids():
    deployment = Deployment(started(), PROFILE)
    verdicts = feed(deployment, until=130)
    # Samples up to t=130 pass the boundaries at 60 and 120 (a boundary is judged when a
    # later event arrives), so two interim judgements, both before min_duration.
    assert [v.verdict_id for v in verdicts] == ["checkout-v42/1", "checkout-v42/2"]
    assert [v.decision for v in verdicts] == ["continue", "continue"]
    assert [v.window.end - T0 for v in verdicts] == [60.0, 120.0]
    assert all(not v.final for v in verdicts)
    assert verdicts[0].config_digest == PROFILE.digest()


def test_healthy_canary_is_promoted_at_min_duration_not_before():
    deployment = Deployment(started(), PROFILE)
    verdicts = feed(deployment, until=900)
    final = verdicts[-1]
    assert final.decision == "promote", final.summary
    assert final.final
    assert final.time - T0 == 300.0
    assert all(v.decision == "continue" for v in verdicts[:-1])
    assert not deployment.is_open
    # Nothing after the final verdict.
    assert feed(deployment, until=900) == []


def test_latency_regression_rolls_back():
    deployment = Deployment(started(), PROFILE)
    verdicts = feed(deployment, until=900, latency_factor=1.5)
    final = verdicts[-1]
    assert final.decision == "rollback"
    assert final.time - T0 <= 120.0
    latency_result = next(m for m in final.metrics if m.metric == "latency_ms")
    assert latency_result.outcome == "fail"
    assert latency_result.detail["relative_change"] > 0.3
    assert "latency_ms" in final.summary


def test_critical_failure_rolls_back_on_the_message_that_decided_it():
    deployment = Deployment(started(), PROFILE)
    verdicts = feed(deployment, until=900, canary_errors=0.05, errors_from=185.0)
    final = verdicts[-1]
    assert final.decision == "rollback"
    # Errors start after t=185; the rollback comes between interval boundaries, on the
    # first messages carrying them (event time 190 s), not at the 240 s judgement.
    assert 185.0 < final.time - T0 < 240.0
    assert final.verdict_id == "checkout-v42/4"
    assert "critical" in final.summary
    requests_result = next(m for m in final.metrics if m.metric == "requests")
    assert requests_result.outcome == "fail"
    assert requests_result.critical


def test_critical_ratio_is_checked_between_judgements_only_on_canary_bad_events(monkeypatch):
    deployment = Deployment(started(), PROFILE)
    checked: list[float] = []
    check = deployment._check_critical

    def counting(name, time):
        checked.append(time - T0)
        return check(name, time)

    monkeypatch.setattr(deployment, "_check_critical", counting)
    for t, bad in ((10.0, 0), (20.0, 3), (30.0, 0), (40.0, 1)):
        deployment.observe(requests("baseline", T0 + t, 1990, 2000), "baseline")
        deployment.observe(requests("canary", T0 + t, 2000 - bad, 2000), "canary")
    assert checked == [20.0, 40.0]


class _CheckedAlways(RatioAnalyzer):
    """Asks for a critical check on every canary message."""

    def observe(self, time, canary, good, total, stored):
        return super().observe(time, canary, good, total, stored) or canary


@pytest.mark.parametrize(("canary_errors", "decision"), [(0.0004, "promote"), (0.004, "rollback")])
def test_skipping_checks_without_bad_events_keeps_the_evidence_and_verdicts(
    monkeypatch, canary_errors, decision
):
    # Against a deployment that checks on every canary message (as before): the same
    # rate-ratio e-process (its batches closed at the same messages), guard maxima and
    # verdicts. Most canary messages carry no bad event (500 requests a message).
    checked_always = Deployment(started(), PROFILE)
    monkeypatch.setitem(
        checked_always._analyzers, "requests", _CheckedAlways(PROFILE.metric("requests"))
    )
    skipping = Deployment(started(), PROFILE)
    runs = [
        feed(d, until=900, canary_errors=canary_errors, requests_per_step=500, seed=5)
        for d in (checked_always, skipping)
    ]
    assert [v.to_dict() for v in runs[0]] == [v.to_dict() for v in runs[1]]
    assert runs[1][-1].decision == decision
    spec = PROFILE.metric("requests")
    one, other = (d._analyzers[spec.name].evidence for d in (checked_always, skipping))
    assert one.rate.log_e == other.rate.log_e
    assert one.rate.max_log_e == other.rate.max_log_e
    assert one.guard_max_log_e == other.guard_max_log_e


def test_too_little_traffic_ends_inconclusive_at_max_duration():
    deployment = Deployment(started(), PROFILE)
    verdicts = feed(deployment, until=960, samples=2, requests_per_step=20)
    final = verdicts[-1]
    assert final.decision == "inconclusive"
    assert final.final
    assert final.time - T0 == 900.0
    assert final.verdict_id == "checkout-v42/15"


def test_same_events_same_verdicts():
    first = [v.to_dict() for v in feed(Deployment(started(), PROFILE), until=900, seed=4)]
    again = [v.to_dict() for v in feed(Deployment(started(), PROFILE), until=900, seed=4)]
    assert first == again
    assert first


def test_time_jump_judges_every_interval_up_to_the_end_once():
    deployment = Deployment(started(), PROFILE)
    verdicts = deployment.advance(T0 + 5000)
    assert [v.verdict_id for v in verdicts][-1] == "checkout-v42/15"
    assert len(verdicts) == 15
    assert verdicts[-1].decision == "inconclusive"
    assert deployment.advance(T0 + 6000) == []


def ended(kind: str, at: float) -> DeployEvent:
    return DeployEvent(event=kind, deployment_id="checkout-v42", service="checkout", time=T0 + at)


def test_end_stops_the_analysis_at_its_event_time():
    deployment = Deployment(started(), PROFILE)
    feed(deployment, until=50)
    deployment.end(ended("completed", 30))
    assert deployment.status == "ended"
    assert deployment.end_reason == "completed"
    assert deployment.advance(T0 + 1000) == []


def test_an_end_read_early_still_lets_earlier_judgements_happen():
    # `aborted` at 150 s is read before the metrics (as a replay reads the deployments
    # topic first): the judgements due at 60 and 120 s are still made, none after.
    deployment = Deployment(started(), PROFILE)
    deployment.end(ended("aborted", 150))
    assert deployment.is_open
    verdicts = feed(deployment, until=400)
    assert [v.verdict_id for v in verdicts] == ["checkout-v42/1", "checkout-v42/2"]
    assert deployment.status == "ended"
    assert deployment.expire() is None


def test_steps_apply_at_their_event_time_whenever_they_are_read():
    deployment = Deployment(started(), PROFILE)
    deployment.step(
        DeployEvent(
            event="step",
            deployment_id="checkout-v42",
            service="checkout",
            time=T0 + 90,
            traffic_weight=25,
        )
    )
    verdicts = feed(deployment, until=190)
    assert [v.traffic_weight for v in verdicts] == [None, 25.0, 25.0]


def test_expire_is_a_final_inconclusive():
    deployment = Deployment(started(), PROFILE)
    feed(deployment, until=50)
    verdict = deployment.expire()
    assert verdict is not None
    assert (verdict.decision, verdict.final) == ("inconclusive", True)
    assert "no events" in verdict.summary
    assert not deployment.is_open


def test_cohort_from_version():
    deployment = Deployment(started(), PROFILE)
    event = MetricEvent(service="checkout", metric="m", time=T0, version="v42")
    assert deployment.cohort_of(event) == "canary"
    assert (
        deployment.cohort_of(MetricEvent(service="checkout", metric="m", time=T0, version="v41"))
        == "baseline"
    )
    assert (
        deployment.cohort_of(MetricEvent(service="checkout", metric="m", time=T0, version="v0"))
        is None
    )


@pytest.mark.parametrize("cap", [100, 1000])
def test_samples_per_cohort_are_capped(cap):
    deployment = Deployment(started(), PROFILE, limits=AnalysisLimits(max_samples_per_cohort=cap))
    feed(deployment, until=50, samples=400)
    baseline_seen, canary_seen = deployment.metric_sizes()["latency_ms"]
    assert baseline_seen == canary_seen == 2000
    stored = deployment._data.samples("latency_ms")[0]
    assert len(stored) == min(cap, 2000)


def test_events_naming_instances_are_judged_per_instance_by_default():
    deployment = Deployment(started(), PROFILE)
    rng = np.random.default_rng(5)
    verdicts = []
    for step in range(1, 20):
        for cohort in ("baseline", "canary"):
            for pod in range(4):
                event = MetricEvent(
                    service="checkout",
                    metric="latency_ms",
                    time=T0 + 10 * step,
                    values=np.round(rng.lognormal(4.6, 0.5, 20)),
                    cohort=cohort,
                    instance=f"{cohort}-{pod}",
                )
                verdicts += deployment.observe(event, cohort)
    latency = next(m for m in verdicts[-1].metrics if m.metric == "latency_ms")
    assert latency.analyzer == "instance_welch"
    assert latency.detail["unit"] == "instance"
    assert latency.detail["instances_canary"] == 4


def test_sample_ratio_mismatch_is_reported_in_every_verdict():
    event = DeployEvent(
        event="started",
        deployment_id="checkout-v42",
        service="checkout",
        time=T0,
        baseline_version="v41",
        canary_version="v42",
        traffic_weight=50,
    )
    deployment = Deployment(event, PROFILE)
    verdicts = []
    for step in range(1, 13):
        now = T0 + 10 * step
        verdicts += deployment.observe(requests("baseline", now, 3000, 3000), "baseline")
        verdicts += deployment.observe(requests("canary", now, 2000, 2000), "canary")
    check = verdicts[-1].checks["sample_ratio"]
    assert check["mismatch"] is True
    assert check["observed_share"] == pytest.approx(0.4)
    assert "sample-ratio mismatch" in verdicts[-1].summary


def test_ratio_verdicts_carry_burn_windows_and_sequential_evidence():
    deployment = Deployment(started(), PROFILE)
    verdicts = feed(deployment, until=130)
    detail = next(m for m in verdicts[-1].metrics if m.metric == "requests").detail
    assert detail["test"] == "sequential"
    assert detail["fast_window"] == PROFILE.max_duration / 6
    assert detail["slow_window"] == PROFILE.max_duration
    for key in (
        "fast_burn_long",
        "fast_burn_short",
        "slow_burn_long",
        "p_relative",
        "detectable_ratio",
    ):
        assert key in detail
    latency = next(m for m in verdicts[-1].metrics if m.metric == "latency_ms").detail
    assert latency["test"] == "sequential"
    assert latency["unit"] == "request"


def test_completed_and_a_metric_of_the_same_time_close_it_in_either_order():

    started = DeployEvent("started", "d1", "svc", T0, baseline_version="v1", canary_version="v2")
    done = DeployEvent("completed", "d1", "svc", T0 + 90)
    sample = MetricEvent("svc", "latency_ms", T0 + 90, values=np.array([1.0]), cohort="canary")
    for order in ("completed first", "metric first"):
        deployment = Deployment(started, PROFILE)
        if order == "completed first":
            deployment.end(done)
            deployment.observe(sample, "canary")
        else:
            deployment.observe(sample, "canary")
            deployment.end(done)
        assert deployment.status == "ended", order


def test_next_due_and_critical_burns_say_which_events_make_a_verdict() -> None:
    d = Deployment(started(), PROFILE)
    due = T0 + PROFILE.interval
    assert d.next_due() == due
    assert d.next_due(after=due - 1) == due
    assert d.next_due(after=due + 1) == due + PROFILE.interval  # that one makes 1 due
    assert d.next_due(after=T0 + PROFILE.max_duration + 1) == math.inf  # all made due
    # Canary events of the critical ratio metric that burn the budget at the slow-burn
    # rate (6 x 0.1%) or faster on their own.
    assert d.is_critical_burn(requests("canary", due - 1, 99, 100))
    assert d.is_critical_burn(requests("canary", due - 1, 9_939, 10_000))
    assert not d.is_critical_burn(requests("canary", due - 1, 9_940, 10_000))
    assert not d.is_critical_burn(requests("canary", due - 1, 100, 100))
    assert not d.is_critical_burn(requests("baseline", due - 1, 90, 100))
    assert d.watermark == T0  # asking changed nothing
    assert d.metric_sizes() == {}
    assert d.observe(latency("baseline", due + 1, np.ones(5)), "baseline")  # as announced
    assert d.next_due() == due + PROFILE.interval
    d.expire()
    assert d.next_due() == math.inf


def _critical_latency_profile() -> Profile:
    return Profile(
        interval=300,
        min_duration=300,
        max_duration=1800,
        metrics=(MetricSpec(name="latency_ms", critical=True, quantiles=()),),
    )


def test_critical_distribution_metric_is_checked_as_its_canary_samples_grow() -> None:
    # statistics.md: a critical distribution metric is re-checked whenever its canary
    # samples have grown by a tenth since its last check, not only at the interval. The
    # canary is healthy for 60 s (checked: passes), then 1.5x slower; with judgements every
    # 5 minutes, only the growth checks can roll it back before t = 300.
    deployment = Deployment(started(), _critical_latency_profile())
    rng = np.random.default_rng(7)
    verdicts = []
    t = 10.0
    while t <= 290 and deployment.is_open:
        for cohort in ("baseline", "canary"):
            factor = 1.5 if cohort == "canary" and t > 60 else 1.0
            values = np.round(100 * factor * rng.lognormal(0, 0.5, 50), 1)
            verdicts += deployment.observe(latency(cohort, T0 + t, values), cohort)
        t += 10.0
    assert [v.decision for v in verdicts] == ["rollback"]
    (rollback,) = verdicts
    assert rollback.final
    assert rollback.verdict_id == "checkout-v42/1"  # the interval it happened in
    # Decided within a few messages of the slowdown, long before the 300 s judgement.
    assert rollback.time - T0 <= 150
    (result,) = rollback.metrics
    assert result.critical
    assert result.outcome == "fail"
