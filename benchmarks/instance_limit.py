"""How often can any valid test catch one bad host among 5 + 5 with 2-5% spread?

Run from the repository root: ``python benchmarks/instance_limit.py [--runs N] [--seed S]``.

The decision-quality scenario ``one-instance-fixed``: 5 baseline and 5 canary instances, 50
latency samples a minute per cohort (10 per instance, Poisson), lognormal latency (log-sd
0.5), each instance's latency multiplied by ``exp(N(0, spread))`` with the spread drawn per
run from 2-5%, one canary instance 1.3x slower. Each instance reduces to the mean of its
log samples. The script gives the detection rate of the best test one can run **at a
single look** after 10, 20 and 30 minutes, spending a whole level ``alpha`` there (a
sequential judge that also looks earlier, or keeps part of the level for the cohorts'
comparison, can only do worse):

* **max-t, exact**: the largest of the canary instances' outlier t statistics (instance
  against the baseline's mean, spread pooled from the baseline's and the other canary
  instances), against its own null distribution, simulated. Under "no bad instance" the
  instance means are i.i.d. normal, so that distribution holds for every spread: the test
  is valid whatever the spread, which the judge does not know.
* **Bonferroni t**: the same statistics, each at ``alpha / 5`` (what coalmine does).
* **z, spread known**: a test that knew the spread (not a valid test: the spread is unknown).

A test that knows the within-instance noise exactly cannot do better than max-t here: as
the spread grows, that noise becomes negligible and the t test is the only valid one, and a
critical value that shrinks for small observed spreads loses the level at moderate ones.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy import stats

INSTANCES = 5
LOG_SD = 0.5
PER_INSTANCE_PER_MINUTE = 10.0
BAD_FACTOR = 1.3
SPREAD = (0.02, 0.05)


def outlier_t(baseline: np.ndarray, canary: np.ndarray) -> np.ndarray:
    """Per run and canary instance: the outlier t statistic (runs x instances)."""
    mean_b = baseline.mean(axis=1)
    base_ss = ((baseline - mean_b[:, None]) ** 2).sum(axis=1)
    k_b, k_c = baseline.shape[1], canary.shape[1]
    columns = []
    for i in range(k_c):
        others = np.delete(canary, i, axis=1)
        ss = base_ss + ((others - others.mean(axis=1)[:, None]) ** 2).sum(axis=1)
        s = np.sqrt(ss / ((k_b - 1) + (k_c - 2)))
        columns.append((canary[:, i] - mean_b) / (s * math.sqrt(1 + 1 / k_b)))
    return np.array(columns).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--null-runs", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.025, 0.01875])
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    null = outlier_t(
        rng.standard_normal((args.null_runs, INSTANCES)),
        rng.standard_normal((args.null_runs, INSTANCES)),
    ).max(axis=1)
    df = 2 * INSTANCES - 3
    print(f"{args.runs} runs a row, seed {args.seed}; +30% on 1 of {INSTANCES} canary instances")
    head = ("alpha", "minutes", "max-t exact", "Bonferroni t", "z, spread known")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (8, 8, 12, 13, 16), strict=True)))
    for alpha in args.alpha:
        exact = float(np.quantile(null, 1 - alpha))
        bonferroni = float(stats.t.ppf(1 - alpha / INSTANCES, df))
        z = float(stats.norm.ppf(1 - alpha / INSTANCES))
        for minutes in (10, 20, 30):
            spread = rng.uniform(*SPREAD, args.runs)
            n_b = rng.poisson(PER_INSTANCE_PER_MINUTE * minutes, (args.runs, INSTANCES))
            n_c = rng.poisson(PER_INSTANCE_PER_MINUTE * minutes, (args.runs, INSTANCES))
            noise_b = rng.standard_normal((args.runs, INSTANCES)) * LOG_SD / np.sqrt(n_b)
            noise_c = rng.standard_normal((args.runs, INSTANCES)) * LOG_SD / np.sqrt(n_c)
            baseline = rng.standard_normal((args.runs, INSTANCES)) * spread[:, None] + noise_b
            canary = rng.standard_normal((args.runs, INSTANCES)) * spread[:, None] + noise_c
            canary[:, 0] += math.log(BAD_FACTOR)
            t = outlier_t(baseline, canary).max(axis=1)
            noise = spread**2 + LOG_SD**2 / (PER_INSTANCE_PER_MINUTE * minutes)
            known = (canary[:, 0] - baseline.mean(axis=1)) / np.sqrt(noise * (1 + 1 / INSTANCES))
            print(
                f"{alpha:>8g} {minutes:>8} {np.mean(t > exact):>12.1%}"
                f" {np.mean(t > bonferroni):>13.1%} {np.mean(known > z):>16.1%}"
            )


if __name__ == "__main__":
    main()
