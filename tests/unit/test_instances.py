import numpy as np

from coalmine.analyzers.instances import InstanceEvidence, InstanceMeans, analyze_instances
from coalmine.analyzers.mann_whitney import analyze_distribution
from coalmine.config.models import MetricSpec
from coalmine.daemon.samples import InstanceTally

LATENCY = MetricSpec(name="latency_ms", unit="instance")


def cohort(rng, instances: int, per_instance: int, spread: float, factor: float = 1.0):
    """Samples per instance, each instance with its own multiplicative latency factor."""
    effects = np.exp(rng.normal(0, spread, instances))
    return [factor * e * rng.lognormal(4.6, 0.5, per_instance) for e in effects]


def means(samples) -> InstanceMeans:
    tally = InstanceTally()
    for index, values in enumerate(samples):
        tally.add(f"pod-{index}", np.round(values))
    return InstanceMeans(*tally.means(), names=tally.names)


def test_instance_unit_holds_false_alarms_where_per_request_tests_do_not():
    # A/A, 5 vs 5 instances with 3% instance spread, 1000 requests each, one look at
    # alpha 0.05 per run over 400 runs. Per request the instance effects look like a
    # difference (20.5% of runs with this seed; statistics.md section 6 reports 25-54% for
    # 3 vs 3 instances); per instance the test keeps its level. Bounds: per request at
    # least three times alpha, per instance below 0.05 + 3 x 0.011.
    rng = np.random.default_rng(11)
    per_request = per_instance = 0
    request_spec = LATENCY.model_copy(update={"unit": "request", "test": "fixed"})
    for _ in range(400):
        base, canary = cohort(rng, 5, 1000, 0.03), cohort(rng, 5, 1000, 0.03)
        if analyze_instances(LATENCY, means(base), means(canary), 0.05).detail["p_value"] < 0.05:
            per_instance += 1
        flat = analyze_distribution(
            request_spec, np.concatenate(base), np.concatenate(canary), 0.05
        )
        if flat.detail["p_value"] < 0.05:
            per_request += 1
    assert per_request / 400 > 0.15
    assert per_instance / 400 < 0.083


def test_instance_unit_detects_a_real_regression():
    rng = np.random.default_rng(12)
    failed = sum(
        analyze_instances(
            LATENCY,
            means(cohort(rng, 5, 1000, 0.03)),
            means(cohort(rng, 5, 1000, 0.03, 1.25)),
            0.05,
        ).outcome
        == "fail"
        for _ in range(50)
    )
    assert failed >= 45


def test_a_single_canary_instance_is_judged_against_the_baseline_spread():
    rng = np.random.default_rng(13)
    base = means(cohort(rng, 6, 1000, 0.03))
    slow = means(cohort(rng, 1, 1000, 0.0, 1.4))
    result = analyze_instances(LATENCY, base, slow, 0.05)
    assert result.outcome == "fail"
    assert (result.detail["instances_baseline"], result.detail["instances_canary"]) == (6, 1)
    assert result.detail["unit"] == "instance"
    assert result.detail["relative_change"] > 0.3


def test_too_few_instances_or_samples_is_nodata():
    rng = np.random.default_rng(14)
    one = means(cohort(rng, 1, 1000, 0.0))
    assert analyze_instances(LATENCY, one, one, 0.05).outcome == "nodata"
    sparse = means(cohort(rng, 5, 50, 0.0))  # fewer than 100 samples per instance
    assert analyze_instances(LATENCY, sparse, sparse, 0.05).outcome == "nodata"


def test_non_positive_samples_fall_back_to_raw_means():
    tally = InstanceTally()
    tally.add("a", np.array([1.0, 2.0]))
    tally.add("a", np.array([0.0, 3.0]))
    counts, values, log = tally.means()
    assert not log
    assert counts.tolist() == [4.0]
    assert values.tolist() == [1.5]


def test_no_promotion_while_an_instance_has_not_counted_yet():
    rng = np.random.default_rng(15)
    base = means(cohort(rng, 5, 2000, 0.0))
    canary_samples = cohort(rng, 3, 2000, 0.0)
    canary_samples.append(1.5 * rng.lognormal(4.6, 0.5, 40))  # a slow pod, 40 samples so far
    result = analyze_instances(LATENCY, base, means(canary_samples), 0.05)
    assert result.outcome == "pass"
    assert result.detail["instances_canary"] == 3
    assert result.detail["instances_waiting"] == 1
    assert not result.measured
    assert "1 more instance(s) below 100 samples" in result.reason


def test_one_bad_canary_instance_is_caught_and_named() -> None:
    # +30% on one of five canary instances with 3% spread: the canary's typical instance
    # moves ~6%, inside the 10% tolerance, so only the outlier test can catch it.
    rng = np.random.default_rng(16)
    caught = named = 0
    for _ in range(40):
        base = cohort(rng, 5, 300, 0.03)
        canary = cohort(rng, 5, 300, 0.03)
        canary[2] = canary[2] * 1.3
        result = analyze_instances(LATENCY, means(base), means(canary), 0.025)
        caught += result.outcome == "fail"
        named += result.detail.get("instance") == "pod-2"
    assert caught >= 34
    assert named == caught
    assert "instance pod-2 +" in result.reason or result.outcome == "pass"


def test_the_outlier_test_keeps_its_level() -> None:
    # A/A, 5 vs 5 instances, 5% spread: one look at alpha 0.05 (the outlier test gets 3/4
    # of it, Bonferroni over the canary's instances) over 1000 runs: false alarms at most
    # alpha plus three binomial sd (0.021).
    rng = np.random.default_rng(17)
    failed = sum(
        analyze_instances(
            LATENCY.model_copy(update={"allowed_change": 0.0}),
            means(cohort(rng, 5, 200, 0.05)),
            means(cohort(rng, 5, 200, 0.05)),
            0.05,
        ).outcome
        == "fail"
        for _ in range(1000)
    )
    assert failed / 1000 <= 0.05 + 0.021


def test_staged_tests_run_once_per_doubling_and_repeat_in_between() -> None:
    rng = np.random.default_rng(18)
    evidence = InstanceEvidence()
    base, canary = cohort(rng, 4, 1600, 0.03), cohort(rng, 4, 1600, 0.03)
    stages = []
    means_seen = []
    for n in (60, 100, 150, 199, 200, 399, 400, 800, 1600):
        result = analyze_instances(
            LATENCY,
            means([x[:n] for x in base]),
            means([x[:n] for x in canary]),
            0.05,
            evidence=evidence,
        )
        stages.append(result.detail.get("stage"))
        means_seen.append(result.detail.get("mean_canary"))
        if n == 60:
            assert result.outcome == "nodata"  # no instance has 100 samples yet
    # Within stage 0 (100 to 199 samples) the decision of n = 100 is repeated; the next
    # stage tests again on the data then.
    assert means_seen[1] == means_seen[2] == means_seen[3]
    assert means_seen[4] != means_seen[3]
    assert stages == [None, 0, 0, 0, 1, 1, 2, 3, 4]
