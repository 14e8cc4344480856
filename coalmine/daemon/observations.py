"""What one deployment has read: both cohorts' samples and counts of every metric."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from coalmine.analyzers.drift import IntervalTally
from coalmine.analyzers.instances import InstanceMeans
from coalmine.daemon.samples import EventCounts, InstanceTally, SampleReservoir

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from coalmine.contract import Cohort, MetricEvent

_PENDING = 64
"""Events whose samples may wait to be stored, per deployment: the storing's few array
operations are spread over this many messages, and what waits stays small."""


@dataclass(frozen=True, slots=True)
class AnalysisLimits:
    """Per-deployment caps (from ``[limits]``)."""

    max_samples_per_cohort: int = 200_000
    max_instances_per_cohort: int = 1_000
    max_history_events: int = 5_000


class Observations:
    """Both cohorts' data of every metric of one deployment, within its limits.

    A metric's storage is made when an event brings its data or an analyzer first reads
    it; events of a ratio metric carry counts, those of a distribution metric samples (the
    router rejects the others).
    """

    __slots__ = (
        "_cohorts",
        "_counts",
        "_deployment_id",
        "_instances",
        "_interval",
        "_limits",
        "_pending",
        "_samples",
        "_spread",
        "_waiting",
        "limits_hit",
    )

    def __init__(
        self, deployment_id: str, limits: AnalysisLimits, interval: float | None = None
    ) -> None:
        self._deployment_id = deployment_id
        self._limits = limits
        self._interval = interval
        self._spread: dict[str, IntervalTally] = {}
        """Per distribution metric, its samples per interval (with ``interval``: a past
        baseline, whose variation between intervals widens the tolerance)."""
        self._samples: dict[str, tuple[SampleReservoir, SampleReservoir]] = {}
        self._counts: dict[str, tuple[EventCounts, EventCounts]] = {}
        self._instances: dict[str, tuple[InstanceTally, InstanceTally]] = {}
        self._cohorts: dict[str, tuple[_CohortData, _CohortData]] = {}
        self._pending: dict[str, tuple[_Waiting, _Waiting]] = {}
        """Per distribution metric, per cohort, the samples that wait to be stored."""
        self._waiting = 0
        self.limits_hit: list[str] = []
        """Caps reached since the owner last looked: ``"<limit>: <metric> <cohort>"``."""

    def add(self, event: MetricEvent, cohort: Cohort) -> _CohortData:
        """Take one event's counts or samples; return its cohort's data.

        A distribution metric's samples wait, per metric and cohort, until anything reads
        the data or ``_PENDING`` events wait: then they are stored together, a few array
        operations for many messages. Storing them together gives the very state storing
        them one by one gives (see :meth:`SampleReservoir.extend` and
        :meth:`InstanceTally.add_many`), so where the reads fall changes nothing.
        """
        index = 1 if cohort == "canary" else 0
        name = event.metric
        if event.is_ratio:
            self.counts(name)[index].add(event.good, event.total)
            return self.cohorts(name)[index]
        if self._interval is not None:
            spread = self._spread.get(name)
            if spread is None:
                spread = self._spread[name] = IntervalTally(self._interval)
            spread.add(index == 1, event.time, event.values)
        waiting = self._pending.get(name)
        if waiting is None:
            waiting = self._pending[name] = (_Waiting(), _Waiting())
        waiting[index].values.append(event.values)
        waiting[index].instances.append(event.instance)
        self._waiting += 1
        if self._waiting >= _PENDING:
            self._store_pending()
        pair = self._cohorts.get(name)
        return self.cohorts(name)[index] if pair is None else pair[index]

    def _store_pending(self) -> None:
        """Store the samples that wait, metric by metric in the order they first came."""
        if not self._waiting:
            return
        pending, self._pending, self._waiting = self._pending, {}, 0
        for name, cohorts in pending.items():
            for index, waiting in enumerate(cohorts):
                if waiting.values:
                    self._store(name, index, waiting.values, waiting.instances)

    def _store(
        self,
        name: str,
        index: int,
        values: list[NDArray[np.float64]],
        instances: list[str | None],
    ) -> None:
        cohort = "canary" if index else "baseline"
        reservoir = self._reservoirs(name)[index]
        was_reduced = reservoir.reduced
        joined = values[0] if len(values) == 1 else np.concatenate(values)
        reservoir.extend(joined)
        if reservoir.reduced and not was_reduced:
            self.limits_hit.append(f"max_samples_per_cohort: {name} {cohort}")
        if instances.count(None) == len(instances):
            return
        tally = self._tallies(name)[index]
        refused = tally.refused
        tally.add_many(instances, values, joined)
        if tally.refused and not refused:
            self.limits_hit.append(f"max_instances_per_cohort: {name} {cohort}")

    def drift(self) -> dict[str, float]:
        """Per distribution metric, the between-interval uncertainty of the comparison."""
        return {name: tally.uncertainty() for name, tally in self._spread.items()}

    def cohorts(self, name: str) -> tuple[_CohortData, _CohortData]:
        """A metric's data, baseline and canary, as its analyzer reads it."""
        pair = self._cohorts.get(name)
        if pair is None:
            pair = self._cohorts[name] = (_CohortData(self, name, 0), _CohortData(self, name, 1))
        return pair

    def samples(self, name: str) -> tuple[SampleReservoir, SampleReservoir]:
        """A metric's samples per cohort (made on first use, seeded by deployment and metric)."""
        self._store_pending()
        return self._reservoirs(name)

    def _reservoirs(self, name: str) -> tuple[SampleReservoir, SampleReservoir]:
        pair = self._samples.get(name)
        if pair is None:
            cap = self._limits.max_samples_per_cohort
            seed = zlib.crc32(f"{self._deployment_id}\0{name}".encode())
            pair = (SampleReservoir(cap, seed), SampleReservoir(cap, seed + 1))
            self._samples[name] = pair
        return pair

    def counts(self, name: str) -> tuple[EventCounts, EventCounts]:
        """A metric's event counts per cohort (made on first use)."""
        pair = self._counts.get(name)
        if pair is None:
            pair = (EventCounts(), EventCounts())
            self._counts[name] = pair
        return pair

    def instances(self, name: str) -> tuple[InstanceTally, InstanceTally]:
        """A metric's per-instance tallies per cohort (made on first use)."""
        self._store_pending()
        return self._tallies(name)

    def _tallies(self, name: str) -> tuple[InstanceTally, InstanceTally]:
        pair = self._instances.get(name)
        if pair is None:
            cap = self._limits.max_instances_per_cohort
            pair = (InstanceTally(cap), InstanceTally(cap))
            self._instances[name] = pair
        return pair

    def instance_count(self, name: str, index: int) -> int:
        """Instances one cohort's events named for a metric (0 when none did)."""
        self._store_pending()
        pair = self._instances.get(name)
        return 0 if pair is None else len(pair[index])

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Observations seen per metric, (baseline, canary)."""
        self._store_pending()
        sizes = {name: (pair[0].seen, pair[1].seen) for name, pair in self._samples.items()}
        sizes.update({name: (pair[0].total, pair[1].total) for name, pair in self._counts.items()})
        return sizes

    def split(self) -> tuple[int, int] | None:
        """The traffic each cohort was seen to get, (canary, baseline).

        From the first ratio metric's event counts (they count every request), else from
        the first distribution metric's samples. None until both cohorts have reported: a
        canary's counts not read yet (later in the same message, or the next one) are not
        a 0% share.
        """
        self._store_pending()
        if self._counts:
            base, canary = next(iter(self._counts.values()))
            return (canary.total, base.total) if base.reports and canary.reports else None
        if self._samples:
            base_s, canary_s = next(iter(self._samples.values()))
            return (canary_s.seen, base_s.seen) if base_s.seen and canary_s.seen else None
        return None

    def clear(self) -> None:
        """Drop the data (the caps reached stay until the owner has looked)."""
        self._pending, self._waiting = {}, 0
        self._samples.clear()
        self._spread.clear()
        self._counts.clear()
        self._instances.clear()
        self._cohorts.clear()


class _CohortData:
    """One cohort's data of one metric (``coalmine.analyzers.base.CohortData``)."""

    __slots__ = ("_data", "_index", "_name")

    def __init__(self, data: Observations, name: str, index: int) -> None:
        self._data = data
        self._name = name
        self._index = index

    @property
    def good(self) -> int:
        """Good events counted."""
        return self._data.counts(self._name)[self._index].good

    @property
    def total(self) -> int:
        """All events counted."""
        return self._data.counts(self._name)[self._index].total

    @property
    def instance_count(self) -> int:
        """Instances the events named."""
        return self._data.instance_count(self._name, self._index)

    def samples(self) -> NDArray[np.float64]:
        """The samples kept."""
        return self._data.samples(self._name)[self._index].values()

    def instances(self) -> InstanceMeans:
        """Per-instance sample counts and means."""
        tally = self._data.instances(self._name)[self._index]
        return InstanceMeans(*tally.means(), names=tally.names)


class _Waiting:
    """One cohort's samples of one metric that wait to be stored.

    Per message, its samples and its instance; the events themselves are not kept.
    """

    __slots__ = ("instances", "values")

    def __init__(self) -> None:
        self.values: list[NDArray[np.float64]] = []
        self.instances: list[str | None] = []
