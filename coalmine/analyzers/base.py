"""The analyzer interface: one metric's two cohorts in, one ``MetricResult`` out.

A deployment keeps each metric's observations, one ``CohortData`` per cohort, and one
``Analyzer`` per metric, made by the registry (``coalmine.analyzers.registry``) for the
metric's kind. It tells the analyzer of every message and, at each look, hands it both
cohorts and the ``Look``. The analyzer keeps its own evidence between looks (sequential
tests, burn-rate windows), built only from what it is given: no clock, no I/O, so a
replay rebuilds the same evidence and the same results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np
    from numpy.typing import NDArray

    from coalmine.analyzers.burn_rate import BurnWindow
    from coalmine.analyzers.instances import InstanceMeans
    from coalmine.analyzers.result import MetricResult


class CohortData(Protocol):
    """One cohort's observations of one metric so far; each analyzer reads its own part."""

    @property
    def good(self) -> int:
        """Good events counted (ratio metrics)."""
        ...

    @property
    def total(self) -> int:
        """All events counted (ratio metrics)."""
        ...

    @property
    def instance_count(self) -> int:
        """Instances the samples came from, when their events named them."""
        ...

    def samples(self) -> NDArray[np.float64]:
        """The samples kept (distribution metrics): all, or a uniform sample past a cap."""
        ...

    def instances(self) -> InstanceMeans:
        """Per-instance sample counts and means (distribution metrics)."""
        ...


@dataclass(frozen=True, slots=True)
class Look:
    """What a look is judged at: the significance level and its place in the canary's life."""

    alpha: float
    """Each metric's share of the profile's false-alarm budget."""
    window: BurnWindow
    """Event time of the look, time since the start, planned length, traffic share."""
    past: bool = False
    """The baseline is the service's own past (a reference window), not a cohort beside it."""
    drift: Mapping[str, float] = field(default_factory=dict)
    """Per distribution metric of a past baseline: the uncertainty its variation between
    intervals adds to the comparison (:mod:`coalmine.analyzers.drift`); absent: none."""


class Analyzer(Protocol):
    """Judges one metric of one deployment, look after look, keeping its own evidence."""

    def urgent(self, good: int, total: int, /) -> bool:
        """Would one canary message with these counts be worth judging before others?

        Asked before the message is stored, and without effect.
        """
        ...

    def observe(
        self, time: float, canary: bool, good: int, total: int, stored: CohortData, /
    ) -> bool:
        """Take one message of the metric at its event time (its data already ``stored``).

        ``good`` and ``total`` are the message's counts (0 for samples). True when the
        metric, being critical, is worth checking now rather than at the next judgement.
        """
        ...

    def analyze(self, baseline: CohortData, canary: CohortData, look: Look, /) -> MetricResult:
        """The metric's result at this look."""
        ...

    def fails(self, baseline: CohortData, canary: CohortData, look: Look, /) -> bool:
        """Would ``analyze`` fail the metric? The same decision, perhaps without the detail."""
        ...
