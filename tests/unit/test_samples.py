import numpy as np

from coalmine.daemon.samples import EventCounts, SampleReservoir


def test_keeps_every_sample_below_capacity_in_order():
    reservoir = SampleReservoir(capacity=1000, seed=1)
    reservoir.extend(np.arange(300, dtype=float))
    reservoir.extend(np.arange(300, 700, dtype=float))
    assert len(reservoir) == 700
    assert reservoir.seen == 700
    assert not reservoir.reduced
    assert np.array_equal(reservoir.values(), np.arange(700, dtype=float))


def test_memory_stays_at_capacity_and_the_sample_stays_uniform():
    # 200 batches of 500 values 0..99_999 into 2_000 slots: a uniform sample of 0..99_999
    # has mean 49_999.5 and sd 28_868; the mean of 2_000 draws has sd 645, so 4 sd = 2_600.
    reservoir = SampleReservoir(capacity=2000, seed=3)
    for start in range(0, 100_000, 500):
        reservoir.extend(np.arange(start, start + 500, dtype=float))
    values = reservoir.values()
    assert len(values) == 2000
    assert reservoir.seen == 100_000
    assert reservoir.reduced
    assert abs(values.mean() - 49_999.5) < 2_600
    # Late batches are represented too, not just the first 2_000 values.
    assert (values >= 90_000).sum() > 100
    assert len(np.unique(values)) == 2000


def test_array_grows_by_a_quarter_and_never_past_capacity():
    # 1,500 samples (30 minutes at 50 a minute) in batches of 50: doubling would hold them
    # in 2,048 slots (37% more than needed); growing by a quarter keeps it under 25%.
    reservoir = SampleReservoir(capacity=100_000, seed=1)
    for start in range(0, 1500, 50):
        reservoir.extend(np.arange(start, start + 50, dtype=float))
        assert len(reservoir) <= reservoir.allocated <= 1.25 * len(reservoir) + 256
    assert reservoir.allocated <= 1.25 * 1500
    assert np.array_equal(reservoir.values(), np.arange(1500, dtype=float))
    capped = SampleReservoir(capacity=1000, seed=1)
    for start in range(0, 5000, 300):
        capped.extend(np.arange(start, start + 300, dtype=float))
    assert capped.allocated == 1000


def test_same_seed_same_sample():
    def fill(seed: int) -> np.ndarray:
        reservoir = SampleReservoir(capacity=100, seed=seed)
        for start in range(0, 5000, 70):
            reservoir.extend(np.arange(start, start + 70, dtype=float))
        return reservoir.values().copy()

    assert np.array_equal(fill(5), fill(5))
    assert not np.array_equal(fill(5), fill(6))


def test_values_view_is_read_only():
    reservoir = SampleReservoir(capacity=10, seed=0)
    reservoir.extend(np.ones(3))
    view = reservoir.values()
    assert not view.flags.writeable


def test_counts_accumulate():
    counts = EventCounts()
    counts.add(99, 100)
    counts.add(5, 10)
    assert (counts.good, counts.total, len(counts)) == (104, 110, 110)
