import numpy as np
import pytest

from coalmine.contract import MetricEvent
from coalmine.daemon.observations import AnalysisLimits, Observations
from coalmine.daemon.samples import InstanceTally


def _events(count: int, seed: int) -> list[tuple[MetricEvent, str]]:
    """Latency events of 3-4 instances per cohort, 0-30 samples each (some empty)."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        cohort = "canary" if rng.random() < 0.5 else "baseline"
        instance = None if rng.random() < 0.1 else f"{cohort[0]}{rng.integers(4)}"
        values = np.round(rng.lognormal(4.6, 0.5, int(rng.integers(0, 31))), 1)
        event = MetricEvent(
            "checkout", "latency_ms", 1000.0 + index, values=values, cohort=cohort,
            instance=instance,
        )  # fmt: skip
        out.append((event, cohort))
    return out


def _state(data: Observations) -> tuple[object, ...]:
    base, canary = data.samples("latency_ms")
    tallies = data.instances("latency_ms")
    means = [tally.means() for tally in tallies]
    return (
        base.values().tobytes(),
        canary.values().tobytes(),
        base.seen,
        canary.seen,
        [(m[0].tobytes(), m[1].tobytes(), m[2]) for m in means],
        [tally.names for tally in tallies],
        [tally.refused for tally in tallies],
        sorted(data.limits_hit),  # noticed when stored: their order may differ
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reads_anywhere_give_the_same_state_to_the_bit(seed):
    # Samples wait and are stored together when read: wherever the reads fall, the stored
    # state must equal storing each event at once (a replay reads at other moments than a
    # live daemon). Small caps, so the reservoir samples away and instances are refused.
    limits = AnalysisLimits(max_samples_per_cohort=500, max_instances_per_cohort=3)
    events = _events(400, seed)
    at_once = Observations("d1", limits)
    for event, cohort in events:
        at_once.add(event, cohort)
        at_once.sizes()  # a read after every event: each stored alone
    rng = np.random.default_rng(seed + 100)
    lazily = Observations("d1", limits)
    for event, cohort in events:
        lazily.add(event, cohort)
        if rng.random() < 0.03:
            lazily.instance_count("latency_ms", 1)
    assert at_once.samples("latency_ms")[0].reduced  # the cap was reached: a real test
    assert any(t.refused for t in at_once.instances("latency_ms"))
    assert _state(lazily) == _state(at_once)


def test_waiting_samples_count_in_sizes_and_split():
    data = Observations("d1", AnalysisLimits())
    for event, cohort in _events(10, 4):
        data.add(event, cohort)
    base, canary = data.samples("latency_ms")
    assert data.sizes() == {"latency_ms": (base.seen, canary.seen)}
    assert base.seen + canary.seen > 0
    assert data.split() == (canary.seen, base.seen)


def test_clear_drops_waiting_samples():
    data = Observations("d1", AnalysisLimits())
    for event, cohort in _events(10, 5):
        data.add(event, cohort)
    data.clear()
    assert data.sizes() == {}


def test_instance_tally_of_many_messages_equals_one_by_one():
    rng = np.random.default_rng(9)
    messages = [
        (f"i{rng.integers(5)}", rng.lognormal(3.0, 1.0, int(rng.integers(1, 40))))
        for _ in range(200)
    ]
    one = InstanceTally()
    for name, values in messages:
        one.add(name, values)
    many = InstanceTally()
    many.add_many([name for name, _ in messages], [values for _, values in messages])
    counts, means, log = many.means()
    assert log
    assert one.names == many.names
    assert one.means()[1].tobytes() == means.tobytes()
    for position, name in enumerate(many.names):
        mine = np.concatenate([values for n, values in messages if n == name])
        assert counts[position] == mine.size
        assert means[position] == pytest.approx(np.log(mine).mean(), rel=1e-12)


def test_instance_tally_leaves_logs_at_the_first_non_positive_sample():
    tally = InstanceTally()
    tally.add_many(["a", "b"], [np.array([1.0, 2.0]), np.array([0.0, 4.0])])
    counts, means, log = tally.means()
    assert not log
    assert counts.tolist() == [2.0, 2.0]
    assert means.tolist() == [1.5, 2.0]
