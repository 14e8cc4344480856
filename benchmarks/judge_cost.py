"""Cost of the distribution analyzer against scipy, on the same arrays in the same run.

Run from the repository root: ``python benchmarks/judge_cost.py [--repeat N] [--seed S]``.
Times ``rank_sum_test``, ``hodges_lehmann`` and ``analyze_distribution`` at n = m = 1e3,
1e4 and 1e5 (lognormal latencies, canary +5%) and ``scipy.stats.mannwhitneyu(...,
method="asymptotic")`` as the reference. Each figure is the median of ``--repeat`` runs;
the ratio column is ours / scipy (below 1 is faster). scipy computes no Hodges-Lehmann
interval, so the HL and analyzer ratios say how many scipy U tests one look costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

try:
    import coalmine
except ModuleNotFoundError:  # not installed: use the checkout this script lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import coalmine

from coalmine.analyzers.mann_whitney import analyze_distribution, hodges_lehmann, rank_sum_test
from coalmine.config.models import MetricSpec

SIZES = (1_000, 10_000, 100_000)
ALPHA = 0.05
CONFIDENCE = 1 - 2 * ALPHA  # the interval analyze_distribution builds for "increase"


def _median_ms(func, repeat: int) -> float:
    func()  # warm-up: imports, caches, first-touch allocation
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    spec = MetricSpec(name="latency_ms")
    print(f"coalmine {Path(coalmine.__file__).parent}, numpy {np.__version__}")
    print(f"median of {args.repeat} runs, lognormal(sigma 0.5), canary +5%, alpha {ALPHA}\n")
    header = (
        f"{'n = m':>8} | {'scipy MWU':>10} | {'rank_sum_test':>17} | "
        f"{'hodges_lehmann':>17} | {'analyze_distribution':>20}"
    )
    print(header)
    print("-" * len(header))
    for n in SIZES:
        baseline = rng.lognormal(np.log(100), 0.5, n)
        canary = rng.lognormal(np.log(100), 0.5, n) * 1.05

        def scipy_u(baseline=baseline, canary=canary) -> None:
            stats.mannwhitneyu(canary, baseline, method="asymptotic", alternative="greater")

        ref = _median_ms(scipy_u, args.repeat)
        ours = {
            "rank": _median_ms(lambda b=baseline, c=canary: rank_sum_test(b, c), args.repeat),
            "hl": _median_ms(
                lambda b=baseline, c=canary: hodges_lehmann(b, c, CONFIDENCE), args.repeat
            ),
            "judge": _median_ms(
                lambda b=baseline, c=canary: analyze_distribution(spec, b, c, ALPHA), args.repeat
            ),
        }
        cells = [f"{ms:8.2f} ms {ms / ref:5.2f}x" for ms in ours.values()]
        print(f"{n:>8} | {ref:7.2f} ms | {cells[0]:>17} | {cells[1]:>17} | {cells[2]:>20}")

        # The same answer as scipy, or the timing is meaningless.
        result = rank_sum_test(baseline, canary)
        expected = stats.mannwhitneyu(canary, baseline, method="asymptotic", alternative="greater")
        assert result.u == expected.statistic
        assert abs(result.p_greater - expected.pvalue) <= 1e-9 * expected.pvalue + 1e-300


if __name__ == "__main__":
    main()
