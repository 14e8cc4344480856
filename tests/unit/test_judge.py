import pytest

from coalmine.analyzers.result import MetricResult
from coalmine.config.models import MetricSpec, Profile
from coalmine.judge import judge, score

PROFILE = Profile(
    min_duration=300,
    max_duration=1800,
    metrics=(
        MetricSpec(name="latency_ms"),
        MetricSpec(name="cpu", weight=3.0),
        MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True),
    ),
)


def result(metric: str, outcome: str = "pass", *, measured: bool = True, critical: bool = False):
    return MetricResult(
        metric=metric,
        analyzer="test",
        outcome=outcome,  # type: ignore[arg-type]
        critical=critical,
        measured=measured,
        n_baseline=100,
        n_canary=100,
        reason=f"{metric} {outcome}",
    )


def healthy():
    return [result("latency_ms"), result("cpu"), result("requests", critical=True)]


def test_critical_failure_rolls_back_before_min_duration():
    results = [result("latency_ms"), result("cpu"), result("requests", "fail", critical=True)]
    judgement = judge(PROFILE, results, elapsed=30, at_end=False)
    assert judgement.decision == "rollback"
    assert judgement.final
    assert judgement.score == 0.0
    assert "requests fail" in judgement.summary


def test_score_is_weighted_and_ignores_nodata_and_error():
    results = [result("latency_ms", "fail"), result("cpu"), result("requests", "nodata")]
    assert score(PROFILE, results) == pytest.approx(75.0)
    assert score(PROFILE, [result("cpu", "error"), result("latency_ms", "nodata")]) is None


def test_score_below_marginal_rolls_back():
    results = [result("latency_ms"), result("cpu", "fail"), result("requests", critical=True)]
    judgement = judge(PROFILE, results, elapsed=60, at_end=False)
    assert judgement.decision == "rollback"
    assert judgement.score == pytest.approx(40.0)
    assert "cpu fail" in judgement.summary


def test_marginal_score_continues_then_ends_inconclusive():
    results = [result("latency_ms", "fail"), result("cpu"), result("requests", critical=True)]
    assert judge(PROFILE, results, elapsed=600, at_end=False).decision == "continue"
    final = judge(PROFILE, results, elapsed=1800, at_end=True)
    assert (final.decision, final.final) == ("inconclusive", True)
    assert "marginal" in final.summary


def test_no_promotion_before_min_duration():
    early = judge(PROFILE, healthy(), elapsed=299, at_end=False)
    assert (early.decision, early.final) == ("continue", False)
    assert "min_duration" in early.summary
    on_time = judge(PROFILE, healthy(), elapsed=300, at_end=False)
    assert (on_time.decision, on_time.final, on_time.score) == ("promote", True, 100.0)


@pytest.mark.parametrize(
    "blocker", [result("cpu", measured=False), result("cpu", "nodata"), result("cpu", "error")]
)
def test_unmeasured_nodata_or_error_blocks_promotion_and_ends_inconclusive(blocker):
    results = [result("latency_ms"), blocker, result("requests", critical=True)]
    assert judge(PROFILE, results, elapsed=600, at_end=False).decision == "continue"
    final = judge(PROFILE, results, elapsed=1800, at_end=True)
    assert final.decision == "inconclusive"
    assert "cpu" in final.summary


def test_nothing_known_at_the_end_is_inconclusive_not_promote():
    results = [result(m, "nodata") for m in ("latency_ms", "cpu", "requests")]
    final = judge(PROFILE, results, elapsed=1800, at_end=True)
    assert final.decision == "inconclusive"
    assert final.score is None


GROUPED = Profile(
    min_duration=300,
    max_duration=1800,
    groups={"latency": 3.0, "errors": 1.0},
    metrics=(
        MetricSpec(name="p50", group="latency"),
        MetricSpec(name="p99", group="latency"),
        MetricSpec(name="errors", kind="ratio", objective=0.999, group="errors"),
        MetricSpec(name="saturation", must_have_data=True, group="errors"),
    ),
)


def test_groups_are_scored_separately_and_weighted():
    results = [result("p50"), result("p99", "fail"), result("errors"), result("saturation")]
    # latency group 50, errors group 100: (3 x 50 + 1 x 100) / 4 = 62.5
    assert score(GROUPED, results) == pytest.approx(62.5)


def test_must_have_data_counts_as_failing_only_after_min_duration():
    results = [result("p50"), result("p99"), result("errors"), result("saturation", "nodata")]
    early = judge(GROUPED, results, elapsed=120, at_end=False)
    assert early.decision == "continue"
    late = judge(GROUPED, results, elapsed=300, at_end=False)
    # errors group: 1 pass + 1 missing = 50; latency 100: (3 x 100 + 50) / 4 = 87.5
    assert late.score == pytest.approx(87.5)
    assert late.decision == "continue"
    assert "saturation" in late.summary


def test_a_score_exactly_at_marginal_does_not_roll_back():
    # latency_ms fails (weight 1), cpu passes (weight 3), requests has no data: 75, the
    # default marginal_score. Only a score *below* it rolls back.
    results = [result("latency_ms", "fail"), result("cpu"), result("requests", "nodata")]
    assert PROFILE.marginal_score == 75.0
    judgement = judge(PROFILE, results, elapsed=600, at_end=False)
    assert judgement.score == 75.0
    assert (judgement.decision, judgement.final) == ("continue", False)
    final = judge(PROFILE, results, elapsed=1800, at_end=True)
    assert (final.decision, final.score) == ("inconclusive", 75.0)


def test_a_score_exactly_at_pass_score_promotes():
    # Every metric passing scores 100, so the one score at pass_score with nothing
    # blocking is pass_score = 100: reaching it is enough.
    strict = Profile(min_duration=300, max_duration=1800, pass_score=100, metrics=PROFILE.metrics)
    judgement = judge(strict, healthy(), elapsed=300, at_end=False)
    assert (judgement.decision, judgement.final, judgement.score) == ("promote", True, 100.0)


DRY = PROFILE.model_copy(
    update={
        "metrics": (
            MetricSpec(name="latency_ms", dry_run=True),
            MetricSpec(name="cpu", weight=3.0),
            MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True, dry_run=True),
        )
    }
)


def test_a_dry_run_metric_is_reported_but_never_decides():
    failing = [
        result("latency_ms", "fail"),
        result("cpu"),
        result("requests", "fail", critical=True),
    ]
    # Deciding, these failures roll back at once; in dry run the canary is promoted.
    assert judge(PROFILE, failing, elapsed=600, at_end=False).decision == "rollback"
    judgement = judge(DRY, failing, elapsed=600, at_end=False)
    assert judgement.decision == "promote"
    assert judgement.score == 100.0
    assert judgement.summary.endswith("; dry run, not deciding: latency_ms fail; requests fail")


def test_a_dry_run_metric_not_measured_does_not_hold_back_promotion():
    results = [result("latency_ms", measured=False), result("cpu"), result("requests", "nodata")]
    assert judge(PROFILE, results, elapsed=600, at_end=False).decision == "continue"
    judgement = judge(DRY, results, elapsed=600, at_end=False)
    assert judgement.decision == "promote"
    assert "dry run" not in judgement.summary  # nothing it would have failed
