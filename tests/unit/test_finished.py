import random
import subprocess
import sys
from collections import deque

import pytest

from coalmine.daemon.finished import FinishedDeployments, stable_hash


def ids(start: int, stop: int) -> list[str]:
    return [f"svc-{i:05d}-v2" for i in range(start, stop)]


def test_an_added_id_is_remembered_and_others_are_not():
    store = FinishedDeployments()
    assert "checkout-v42" not in store
    assert len(store) == 0
    store.add("checkout-v42")
    assert "checkout-v42" in store
    assert "checkout-v43" not in store
    assert 42 not in store
    assert len(store) == 1


def test_frozen_ids_are_found_after_several_generations():
    store = FinishedDeployments(capacity=1000, recent=16)
    added = ids(0, 200)  # 12 generations frozen, 8 ids still recent
    for dep_id in added:
        store.add(dep_id)
    assert store._count == 192
    assert len(store._recent) == 8
    assert all(dep_id in store for dep_id in added)
    assert not any(dep_id in store for dep_id in ids(200, 400))
    assert len(store) == 200


def test_the_newest_capacity_ids_and_those_since_the_last_freeze_are_remembered():
    store = FinishedDeployments(capacity=10, recent=4)
    added = ids(0, 30)
    for dep_id in added:
        store.add(dep_id)
    # 28 ids frozen, of which the ring keeps the newest 10 (18..27); 28 and 29 are recent.
    assert [dep_id for dep_id in added if dep_id in store] == added[18:]
    assert len(store) == 12
    store.add("one-more")  # 3 recent now: still 18..27 frozen
    assert len(store) == 13
    store.add("and-another")  # a generation frozen: 28, 29 and these two, over 18..21
    assert len(store) == 10
    assert [dep_id for dep_id in added if dep_id in store] == added[22:]
    assert "one-more" in store
    assert "and-another" in store


def test_the_store_never_holds_more_than_capacity_plus_recent_minus_one():
    store = FinishedDeployments(capacity=10, recent=4)
    sizes = []
    for dep_id in ids(0, 100):
        store.add(dep_id)
        sizes.append(len(store))
    assert max(sizes) == 13
    assert min(sizes[20:]) == 10  # never fewer than the capacity once that many were added


def test_recent_is_at_most_the_capacity():
    store = FinishedDeployments(capacity=3, recent=4096)
    for dep_id in ids(0, 10):
        store.add(dep_id)
    assert store.recent == 3
    # 9 frozen, the ring keeps 3 (6..8); 9 is recent.
    assert [dep_id for dep_id in ids(0, 10) if dep_id in store] == ids(6, 10)


def test_a_repeated_id_is_not_added_twice():
    store = FinishedDeployments(capacity=10, recent=4)
    added = ids(0, 12)
    for i, dep_id in enumerate(added):
        store.add(dep_id)
        store.add(dep_id)  # recent, or frozen just now
        if i:
            store.add(added[i - 1])  # recent, or frozen
    assert len(store) == 10
    assert [dep_id for dep_id in added if dep_id in store] == added[2:]
    # 19 distinct ids added: the newest 10 + 19 % 4 remain, as if each had come once.
    for dep_id in ids(12, 19):
        store.add(dep_id)
    assert [dep_id for dep_id in ids(0, 19) if dep_id in store] == ids(6, 19)


def test_the_arrays_are_allocated_on_the_first_freeze_and_grow_up_to_the_capacity():
    store = FinishedDeployments(capacity=100, recent=4)
    for dep_id in ids(0, 3):
        store.add(dep_id)
    assert store._ring.size == 0
    store.add("fourth")
    assert store._ring.size == 4
    for dep_id in ids(3, 500):
        store.add(dep_id)
    assert store._ring.size == store._sorted.size == 100


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        FinishedDeployments(capacity=0)
    with pytest.raises(ValueError, match="at least 1"):
        FinishedDeployments(recent=0)


def test_the_hash_is_the_same_in_every_instance_and_process():
    first = FinishedDeployments(capacity=10, recent=1)
    second = FinishedDeployments(capacity=10, recent=1)
    first.add("checkout-v42")
    second.add("checkout-v42")
    assert first._ring[:1].tolist() == second._ring[:1].tolist() == [stable_hash("checkout-v42")]
    code = "from coalmine.daemon.finished import stable_hash; print(stable_hash('checkout-v42'))"
    for seed in ("0", "1"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        )
        assert int(out.stdout) == stable_hash("checkout-v42")
    assert -(2**63) <= stable_hash("checkout-v42") < 2**63


@pytest.mark.parametrize(("capacity", "recent"), [(50, 4), (64, 16), (1000, 7), (5, 5)])
def test_it_matches_a_reference_model(capacity: int, recent: int):
    rng = random.Random(20240611)  # noqa: S311 - test data, not secrets
    pool = [f"dep-{i}" for i in range(400)]
    store = FinishedDeployments(capacity=capacity, recent=recent)
    order: deque[str] = deque()  # every id added while not remembered, oldest first
    added = 0

    def remembered() -> set[str]:
        keep = min(added, capacity + added % recent)
        return set(list(order)[len(order) - keep :])

    model = set()
    for _ in range(3000):
        dep_id = rng.choice(pool)
        if rng.random() < 0.5:
            store.add(dep_id)
            if dep_id not in model:
                order.append(dep_id)
                added += 1
                model = remembered()
        else:
            assert (dep_id in store) == (dep_id in model)
        assert len(store) == len(model)
    assert {dep_id for dep_id in pool if dep_id in store} == model
