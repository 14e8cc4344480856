"""The Hodges-Lehmann shift: exact against brute force, by every path of the selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from coalmine.analyzers.hodges_lehmann import PairSums, Tuning, hodges_lehmann


def _brute_force(
    baseline: np.ndarray, canary: np.ndarray, confidence: float
) -> tuple[float, float, float]:
    diffs = np.sort(np.subtract.outer(canary, baseline).ravel())
    nm, n, m = diffs.size, canary.size, baseline.size
    z = special.ndtri(0.5 + confidence / 2)
    k = max(1, math.floor(nm / 2 - z * math.sqrt(nm * (n + m + 1) / 12)))
    return float(np.median(diffs)), float(diffs[k - 1]), float(diffs[nm - k])


def _assert_exact(baseline: np.ndarray, canary: np.ndarray, confidence: float) -> None:
    shift = hodges_lehmann(baseline, canary, confidence)
    # Exact order statistics: equal to the brute-force sort bit for bit, no tolerance.
    assert (shift.estimate, shift.low, shift.high) == _brute_force(baseline, canary, confidence)
    assert shift.low <= shift.estimate <= shift.high
    assert shift.confidence == confidence


tied = st.integers(-5, 5).map(float)
spread = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
cohort = st.one_of(
    st.lists(tied, min_size=1, max_size=40), st.lists(spread, min_size=1, max_size=40)
)


@settings(max_examples=300, deadline=None)
@given(baseline=cohort, canary=cohort, confidence=st.floats(0.5, 0.995))
def test_hodges_lehmann_matches_brute_force(
    baseline: list[float], canary: list[float], confidence: float
) -> None:
    _assert_exact(np.array(baseline), np.array(canary), confidence)


@pytest.mark.parametrize("seed", range(8))
def test_hodges_lehmann_larger_samples_match_brute_force(seed: int) -> None:
    # n*m ~ 1e5 is beyond the "build outright" size, so the X+Y selection runs.
    rng = np.random.default_rng(seed)
    n_b, n_c = (int(v) for v in rng.integers(250, 400, size=2))
    match seed % 4:
        case 0:
            baseline, canary = rng.lognormal(0, 0.5, n_b), rng.lognormal(0.1, 0.5, n_c)
        case 1:
            baseline, canary = rng.poisson(20, n_b) * 1.0, rng.poisson(22, n_c) * 1.0
        case 2:  # large offset, tiny spread: sums round, the exact count must still hold
            baseline, canary = 1e9 + rng.normal(size=n_b), rng.normal(size=n_c) * 1e-3
        case _:
            baseline, canary = rng.integers(0, 2, n_b) * 1.0, rng.integers(0, 2, n_c) * 1.0
    _assert_exact(baseline, canary, 0.9)


@pytest.mark.parametrize("seed", range(4))
def test_selection_in_x_plus_y_is_exact(seed: int) -> None:
    # A tiny materialisation limit forces many selection rounds, including stalled
    # brackets on heavily tied sums.
    rng = np.random.default_rng(seed)
    x = np.sort(rng.integers(0, 3 + 50 * (seed % 2), 150) * 1.0)
    y = np.sort(rng.normal(size=120) if seed > 1 else rng.integers(0, 4, 120) * 1.0)
    pairs = PairSums(x, y, Tuning(build_limit=10))
    sums = np.sort(np.add.outer(x, y).ravel())
    ranks = [1, 2, sums.size // 2, sums.size - 1, sums.size, *rng.integers(1, sums.size, 6)]
    for rank in ranks:
        assert pairs.select(int(rank)) == sums[rank - 1]


def _cohorts(kind: str, rng: np.random.Generator, n_b: int, n_c: int) -> tuple[np.ndarray, ...]:
    """Data that takes each path of the bracketing search."""
    match kind:
        case "continuous":
            return rng.lognormal(0, 0.5, n_b), rng.lognormal(0.05, 0.5, n_c)
        case "whole_ms":  # exact arithmetic, heavy ties: pivots at half-integers
            b = np.rint(rng.lognormal(np.log(100), 0.5, n_b))
            return b, np.rint(rng.lognormal(np.log(104), 0.5, n_c))
        case "seconds":  # ms in seconds: near-ties a few ulps apart
            b = np.rint(rng.lognormal(np.log(100), 0.5, n_b)) / 1000
            return b, np.rint(rng.lognormal(np.log(100), 0.5, n_c)) / 1000
        case "zeros":  # exact ties at 0 among continuous values
            b, c = rng.normal(size=n_b), rng.normal(0.2, size=n_c)
            b[: n_b // 3] = 0.0
            c[: n_c // 3] = 0.0
            return b, c
        case "offset":  # large offset, tiny spread: the sums round
            return 1e9 + rng.normal(size=n_b), rng.normal(size=n_c) * 1e-3
        case "binary":
            return rng.integers(0, 2, n_b) * 1.0, rng.integers(0, 2, n_c) * 1.0
        case _:  # one value
            return np.full(n_b, 3.3), np.full(n_c, 3.3)


KINDS = ("continuous", "whole_ms", "seconds", "zeros", "offset", "binary", "constant")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sizes", [(700, 900), (60, 1500), (1200, 400)])
def test_hodges_lehmann_by_bracketing_matches_brute_force(
    kind: str, sizes: tuple[int, int]
) -> None:
    # n*m of 2.4e4..6.3e5 pairs: beyond building outright (small ones) or not.
    rng = np.random.default_rng(sum(map(ord, kind)) + sizes[0])
    baseline, canary = _cohorts(kind, rng, *sizes)
    for confidence in (0.5, 0.9, 0.975):
        _assert_exact(baseline, canary, confidence)


@pytest.mark.parametrize("kind", KINDS)
def test_bracketing_search_is_exact_when_forced_through_many_rounds(kind: str) -> None:
    # Tiny windows and grids make every group refine its pivots over several rounds:
    # interpolation, stalls, tie checks and replaced pivots. An answer it gives is exact;
    # when it gives up (None), order_statistics falls back to the sampling selection.
    tiny = Tuning(window=8, grid_side=4, rounds=60)
    rng = np.random.default_rng(len(kind))
    b, c = _cohorts(kind, rng, 300, 250)
    x, y = np.sort(c), -np.sort(b)[::-1]
    sums = np.sort(np.add.outer(x, y).ravel())
    ranks = sorted({1, 2, 40, sums.size // 2, sums.size // 2 + 1, sums.size - 7, sums.size})
    found = PairSums(x, y, tiny).bracketed(ranks)
    if found is not None:
        assert found == {r: float(sums[r - 1]) for r in ranks}
    pairs = PairSums(x, y, Tuning(build_limit=10, window=8, grid_side=4, rounds=60))
    assert pairs.order_statistics(ranks) == {r: float(sums[r - 1]) for r in ranks}


@pytest.mark.parametrize("kind", ["continuous", "whole_ms", "zeros", "binary", "constant"])
def test_bracketing_settles_without_falling_back(kind: str) -> None:
    # The fast path must not quietly give up on ordinary data: the fallback is 3-10x
    # slower. (Near-ties a few ulps apart, "seconds", may fall back: exact either way.)
    rng = np.random.default_rng(11)
    for n_b, n_c in ((1500, 1500), (4096, 4096), (300, 3000)):
        b, c = _cohorts(kind, rng, n_b, n_c)
        x, y = np.sort(c), -np.sort(b)[::-1]
        if x.size > y.size:
            x, y = y, x
        nm = x.size * y.size
        ranks = [nm // 2 - nm // 40, (nm + 1) // 2, nm // 2 + 1, nm // 2 + nm // 40]
        assert PairSums(x, y).bracketed(ranks) is not None


def test_hodges_lehmann_single_pair() -> None:
    shift = hodges_lehmann(np.array([2.0]), np.array([5.0]), 0.95)
    assert (shift.estimate, shift.low, shift.high) == (3.0, 3.0, 3.0)


def test_hodges_lehmann_rejects_bad_confidence() -> None:
    with pytest.raises(ValueError, match="confidence"):
        hodges_lehmann(np.ones(3), np.ones(3), 1.0)


def test_hodges_lehmann_never_forms_all_pairwise_differences() -> None:
    import tracemalloc  # noqa: PLC0415 - only this test traces allocations

    rng = np.random.default_rng(0)
    baseline, canary = rng.lognormal(0, 0.5, 10_000), rng.lognormal(0, 0.5, 10_000)
    tracemalloc.start()
    try:
        hodges_lehmann(baseline, canary, 0.9)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # ~2.2 MB measured (a few arrays of n); the n*m = 1e8 differences would be 800 MB.
    # numpy reports its buffers to tracemalloc, so this catches an O(n*m) path without
    # reading a clock.
    assert peak < 32 * 2**20
