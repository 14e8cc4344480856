"""The Hodges-Lehmann shift of canary over baseline and its distribution-free interval.

Both are order statistics of the ``n * m`` differences ``canary_i - baseline_j``. They are
found by selection in X+Y without building the differences (860 MB at n = m = 1e4), so
memory stays O(n + m), and they are exact: bit-identical to sorting all the differences.

Public: ``hodges_lehmann`` (checks its input), ``hodges_lehmann_sorted`` (sorted, finite
cohorts: the analyzer's path), ``ShiftEstimate``, and ``PairSums``, the order statistics
of X+Y, with ``Tuning``, the sizes that steer its search.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import special

if TYPE_CHECKING:
    from collections.abc import Iterable

    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "MAX_MAGNITUDE",
    "PairSums",
    "ShiftEstimate",
    "Tuning",
    "hodges_lehmann",
    "hodges_lehmann_sorted",
]

MAX_MAGNITUDE = 2.0**1000
"""Largest accepted magnitude: sums of three values and their rounding margins stay finite."""

_SAMPLE_MIN, _SAMPLE_MAX = 1 << 10, 1 << 14
"""Pivot sample sizes per selection round; a round keeps about 3 / sqrt(size) of the pairs."""

_KEPT_CUTS = 6
"""Coarse cuts kept to start later selections from: the interval ends lie near the median."""

_EXACT_MAX = 2.0**49
"""Whole numbers up to this magnitude add and subtract exactly, half-integers included."""


@dataclass(frozen=True, slots=True)
class Tuning:
    """Sizes that steer the search for order statistics of X+Y.

    The defaults are the ones the analyzer runs with; tests shrink them so that small data
    takes every path (many rounds, stalled brackets, ties, the fallback).

    Attributes:
        build_limit: up to this many pairs are built and partitioned outright (None:
            ``n + m``, at least 2^15); also where the sampling selection stops narrowing.
        window: scale of a bracket, in pairs: pivots aim a quarter of it either side of a
            target, and the pairs between two pivots are built and partitioned outright up
            to four times it (or four times the rows, whichever is more: building is
            cheaper than another count).
        grid_side: evenly spaced order statistics per cohort whose pair sums give the
            first pivots.
        rounds: counting rounds of the bracketing search before the sampling selection
            takes over.
    """

    build_limit: int | None = None
    window: int = 4096
    grid_side: int = 64
    rounds: int = 8


_TUNED = Tuning()


@dataclass(frozen=True, slots=True)
class ShiftEstimate:
    """Hodges-Lehmann location shift of canary over baseline, with its interval.

    Attributes:
        estimate: median of all pairwise differences ``canary_i - baseline_j``.
        low: lower end of the distribution-free interval.
        high: upper end of the distribution-free interval.
        confidence: two-sided coverage the interval was built for.
    """

    estimate: float
    low: float
    high: float
    confidence: float


def hodges_lehmann(baseline: ArrayLike, canary: ArrayLike, confidence: float) -> ShiftEstimate:
    """Hodges-Lehmann shift and its distribution-free confidence interval.

    The shift is the median of the ``n * m`` differences ``canary_i - baseline_j``; the
    interval is ``[D_(k), D_(nm-k+1)]`` with
    ``k = floor(nm/2 - z_{1-a/2} sqrt(nm(n+m+1)/12))`` (at least 1), ``a = 1 - confidence``.
    The order statistics are exact (bit-identical to sorting all differences) but found by
    selection in X+Y (``PairSums``), so memory stays O(n + m). All four order statistics
    are bracketed together between pivots of exactly counted rank, two rounds of
    ``searchsorted`` on realistic data; a sampling selection is the fallback.

    Args:
        baseline: baseline samples (1-D, finite, magnitude below 1e301).
        canary: canary samples (same constraints).
        confidence: two-sided coverage of the interval, in (0, 1).

    Raises:
        ValueError: a cohort is empty, not 1-D, not finite or too large, or ``confidence``
            is outside (0, 1).
    """
    b = _as_sample(baseline, "baseline")
    c = _as_sample(canary, "canary")
    _check_values(b, c)
    return hodges_lehmann_sorted(np.sort(b), np.sort(c), confidence)


def hodges_lehmann_sorted(
    b: NDArray[np.float64], c: NDArray[np.float64], confidence: float
) -> ShiftEstimate:
    """Hodges-Lehmann on sorted, finite cohorts (see ``hodges_lehmann``).

    Raises:
        ValueError: ``confidence`` is outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n, m = int(c.size), int(b.size)
    nm = n * m
    # c_i - b_j == c_i + (-b_j) exactly, so X+Y with -b ascending holds the very differences
    # a brute-force np.subtract.outer would compute. Addition commutes, so the smaller
    # cohort can index the rows: counting costs O(rows * log(columns)).
    neg_b = -b[::-1]
    pairs = PairSums(c, neg_b) if n <= m else PairSums(neg_b, c)
    z = float(special.ndtri(0.5 + confidence / 2.0))
    k = max(1, math.floor(nm / 2.0 - z * math.sqrt(nm * (n + m + 1) / 12.0)))
    k = min(k, (nm + 1) // 2)
    low_rank, high_rank = k, nm - k + 1
    mid_low, mid_high = (nm + 1) // 2, nm // 2 + 1  # the same rank when nm is odd
    found = pairs.order_statistics((low_rank, high_rank, mid_low, mid_high))
    low, high = found[low_rank], found[high_rank]
    estimate = (found[mid_low] + found[mid_high]) / 2.0 if nm % 2 == 0 else found[mid_low]
    return ShiftEstimate(estimate=estimate, low=low, high=high, confidence=confidence)


@dataclass(slots=True)
class _Window:
    """Per-row active column ranges ``[lo_i, hi_i)`` of a selection in X+Y.

    ``below`` counts the pairs left of the ranges: all of them rank before the target.
    """

    lo: NDArray[np.intp]
    hi: NDArray[np.intp]
    below: int

    def size(self) -> int:
        """Number of active pairs."""
        return int((self.hi - self.lo).sum())


class PairSums:
    """Order statistics of the multiset {x_i + y_j} of two sorted arrays, without building it.

    ``x`` and ``y`` are the two sorted arrays. ``order_statistics`` first tries the
    bracketing search (``bracketed``: all ranks at once, usually two counting rounds); if
    that gives up, each rank is found by the sampling selection (``select``).

    Selection keeps, per row ``i``, an active column range ``[lo_i, hi_i)`` known to contain
    every pair that may still be the target. Each round samples active pairs, takes two
    sample quantiles that bracket the target's rank, and counts the pairs below each pivot
    with ``searchsorted`` (O(n log m)); the active set shrinks to a few percent per round, and
    once it is O(n + m) it is materialised and finished with ``np.partition``.

    Counting is exact for the *rounded* sums ``fl(x_i + y_j)``: rounding is monotone, so each
    row is still sorted, and ``searchsorted`` on ``fl(t - x_i)`` only brackets the boundary;
    the few ambiguous columns are settled by a bisection on the computed sums.

    The first cuts are kept: the interval ends lie close to the median, so a selection for
    one of them starts inside the window the median's first rounds left.
    """

    __slots__ = ("_cuts", "_limit", "_m", "_n", "_sample_size", "_tuning", "x", "y")

    def __init__(
        self, x: NDArray[np.float64], y: NDArray[np.float64], tuning: Tuning = _TUNED
    ) -> None:
        self.x = x
        self.y = y
        self._n = int(x.size)
        self._m = int(y.size)
        self._tuning = tuning
        limit = tuning.build_limit
        self._limit = max(self._n + self._m, 1 << 15) if limit is None else limit
        # Bigger samples mean fewer O(n log m) counting rounds but cost O(n + s log s).
        self._sample_size = min(_SAMPLE_MAX, max(_SAMPLE_MIN, (self._n + self._m) // 8))
        self._cuts: list[tuple[int, NDArray[np.intp]]] = []  # (pairs counted, per-row counts)

    def count(
        self,
        t: float,
        *,
        strict: bool,
        lo: NDArray[np.intp] | None = None,
        hi: NDArray[np.intp] | None = None,
    ) -> NDArray[np.intp]:
        """Per row, the number of columns with ``fl(x_i + y_j) <= t`` (``< t`` if strict).

        ``lo`` / ``hi`` are bounds known to hold; they only narrow the search among
        ambiguous columns (long runs of ties).
        """
        # Rows are handled in reverse so that the keys t - x_i ascend: searchsorted is
        # several times faster on sorted keys.
        x, y, m = self.x[::-1], self.y, self._m
        u = t - x
        margin = 4.0 * (np.spacing(np.abs(u)) + np.spacing(abs(t)))
        # Columns with y_j <= u_i - margin sum to < t; from u_i + margin on they sum to > t.
        # Only columns in between are ambiguous, and usually there are none.
        upper = u + margin
        found: NDArray[np.intp] = np.searchsorted(y, u - margin, side="right")
        rows = np.flatnonzero((found < m) & (y[np.minimum(found, m - 1)] < upper))
        if rows.size:
            left = found[rows]
            right: NDArray[np.intp] = np.searchsorted(y, upper[rows], side="left")
            if lo is not None:
                left = np.maximum(left, lo[::-1][rows])
            if hi is not None:
                right = np.minimum(right, hi[::-1][rows])
            found[rows] = self._bisect(x[rows], t, left, right, strict=strict)
        return found[::-1]

    def _bisect(
        self,
        x: NDArray[np.float64],
        t: float,
        left: NDArray[np.intp],
        right: NDArray[np.intp],
        *,
        strict: bool,
    ) -> NDArray[np.intp]:
        """Per row, the first column in ``[left, right)`` whose computed sum exceeds ``t``."""
        y, last = self.y, self._m - 1
        while True:
            open_ = left < right
            if not open_.any():
                return left
            mid = (left + right) // 2
            sums = x + y[np.minimum(mid, last)]
            inside = (sums < t) if strict else (sums <= t)
            left = np.where(open_ & inside, mid + 1, left)
            right = np.where(open_ & ~inside, mid, right)

    def order_statistics(self, ranks: Iterable[int]) -> dict[int, float]:
        """The sums of the given 1-based ranks, keyed by rank."""
        wanted = sorted(set(ranks))
        if self._n * self._m <= self._limit:  # small enough to build outright
            sums = np.add.outer(self.x, self.y).ravel()
            sums.partition([r - 1 for r in wanted])
            return {r: float(sums[r - 1]) for r in wanted}
        bracketed = _Brackets(self, self._tuning).search(wanted)
        if bracketed is not None:
            return bracketed
        return self._selected(wanted)

    def bracketed(self, ranks: Iterable[int]) -> dict[int, float] | None:
        """The sums of the given ranks by the bracketing search alone (None: it gave up)."""
        return _Brackets(self, self._tuning).search(sorted(set(ranks)))

    def _selected(self, wanted: list[int]) -> dict[int, float]:
        """The order statistics by sampling selection (``select``), one rank at a time."""
        found: dict[int, float] = {}
        # Central ranks first: their coarse cuts give the outer ranks a head start.
        middle = self._n * self._m + 1
        for rank in sorted(wanted, key=lambda r: abs(2 * r - middle)):
            previous = found.get(rank - 1)
            found[rank] = (
                self.select(rank) if previous is None else self._successor(previous, rank - 1)
            )
        return found

    def select(self, k: int) -> float:
        """The k-th smallest sum (1-based)."""
        n, m = self._n, self._m
        rng = np.random.default_rng([n, m, k])  # deterministic: same data, same work
        window = self._start(k)
        stalled = False
        while (active := window.size()) > self._limit:
            sample = self._sample(window, active, rng)
            s = sample.size
            q = (k - window.below) / active  # the target's quantile inside the active set
            centre = q * s
            if stalled:  # ties can keep a bracket from shrinking: cut at one value instead
                i_lo = i_hi = min(s - 1, max(0, round(centre)))
            else:
                half = 3.0 * math.sqrt(s * q * (1.0 - q)) + 2.0
                i_lo, i_hi = math.floor(centre - half), math.ceil(centre + half)
            t_lo = float(sample[i_lo]) if i_lo >= 0 else -math.inf
            t_hi = float(sample[i_hi]) if i_hi < s else math.inf
            if i_lo >= 0 and self._cut(window, k, t_lo, strict=True):
                continue  # target < t_lo
            if i_hi < s and not self._cut(window, k, t_hi, strict=False):
                continue  # target > t_hi
            if t_lo == t_hi:
                return t_lo  # fewer than k sums below it, at least k at or below it
            stalled = window.size() > active // 2
        return self._materialised(window, k - window.below)

    def _start(self, k: int) -> _Window:
        """The tightest window for rank k that earlier cuts allow."""
        window = _Window(np.zeros(self._n, dtype=np.intp), np.full(self._n, self._m, np.intp), 0)
        hi_total = self._n * self._m
        for total, counts in self._cuts:  # nested prefix sets: any two make a valid window
            if window.below < total < k:
                window.lo, window.below = counts, total
            elif k <= total < hi_total:
                window.hi, hi_total = counts, total
        return window

    def _cut(self, window: _Window, k: int, t: float, *, strict: bool) -> bool:
        """Narrow the window at pivot ``t``; True if the target is among the sums counted."""
        counts = self.count(t, strict=strict, lo=window.lo, hi=window.hi)
        total = int(counts.sum())
        if len(self._cuts) < _KEPT_CUTS:
            self._cuts.append((total, counts))
        if k <= total:
            window.hi = counts
            return True
        window.lo, window.below = counts, total
        return False

    def _successor(self, value: float, k: int) -> float:
        """The (k+1)-th smallest sum, given that ``value`` is the k-th."""
        le = self.count(value, strict=False)
        if int(le.sum()) > k:
            return value
        rows = np.flatnonzero(le < self._m)
        return float(np.min(self.x[rows] + self.y[le[rows]]))

    def _sample(
        self, window: _Window, active: int, rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """Sorted sums of active pairs drawn uniformly (with replacement)."""
        lo = window.lo
        width = window.hi - lo
        ends = np.cumsum(width)
        draws = rng.integers(0, active, size=self._sample_size)
        rows = np.searchsorted(ends, draws, side="right")
        cols = lo[rows] + (draws - (ends[rows] - width[rows]))
        return np.sort(self.x[rows] + self.y[cols])

    def window_sums(self, lo: NDArray[np.intp], hi: NDArray[np.intp]) -> NDArray[np.float64]:
        """The sums of the pairs in the per-row column ranges ``[lo_i, hi_i)``, unordered."""
        width = hi - lo
        rows = np.flatnonzero(width)
        width = width[rows]
        starts = np.cumsum(width) - width
        cols = np.arange(int(starts[-1] + width[-1])) - np.repeat(starts - lo[rows], width)
        sums: NDArray[np.float64] = self.x[np.repeat(rows, width)] + self.y[cols]
        return sums

    def _materialised(self, window: _Window, rank: int) -> float:
        """The rank-th smallest active sum, by building the (few) active pairs."""
        lo = window.lo
        width = window.hi - lo
        total = int(width.sum())
        rows = np.repeat(np.arange(self._n), width)
        starts = np.cumsum(width) - width
        cols = np.arange(total) - np.repeat(starts - lo, width)
        sums = self.x[rows] + self.y[cols]
        return float(np.partition(sums, rank - 1)[rank - 1])


class _Brackets:
    """Order statistics of X+Y by bracketing them between pivots of known rank.

    A first pivot per target comes from the sums of two grids of evenly spaced order
    statistics (``Tuning.grid_side`` per cohort), whose quantiles lie close to those of all the
    sums. Its exact count says how far off it is; the next pivots go that many pairs
    further at the local slope (value per pair: from the grid, then between the tightest
    pivots so far), a few thousand pairs either side of the target, which are then built
    and partitioned. All targets' new pivots are counted in one ``searchsorted``.

    A pivot ``t`` cuts row ``i`` at ``searchsorted(y, fl(t - x_i))``. When every value is a
    whole number of moderate size (latency in whole milliseconds), sums and differences
    are exact and pivots sit at half-integers: the cuts are exact, and a target between
    two pivots one apart is the whole number between them, however many pairs tie on
    it. Otherwise a cut may misplace pairs whose sum lies within a few ulps of ``t``
    (``_fuzz``): an answer is accepted only if it lies further than that from both its
    pivots, which makes it exact (every pair left of the lower cut is then smaller, every
    pair right of the upper cut larger). Ties that keep pivots from closing in are
    checked with exact counts (``PairSums.count``); a pivot found among near-ties of an
    answer is replaced by pivots clear of them. A search that does not settle within
    ``Tuning.rounds`` rounds returns None, and the caller falls back to the sampling selection.
    """

    __slots__ = (
        "_banned",
        "_cuts",
        "_exact",
        "_grid",
        "_pairs",
        "_per_cell",
        "_span",
        "_t",
        "_totals",
        "_tuning",
        "_x_abs",
    )

    def __init__(self, pairs: PairSums, tuning: Tuning) -> None:
        self._pairs = pairs
        self._tuning = tuning
        x, y = pairs.x, pairs.y
        n, m = int(x.size), int(y.size)
        self._exact = _whole(x) and _whole(y)
        self._x_abs = max(abs(float(x[0])), abs(float(x[-1])))
        self._span = float(x[-1] - x[0]) + float(y[-1] - y[0])
        grid_side = tuning.grid_side
        side = grid_side if n + m <= 4 * grid_side**2 else 2 * grid_side
        self._grid = np.add.outer(_spaced(x, side), _spaced(y, side)).ravel()
        self._per_cell = n * m / self._grid.size
        # Pivots counted so far, ascending, per pivot its total and per-row cut. The ends
        # are just below the smallest sum (no pair at or below it) and just above the
        # largest (every pair): rounding is monotone, so those are fl(x_0 + y_0) and
        # fl(x_last + y_last), and the cuts there are known.
        self._t: list[float] = [
            self._below(float(x[0] + y[0])),
            self._above(float(x[-1] + y[-1])),
        ]
        self._totals: list[int] = [0, n * m]
        self._cuts: list[NDArray[np.intp]] = [
            np.zeros(n, dtype=np.intp),
            np.full(n, m, dtype=np.intp),
        ]
        self._banned: set[float] = set()  # pivots found among near-ties of an answer

    def search(self, wanted: list[int]) -> dict[int, float] | None:
        """The sums of the given ranks (ascending), or None to fall back."""
        groups = _rank_groups(wanted, self._tuning.window)
        # Only the grid cells the groups read need to be in place (cheaper than a sort).
        cells = {c for group in groups for c in self._cells(group)}
        self._grid.partition(sorted(cells))
        self._count([self._probe(group) for group in groups])
        found: dict[int, float] = {}
        windows: dict[tuple[int, ...], int] = {}
        for _ in range(self._tuning.rounds):
            pivots: list[float] = []
            for group in groups:
                if group[0] not in found:
                    values, more = self._step(group, windows)
                    found.update(values)
                    pivots += more
            if not pivots:
                return found if len(found) == len(wanted) else None
            self._count(pivots)
        return None

    def _step(
        self, group: tuple[int, ...], windows: dict[tuple[int, ...], int]
    ) -> tuple[dict[int, float], list[float]]:
        """One round for one group: its sums if settled, else the pivots to count next."""
        nm = self._totals[-1]
        limit = 4 * max(self._tuning.window, self._pairs.x.size)  # building beats counting
        a, b = self._bracket(group)
        window = self._totals[b] - self._totals[a]
        stalled = windows.get(group, nm + 1) < 2 * window
        windows[group] = window
        if self._exact and self._t[b] - self._t[a] <= 1.0:
            return dict.fromkeys(group, self._t[a] + 0.5), []  # one whole number between
        if window <= limit:
            return self._settled(group, a, b)
        proposed = [] if stalled else self._next_pivots(group, a, b, stalled=False)
        if proposed:
            return {}, proposed
        # Not closing in: a tie, a cluster of near-ties, or a poor slope.
        if self._exact or not self._tied_near(group):
            return {}, self._next_pivots(group, a, b, stalled=True)
        tied, pivot = self._tie(group, a, b)
        if tied is not None:
            return tied, []
        if window <= 32 * limit:
            return self._settled(group, a, b)
        return {}, [pivot, *self._next_pivots(group, a, b, stalled=True)]

    def _settled(
        self, group: tuple[int, ...], a: int, b: int
    ) -> tuple[dict[int, float], list[float]]:
        """The group's sums from its window; or, too close to a pivot, pivots to replace it."""
        values = self._settle(group, a, b)
        if values is not None:
            return values, []
        return {}, self._unsettled(group, a, b)

    def _place(self, rank: float) -> float:
        """Where a rank among all the sums falls in the sorted grid (a cell index)."""
        return (rank - 0.5) / self._per_cell - 0.5

    def _cells(self, group: tuple[int, ...]) -> tuple[int, ...]:
        """Grid cells read for a group: its probe's two, and those of its slope and ties."""
        size = self._grid.size
        place = self._place(sum(group) / len(group))
        probe = min(max(math.floor(place), 0), size - 2)
        centre = min(max(round(self._place(group[0])), 1), size - 2)
        across = max(8, size // 100)
        start = min(max(centre - across // 2, 0), size - 1 - across)
        return probe, probe + 1, centre - 1, centre + 1, start, start + across

    def _probe(self, group: tuple[int, ...]) -> float:
        """The grid's estimate of the sum at the group's ranks, clear of grid values."""
        grid = self._grid
        place = self._place(sum(group) / len(group))
        i = self._cells(group)[0]
        frac = min(max(place - i, 0.0), 1.0)
        low, high = float(grid[i]), float(grid[i + 1])
        t = low + (high - low) * frac
        if self._exact:
            return math.floor(t) + 0.5
        return self._below(t) if t in {low, high} else t

    def _below(self, v: float) -> float:
        """A pivot just below the value ``v``, clear of pairs tied with it."""
        return math.ceil(v) - 0.5 if self._exact else v - self._nudge(v)

    def _above(self, v: float) -> float:
        """A pivot just above the value ``v``, clear of pairs tied with it."""
        return math.floor(v) + 0.5 if self._exact else v + self._nudge(v)

    def _nudge(self, v: float) -> float:
        """Far enough past ``v`` to clear its near-ties (sums a few ulps apart)."""
        return 16.0 * self._fuzz(v) + self._span * 2.0**-40

    def _count(self, pivots: list[float]) -> None:
        """Count the pairs at or below each new pivot (per row) and file them in order."""
        fresh = sorted({t for t in pivots if math.isfinite(t)} - set(self._t) - self._banned)
        if not fresh:
            return
        pairs = self._pairs
        x, y, n = pairs.x, pairs.y, pairs.x.size
        t = np.asarray(fresh)
        # Rows in reverse make each pivot's keys ascend: searchsorted runs faster on them.
        keys = (t[:, None] - x[None, ::-1]).ravel()
        cuts = np.searchsorted(y, keys, side="right").reshape(t.size, n)[:, ::-1]
        totals = cuts.sum(axis=1)
        for value, total, cut in zip(fresh, totals.tolist(), cuts, strict=True):
            at = bisect.bisect_left(self._t, value)
            self._t.insert(at, value)
            self._totals.insert(at, int(total))
            self._cuts.insert(at, cut)

    def _bracket(self, group: tuple[int, ...]) -> tuple[int, int]:
        """Indices of the tightest pivots with fewer pairs than the group's ranks, and enough."""
        a = bisect.bisect_left(self._totals, group[0]) - 1  # last total < lowest rank
        b = bisect.bisect_left(self._totals, group[-1])  # first total >= highest rank
        return a, b

    def _fuzz(self, t: float) -> float:
        """How far from ``t`` a pair may lie on the wrong side of its cut."""
        if self._exact:
            return 0.0
        return 4.0 * (float(np.spacing(abs(t) + self._x_abs) * 2.0) + float(np.spacing(abs(t))))

    def _window_values(self, group: tuple[int, ...], a: int, b: int) -> list[float]:
        """Build the pairs between pivots ``a`` and ``b``; the group's ranks among them."""
        below = self._totals[a]
        sums = self._pairs.window_sums(self._cuts[a], self._cuts[b])
        kth = [r - below - 1 for r in group]
        sums.partition(kth)
        return [float(sums[k]) for k in kth]

    def _settle(self, group: tuple[int, ...], a: int, b: int) -> dict[int, float] | None:
        """The group's ranks from the pairs between pivots ``a`` and ``b``, if certain."""
        values = self._window_values(group, a, b)
        low, high = self._t[a] + self._fuzz(self._t[a]), self._t[b] - self._fuzz(self._t[b])
        if all(low < v < high for v in values):
            return dict(zip(group, values, strict=True))
        return None  # too close to a pivot to be sure of its rank

    def _unsettled(self, group: tuple[int, ...], a: int, b: int) -> list[float]:
        """Drop a pivot that lies among near-ties of an answer; pivots clear of them."""
        values = self._window_values(group, a, b)
        t_b = self._t[b]
        if any(v >= t_b - self._fuzz(t_b) for v in values):
            self._drop(b)
        if any(v <= self._t[a] + self._fuzz(self._t[a]) for v in values):
            self._drop(a)
        return [p for v in values for p in (self._below(v), self._above(v))]

    def _drop(self, i: int) -> None:
        self._banned.add(self._t[i])
        del self._t[i], self._totals[i], self._cuts[i]

    def _tie(self, group: tuple[int, ...], a: int, b: int) -> tuple[dict[int, float] | None, float]:
        """Whether the group's ranks all fall on one (tied) sum inside the window.

        The candidate is the pair at the group's place in the window, taken row by row:
        when pivots stop closing in, most of the window is one tied value. Counting pairs
        below and at it exactly settles the question; if not, the pivot returned (just
        past the candidate, on the target's side) keeps its ties out of the window.
        """
        pairs = self._pairs
        lo, hi = self._cuts[a], self._cuts[b]
        width = hi - lo
        ends = np.cumsum(width)
        place = group[0] - self._totals[a] - 1  # 0-based within the window
        row = int(np.searchsorted(ends, place, side="right"))
        col = int(lo[row] + place - (ends[row] - width[row]))
        value = float(pairs.x[row] + pairs.y[col])
        below = int(pairs.count(value, strict=True).sum())
        at_or_below = int(pairs.count(value, strict=False).sum())
        if below < group[0] and group[-1] <= at_or_below:
            return dict.fromkeys(group, value), math.nan
        return None, self._above(value) if at_or_below < group[0] else self._below(value)

    def _next_pivots(self, group: tuple[int, ...], a: int, b: int, *, stalled: bool) -> list[float]:
        """Pivots a little either side of where the group's ranks should lie."""
        t_a, t_b = self._t[a], self._t[b]
        c_a, c_b = self._totals[a], self._totals[b]
        from_a = group[0] - c_a <= c_b - group[-1]  # the pivot nearer (in pairs)
        nm = self._totals[-1]
        inside = c_b - c_a
        quarter = self._tuning.window / 4.0  # pairs either side of the targets
        if c_a > 0 and c_b < nm and inside <= nm // 8:
            # Interpolate between the pivots: over a small share of all the pairs the
            # count is near linear (its curvature error grows with the share) up to the
            # discreteness of the pairs.
            slope = (t_b - t_a) / inside  # value per pair
            margin = quarter + 3.0 * math.sqrt(inside) + 2.0 * inside * inside / nm
        else:
            # Step from the nearer pivot at the grid's slope, half the step more for its
            # error.
            slope = self._grid_slope(group)
            margin = quarter + min(group[0] - c_a, c_b - group[-1]) / 2.0
        if from_a:
            low_t = t_a + (group[0] - c_a) * slope
            high_t = t_a + (group[-1] - c_a) * slope
        else:
            low_t = t_b - (c_b - group[0]) * slope
            high_t = t_b - (c_b - group[-1]) * slope
        reach = margin * slope
        wanted = [self._below(low_t - reach), self._above(high_t + reach)]
        if self._exact:  # at least one whole number further than the pivot stepped from
            if from_a:
                wanted[1] = max(wanted[1], t_a + 1.0)
            else:
                wanted[0] = min(wanted[0], t_b - 1.0)
            if t_b - t_a <= 3.0:  # every whole number between: settled next round
                wanted = [t_a + i for i in range(1, int(t_b - t_a))]
        elif stalled:  # halve the interval as well
            wanted.append(self._above((t_a + t_b) / 2.0))
        return [t for t in wanted if t_a < t < t_b and t not in self._t]

    def _tied_near(self, group: tuple[int, ...]) -> bool:
        """Whether the grid shows (near-)ties around the group's ranks."""
        _, _, before, after, _, _ = self._cells(group)
        low, high = float(self._grid[before]), float(self._grid[after])
        return high - low <= self._nudge(low)

    def _grid_slope(self, group: tuple[int, ...]) -> float:
        """Value per pair near the group's ranks, from the grid (1% of its cells across)."""
        _, _, _, _, start, end = self._cells(group)
        return float(self._grid[end] - self._grid[start]) / ((end - start) * self._per_cell)


def _as_sample(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    return arr


def _check_values(b: NDArray[np.float64], c: NDArray[np.float64]) -> None:
    for arr in (b, c):
        if not np.isfinite(arr).all():
            raise ValueError("samples must be finite")
        if np.abs(arr).max() > MAX_MAGNITUDE:
            raise ValueError("sample magnitudes must stay below 1e301")


def _rank_groups(ranks: list[int], window: int) -> list[tuple[int, ...]]:
    """Ascending ranks, grouped where they lie close enough to share one window."""
    groups: list[list[int]] = []
    for rank in ranks:
        if groups and rank - groups[-1][0] <= window // 4:
            groups[-1].append(rank)
        else:
            groups.append([rank])
    return [tuple(group) for group in groups]


def _spaced(x: NDArray[np.float64], count: int) -> NDArray[np.float64]:
    """At most ``count`` evenly spaced order statistics of a sorted array (midpoints)."""
    if x.size <= count:
        return x
    return x[((np.arange(count) + 0.5) * (x.size / count)).astype(np.intp)]


def _whole(x: NDArray[np.float64]) -> bool:
    """True when every value is a whole number of magnitude at most ``_EXACT_MAX``."""
    return bool(max(-x[0], x[-1]) <= _EXACT_MAX and np.array_equal(x, np.floor(x)))
