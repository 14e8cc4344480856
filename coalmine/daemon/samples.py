"""Bounded per-cohort storage for one metric's samples and counts."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray


_FIRST_SIZE = 256

# The ufuncs themselves: ``ndarray.sum()`` and ``.all()`` reach them through Python wrappers
# (numpy's ``_methods``), which on a message's few samples cost more than the reduction.
_add_reduce = np.add.reduce
_minimum_reduce = np.minimum.reduce
_log = np.log
_add_at = np.add.at
_add_reduceat = np.add.reduceat
_add_accumulate = np.add.accumulate


class SampleReservoir:
    """Samples of one cohort of one distribution metric, with a cap on memory.

    Up to ``capacity`` samples are kept exactly. Past that, the reservoir keeps a uniform
    random sample of everything seen (Vitter's algorithm R, vectorised per batch), so the
    stored values stay an unbiased sample of the cohort while memory stays fixed. The random
    generator is seeded from the deployment and metric, so a replay keeps the same samples;
    it is made only once the reservoir is full (a generator costs ~700 bytes, and most
    reservoirs never fill).

    The array grows by a quarter at a time rather than doubling: at most ~20% of it is
    unused, where doubling leaves up to half of it empty (1,500 samples in 2,048 slots).
    """

    __slots__ = ("_capacity", "_data", "_rng", "_seed", "_size", "seen")

    def __init__(self, capacity: int, seed: int) -> None:
        self._capacity = capacity
        self._data: NDArray[np.float64] = np.empty(min(capacity, _FIRST_SIZE), dtype=np.float64)
        self._size = 0
        self._seed = seed
        self._rng: np.random.Generator | None = None
        self.seen = 0

    def __len__(self) -> int:
        return self._size

    @property
    def allocated(self) -> int:
        """Slots in the array behind the samples (its memory is 8 bytes a slot)."""
        return len(self._data)

    @property
    def reduced(self) -> bool:
        """True once more samples were seen than are stored."""
        return self.seen > self._size

    def values(self) -> NDArray[np.float64]:
        """The stored samples (a read-only view; do not keep it across ``extend``)."""
        view = self._data[: self._size]
        view.flags.writeable = False
        return view

    def extend(self, values: NDArray[np.float64]) -> None:
        """Add a batch of samples."""
        count = len(values)
        size = self._size
        end = size + count
        if end <= len(self._data):
            # They fit the array as it is (never longer than the capacity), so none is
            # sampled away yet: the common case, one copy.
            self._data[size:end] = values
            self._size = end
            self.seen += count
            return
        room = self._capacity - size
        if room > 0:
            take = min(room, count)
            self._reserve(self._size + take)
            self._data[self._size : self._size + take] = values[:take]
            self._size += take
            self.seen += take
            values = values[take:]
            count -= take
            if count == 0:
                return
        # Algorithm R: the i-th sample seen (1-based) replaces a random slot with p = k/i.
        if self._rng is None:
            self._rng = np.random.default_rng(self._seed)
        positions = self.seen + 1 + np.arange(count)
        slots = (self._rng.random(count) * positions).astype(np.int64)
        keep = slots < self._capacity
        # Later samples win when two land on the same slot, as in the sequential algorithm.
        self._data[slots[keep]] = values[keep]
        self.seen += count

    def _reserve(self, needed: int) -> None:
        if needed <= len(self._data):
            return
        size = min(self._capacity, max(needed, len(self._data) + len(self._data) // 4))
        grown = np.empty(size, dtype=np.float64)
        grown[: self._size] = self._data[: self._size]
        self._data = grown


class EventCounts:
    """Cumulative good/total counts of one cohort of one ratio metric."""

    __slots__ = ("good", "reports", "total")

    def __init__(self) -> None:
        self.good = 0
        self.total = 0
        self.reports = 0
        """Intervals added, even empty ones: whether the cohort has reported at all."""

    def __len__(self) -> int:
        return self.total

    def add(self, good: int, total: int) -> None:
        """Add one interval's counts."""
        self.good += good
        self.total += total
        self.reports += 1


class InstanceTally:
    """Per-instance sample counts, sums and sums of logs for one cohort of one metric.

    Fixed memory per instance, whatever the traffic; the instance-level analysis needs only
    each instance's mean (of logs while every sample is positive).
    """

    __slots__ = ("_index", "_stats", "log", "max_instances", "refused")

    def __init__(self, max_instances: int = 1_000) -> None:
        self._index: dict[str, int] = {}
        self._stats: NDArray[np.float64] = np.zeros((4, 3), dtype=np.float64)
        """Per instance: samples, their sum, the sum of their logs."""
        self.log = True
        self.max_instances = max_instances
        self.refused = 0
        """Messages from instances beyond ``max_instances``, not tallied."""

    def __len__(self) -> int:
        return len(self._index)

    def add(self, instance: str, values: NDArray[np.float64]) -> None:
        """Add one message's samples from ``instance`` (refused beyond ``max_instances``)."""
        self.add_many((instance,), (values,))

    def add_many(
        self,
        instances: Sequence[str | None],
        values: Sequence[NDArray[np.float64]],
        joined: NDArray[np.float64] | None = None,
    ) -> None:
        """Add messages' samples, each from its instance (None: from no named instance).

        ``joined``: all of ``values`` end to end, when the caller has it. The same tally,
        to the last bit, as adding the messages one by one: each message's sums are taken
        alone, then added to its instance's in message order.
        """
        known = cast("dict[str | None, int]", self._index)  # None is never a key: misses
        slots: list[int | None] = list(map(known.get, instances))
        lengths = list(map(len, values))
        taken: Sequence[NDArray[np.float64]] = values
        if None in slots or 0 in lengths:
            slots, taken, lengths = self._named(instances, values)
            joined = None
        if len(self._stats) < len(self._index):
            grown = np.zeros((max(len(self._index), 2 * len(self._stats)), 3), dtype=np.float64)
            grown[: len(self._stats)] = self._stats
            self._stats = grown
        if not slots:
            return
        if joined is None:
            joined = taken[0] if len(taken) == 1 else np.concatenate(taken)
        starts = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            _add_accumulate(lengths[:-1], out=starts[1:])
        rows = np.asarray(slots, dtype=np.int64)
        stats = self._stats
        _add_at(stats[:, 0], rows, lengths)
        _add_at(stats[:, 1], rows, _add_reduceat(joined, starts))
        if self.log:
            if _minimum_reduce(joined) > 0:  # every sample positive (False for a NaN)
                _add_at(stats[:, 2], rows, _add_reduceat(_log(joined), starts))
            else:
                self.log = False

    def _named(
        self, instances: Sequence[str | None], values: Sequence[NDArray[np.float64]]
    ) -> tuple[list[int | None], list[NDArray[np.float64]], list[int]]:
        """Slots for new instances (up to ``max_instances``), and the messages to tally."""
        slots: list[int | None] = []
        taken: list[NDArray[np.float64]] = []
        index = self._index
        for name, samples in zip(instances, values, strict=True):
            if name is None:
                continue
            slot = index.get(name)
            if slot is None:
                if len(index) >= self.max_instances:
                    self.refused += 1
                    continue
                slot = index[name] = len(index)
            if len(samples):
                slots.append(slot)
                taken.append(samples)
        return slots, taken, list(map(len, taken))

    @property
    def names(self) -> tuple[str, ...]:
        """The instances' names, in the order of :meth:`means`."""
        return tuple(self._index)

    def means(self) -> tuple[NDArray[np.float64], NDArray[np.float64], bool]:
        """Counts, means (of logs if ``log``) per instance, and whether they are log means."""
        table = self._stats[: len(self._index)]
        counts = table[:, 0].copy()
        totals = table[:, 2] if self.log else table[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, totals / np.maximum(counts, 1.0), 0.0)
        return counts, means, self.log
