"""How much a service varies from one interval to the next, with no change at all.

A baseline from the service's own past is not running beside the canary: what moves the
whole service from minute to minute (a noisy neighbour, a cache refill, a burst of heavy
requests) moves one side and not the other, and samples of one interval are not
independent of each other. The rank test counts every sample as independent, so on such a
service it finds "significant" differences that are the minute's and not the change's.

The reference measures this itself. Per interval of event time, the mean and variance of
the log samples (positive samples only); the variance of the interval means beyond what
their own sampling noise explains is the between-interval variance ``s^2`` (counted only
when an analysis of variance finds it at the 1% level). The
comparison of ``m`` reference intervals with ``k`` canary intervals then carries an extra
uncertainty ``d = s sqrt(1/k + 1/m)`` on the log scale, both ways: a change must exceed
``(1 + tolerance) exp(z d) - 1`` to fail, and be shown within ``(1 + tolerance) exp(-z d)
- 1`` to promote (``z`` the one-sided normal quantile at the metric's alpha), so the
minute's noise neither rolls back a healthy change nor promotes a worse one. With no
variation between intervals ``d`` is 0 and nothing changes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import special

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["MIN_INTERVALS", "SIGNIFICANCE", "IntervalTally", "narrowed", "widened"]

MIN_INTERVALS = 4
"""Reference intervals (with two samples or more) before their variation is estimated."""

SIGNIFICANCE = 0.01
"""Level at which the interval means must differ beyond their sampling noise to count."""


class IntervalTally:
    """Per cohort and interval: count, sum and sum of squares of the log samples."""

    __slots__ = ("_cells", "_length")

    def __init__(self, length: float) -> None:
        self._length = length
        self._cells: tuple[dict[int, list[float]], dict[int, list[float]]] = ({}, {})

    def add(self, canary: bool, time: float, values: ArrayLike) -> None:
        """Tally one event's samples in the interval of its event time."""
        samples = np.asarray(values, dtype=np.float64)
        logs = np.log(samples[samples > 0.0])
        if not logs.size:
            return
        cell = self._cells[canary].setdefault(math.floor(time / self._length), [0.0, 0.0, 0.0])
        cell[0] += logs.size
        cell[1] += float(logs.sum())
        cell[2] += float(np.dot(logs, logs))

    def between(self) -> float:
        """The reference's standard deviation between interval means beyond sampling noise.

        0 with fewer than ``MIN_INTERVALS`` intervals holding two samples or more, and 0
        unless the interval means differ more than their sampling noise explains (one-way
        analysis of variance at ``SIGNIFICANCE``): a service with no such variation keeps
        its tolerances whole.
        """
        cells = np.array([c for c in self._cells[0].values() if c[0] >= 2.0])
        if len(cells) < MIN_INTERVALS:
            return 0.0
        n, total, squares = cells[:, 0], cells[:, 1], cells[:, 2]
        means = total / n
        within_sums = np.maximum(squares - n * means * means, 0.0)
        within = within_sums / (n - 1.0)
        m, size = len(cells), float(n.sum())
        grand = float(total.sum()) / size
        pooled = float(within_sums.sum()) / (size - m)
        f = float(np.dot(n, (means - grand) ** 2)) / (m - 1) / pooled if pooled > 0 else math.inf
        if float(special.fdtrc(m - 1, size - m, f)) >= SIGNIFICANCE:
            return 0.0
        excess = float(np.var(means, ddof=1) - np.mean(within / n))
        return math.sqrt(excess) if excess > 0.0 else 0.0

    def uncertainty(self) -> float:
        """``d``: the between-interval spread of the comparison on the log scale."""
        spread = self.between()
        k, m = len(self._cells[1]), len(self._cells[0])
        if spread == 0.0 or k == 0:
            return 0.0
        return spread * math.sqrt(1.0 / k + 1.0 / m)


def widened(tolerance: float, uncertainty: float, alpha: float) -> float:
    """``tolerance`` widened by the between-interval ``uncertainty`` at one-sided ``alpha``."""
    if uncertainty <= 0.0:
        return tolerance
    z = float(special.ndtri(1.0 - alpha))
    return (1.0 + tolerance) * math.exp(z * uncertainty) - 1.0


def narrowed(tolerance: float, uncertainty: float, alpha: float) -> float:
    """``tolerance`` narrowed by the between-interval ``uncertainty`` (may fall below 0)."""
    if uncertainty <= 0.0:
        return tolerance
    z = float(special.ndtri(1.0 - alpha))
    return (1.0 + tolerance) * math.exp(-z * uncertainty) - 1.0
