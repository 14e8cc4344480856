"""Cost of judging: one look against scipy on the same arrays, and a fleet's CPU share.

Run from the repository root:
``python benchmarks/judge_cost.py [--repeat N] [--seed S] [--fleet D] [--fleet-ages MODE]``.

1. **One look.** Times ``rank_sum_test``, ``hodges_lehmann`` and ``analyze_distribution``
   at n = m = 1e3, 1e4 and 1e5 and ``scipy.stats.mannwhitneyu(..., method="asymptotic")``
   as the reference, in the same run on the same arrays: lognormal latencies (sigma 0.5),
   canary +5%, alpha 0.05; first in whole milliseconds (ties, as latency is usually
   reported), then continuous. Each figure is the median of ``--repeat`` runs; the ratio
   column is ours / scipy (below 1 is faster). scipy computes no Hodges-Lehmann interval,
   so the HL and analyzer ratios say how many scipy U tests one look costs. The script
   checks that our U statistic and p-value equal scipy's.
2. **Fleet** (``--fleet D``, default 1000; 0 skips it). D open deployments, each with
   four metrics: ``latency_ms`` and ``cpu_ms`` (distribution, whole milliseconds),
   ``errors`` (ratio, objective 99.9%, critical) and ``timeouts`` (ratio), judged every
   60 s, at the decision-quality harness's traffic: 50 samples a minute per cohort per
   distribution metric, 20 requests a second per cohort, a message per cohort and metric
   every 10 s. Each deployment is given its history first (not timed: one message per
   cohort and metric holding everything up to its age, a whole number of minutes), then
   the next 60 s of event time
   are timed across the whole fleet, interleaved as a daemon sees them: 6 steps of 8
   messages per deployment (``Deployment.observe``: buffering, and a check of the
   critical ratio metric on every canary message), then the judgement that falls due
   (``Deployment.advance``: 4 metric analyses, the judge and the verdict). CPU time
   (``process_time``) over those 60 s of event time is the share of one core the fleet
   needs. Ages are ``uniform`` over 0-30 minutes (a steady state: ~750 samples per cohort
   on average) or all ``30`` minutes (1,500 per cohort), or ``both`` (the default).
   Decoding, routing and publishing are not included (``ingest.py`` measures those).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # support.quality; coalmine if not installed

import coalmine  # noqa: E402
from coalmine.analyzers.hodges_lehmann import hodges_lehmann  # noqa: E402
from coalmine.analyzers.mann_whitney import analyze_distribution, rank_sum_test  # noqa: E402
from coalmine.analyzers.registry import ANALYZERS  # noqa: E402
from coalmine.config.models import MetricSpec, Profile  # noqa: E402
from coalmine.contract import DeployEvent, MetricEvent  # noqa: E402
from coalmine.daemon.deployment import Deployment  # noqa: E402
from support.quality.simulator import SCENARIOS, START, simulate  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
ALPHA = 0.05
CONFIDENCE = 1 - 2 * ALPHA  # the interval analyze_distribution builds for "increase"
INTERVAL = 60.0
STEP = 10.0


def _median_ms(func, repeat: int) -> float:
    func()  # warm-up: imports, caches, first-touch allocation
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def one_look(rng: np.random.Generator, repeat: int, *, whole_ms: bool) -> None:
    spec = MetricSpec(name="latency_ms")
    label = "n = m (whole ms)" if whole_ms else "n = m"
    header = (
        f"{label:>16} | {'scipy MWU':>10} | {'rank_sum_test':>17} | "
        f"{'hodges_lehmann':>17} | {'analyze_distribution':>20}"
    )
    print(header)
    print("-" * len(header))
    for n in SIZES:
        baseline = rng.lognormal(np.log(100), 0.5, n)
        canary = rng.lognormal(np.log(100), 0.5, n) * 1.05
        if whole_ms:
            baseline, canary = np.rint(baseline), np.rint(canary)

        def scipy_u(baseline=baseline, canary=canary) -> None:
            stats.mannwhitneyu(canary, baseline, method="asymptotic", alternative="greater")

        ref = _median_ms(scipy_u, repeat)
        ours = {
            "rank": _median_ms(lambda b=baseline, c=canary: rank_sum_test(b, c), repeat),
            "hl": _median_ms(lambda b=baseline, c=canary: hodges_lehmann(b, c, CONFIDENCE), repeat),
            "judge": _median_ms(
                lambda b=baseline, c=canary: analyze_distribution(spec, b, c, ALPHA), repeat
            ),
        }
        cells = [f"{ms:8.2f} ms {ms / ref:5.2f}x" for ms in ours.values()]
        # run_all.py reads the last row: continuous data (printed last), n = 1e5.
        print(f"{n:>16} | {ref:7.2f} ms | {cells[0]:>17} | {cells[1]:>17} | {cells[2]:>20}")

        # The same answer as scipy, or the timing is meaningless.
        result = rank_sum_test(baseline, canary)
        expected = stats.mannwhitneyu(canary, baseline, method="asymptotic", alternative="greater")
        assert result.u == expected.statistic
        assert abs(result.p_greater - expected.pvalue) <= 1e-9 * expected.pvalue + 1e-300
    print()


# ------------------------------------------------------------------------------- fleet

DISTRIBUTIONS = ("latency_ms", "cpu_ms")
RATIOS = ("errors", "timeouts")


def fleet_profile() -> Profile:
    """Four metrics; nothing promoted or rolled back during the hour, so all stay open."""
    return Profile(
        interval=INTERVAL,
        min_duration=3600,
        max_duration=3600,
        metrics=(
            MetricSpec(name="latency_ms", kind="distribution", allowed_change=0.10),
            MetricSpec(name="cpu_ms", kind="distribution", allowed_change=0.10),
            MetricSpec(name="errors", kind="ratio", objective=0.999, critical=True),
            MetricSpec(name="timeouts", kind="ratio", objective=0.999),
        ),
    )


Message = tuple[str, str, object]  # metric, cohort, values array or (good, total)


def _deployment_traffic(seed: int, age: float) -> tuple[list[Message], list[list[Message]]]:
    """History up to ``age`` (one message per cohort and metric) and 6 steps after it."""
    runs = [simulate(SCENARIOS["aa"], seed * 2 + k, age + INTERVAL) for k in range(2)]
    history: dict[tuple[str, str], list] = {}
    steps: list[list[Message]] = [[] for _ in range(round(INTERVAL / STEP))]
    for k, run in enumerate(runs):
        names = {"latency_ms": DISTRIBUTIONS[k], "errors": RATIOS[k]}
        for message in run.messages("latency_ms", "errors"):
            metric = names[message.metric]
            payload = message.values if message.values is not None else message
            offset = message.time - START
            if offset <= age:
                history.setdefault((metric, message.cohort), []).append(payload)
            else:
                steps[round((offset - age) / STEP) - 1].append((metric, message.cohort, payload))
    merged: list[Message] = []
    for (metric, cohort), parts in history.items():
        if metric in DISTRIBUTIONS:
            merged.append((metric, cohort, np.concatenate(parts)))
        else:
            merged.append(
                (metric, cohort, (sum(p.good for p in parts), sum(p.total for p in parts)))
            )
    return merged, steps


def _event(metric: str, cohort: str, payload: object, at: float) -> MetricEvent:
    if isinstance(payload, np.ndarray):
        return MetricEvent(service="svc", metric=metric, time=at, values=payload, cohort=cohort)
    if isinstance(payload, tuple):
        good, total = payload
    else:
        good, total = payload.good, payload.total
    return MetricEvent(
        service="svc", metric=metric, time=at, good=good, total=total, is_ratio=True, cohort=cohort
    )


Fleet = list[tuple[Deployment, list[list[Message]]]]


def build_fleet(deployments: int, ages_mode: str, seed: int) -> Fleet:
    """Open deployments holding their history, with the next minute's messages (not timed)."""
    profile = fleet_profile()
    rng = np.random.default_rng(seed)
    if ages_mode == "30":
        ages = np.full(deployments, 1800.0)
    else:
        ages = np.floor(rng.uniform(0.0, 1800.0, deployments) / INTERVAL) * INTERVAL
    fleet_state = []
    held = 0
    for i, age in enumerate(ages):
        started = DeployEvent(
            event="started",
            deployment_id=f"d{i}",
            service="svc",
            time=START - float(age),  # history ends at START; the timed minute follows
            baseline_version="v1",
            canary_version="v2",
            traffic_weight=50.0,
        )
        deployment = Deployment(started, profile)
        history, steps = _deployment_traffic(seed * 100_003 + i, float(age))
        # The history arrives at START, so the looks due before it see no data (cheap).
        for metric, cohort, payload in history:
            deployment.observe(_event(metric, cohort, payload, START), cohort)
            if isinstance(payload, np.ndarray):
                held += payload.size
        deployment.advance(START + 1e-3)  # the look due at START, on the history
        fleet_state.append((deployment, steps))
    print(
        f"fleet: {deployments} deployments, ages {ages_mode}"
        f" (mean {ages.mean() / 60:.1f} min), {held / deployments / 4:,.0f} samples"
        " per cohort and distribution metric on average before the timed minute"
    )
    return fleet_state


def _judge_fleet(fleet_state: Fleet, decisions: Counter[str]) -> tuple[float, int, dict]:
    """The judgements due at the end of the minute: CPU seconds, count, time per analyzer."""
    clock = time.process_time
    spent = {kind: [0.0, 0] for kind in ANALYZERS}
    analyzers = {kind: make.analyze for kind, make in ANALYZERS.items()}

    def timed(kind: str, analyze):
        def wrapper(*args, **kwargs):
            start = clock()
            result = analyze(*args, **kwargs)
            spent[kind][0] += clock() - start
            spent[kind][1] += 1
            return result

        return wrapper

    looks = 0
    # Every analyzer class's ``analyze``, timed: what a deployment calls for each metric.
    for kind, analyze in analyzers.items():
        ANALYZERS[kind].analyze = timed(kind, analyze)
    try:
        t0 = clock()
        for deployment, _ in fleet_state:
            for verdict in deployment.advance(START + INTERVAL + 0.5):
                decisions[verdict.decision] += 1
                looks += 1
        look_s = clock() - t0
    finally:
        for kind, analyze in analyzers.items():
            ANALYZERS[kind].analyze = analyze
    return look_s, looks, spent


def fleet(deployments: int, ages_mode: str, seed: int) -> dict[str, float]:
    """One minute of a fleet's event time: CPU share of one core, cost per metric look."""
    fleet_state = build_fleet(deployments, ages_mode, seed)
    clock = time.process_time
    observe_s = 0.0
    messages = 0
    decisions: Counter[str] = Counter()
    for k in range(round(INTERVAL / STEP)):
        at = START + (k + 1) * STEP
        t0 = clock()
        for deployment, steps in fleet_state:
            for metric, cohort, payload in steps[k]:
                for verdict in deployment.observe(_event(metric, cohort, payload, at), cohort):
                    decisions[verdict.decision] += 1
                messages += 1
        observe_s += clock() - t0
    look_s, looks, spent = _judge_fleet(fleet_state, decisions)
    total = observe_s + look_s
    metric_looks = looks * len(fleet_profile().metrics)
    print(
        f"  60 s of event time: {messages:,} messages, {looks:,} judgements"
        f" ({metric_looks:,} metric looks), decisions {dict(decisions)}"
    )
    print(
        f"  CPU: messages {observe_s:.3f} s ({observe_s / messages * 1e6:.1f} us each,"
        f" critical checks included), judgements {look_s:.3f} s"
        f" ({look_s / metric_looks * 1e3:.3f} ms per metric look)"
    )
    per_kind = ", ".join(
        f"{kind} {seconds / count * 1e3:.3f} ms" for kind, (seconds, count) in spent.items()
    )
    print(f"  per analysis in the judgements: {per_kind}")
    print(
        f"  share of one core: {total / INTERVAL:.1%}"
        f" (judgements alone {look_s / INTERVAL:.1%}); target < 10%"
    )
    return {"share": total / INTERVAL, "per_metric_look_ms": look_s / metric_looks * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--fleet", type=int, default=1000, help="deployments; 0 skips")
    parser.add_argument("--fleet-ages", choices=("uniform", "30", "both"), default="both")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    print(f"coalmine {Path(coalmine.__file__).parent}, numpy {np.__version__}")
    print(f"median of {args.repeat} runs, lognormal(sigma 0.5), canary +5%, alpha {ALPHA}\n")
    one_look(rng, args.repeat, whole_ms=True)
    one_look(rng, args.repeat, whole_ms=False)
    if args.fleet > 0:
        modes = ("uniform", "30") if args.fleet_ages == "both" else (args.fleet_ages,)
        for mode in modes:
            fleet(args.fleet, mode, args.seed)


if __name__ == "__main__":
    main()
