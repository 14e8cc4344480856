"""Decision quality: how often coalmine's verdicts are right, against Kayenta and Flagger.

Run from the repository root::

    python benchmarks/decision_quality.py [--runs N] [--scenarios a,b] [--seed S]
        [--processes 2] [--json] [--json-file PATH] [--set KEY=VALUE ...] [--aa-runs 2000]
        [--regression-runs 300] [--kayenta-lifetime SECONDS] [--kayenta-latency requests|minutes]
        [--kayenta-tolerance 0.25] [--flagger-latency 500|x1.2]

Each run simulates one canary at production cadence (``support/quality/simulator.py``):
every 10 s of event time, per cohort and instance, a message with samples of the
distribution metric ``latency_ms`` and a request-count message (good / total). By default
the samples are request latencies (lognormal, median 100 ms, log-sd 0.5, whole
milliseconds), 50 a minute per cohort, and requests come at 20 per second per cohort,
both Poisson with a +-50% daily swing of random phase; 0.1% of requests are bad
(binomial). A scenario can change the samples' shape (``zeros``: a mostly-zero count such
as retries per request; ``buckets``: latencies as histogram bucket upper bounds;
``pareto``: a heavy tail; ``bimodal``: cache hits and misses), their rate, and the swing
(``-fixed`` scenarios: constant rates); its description says what the metric models. Run
``i`` of every scenario uses the seed ``--seed + i``, so the scenarios share their random
draws where they can and any run can be replayed alone.

The judges, all on the same traffic, side by side in the table:

- **coalmine**, through its real code path: ``coalmine.daemon.deployment.Deployment``
  fed ``MetricEvent`` objects in event-time order, until its first final verdict. The
  profile (``build_profile`` in ``support/quality/runner.py``): interval 60 s,
  min_duration 10 min, max_duration 60 min; ``latency_ms`` (distribution, increase,
  allowed_change 0.10) and ``errors`` (ratio, objective 0.999, critical). Any field can be
  changed with ``--set``: ``--set latency_ms.test=fixed``, ``--set errors.null=tolerance``,
  ``--set min_duration=5m``, ``--set profile.alpha=0.1`` (values are JSON when they parse,
  strings otherwise; the configuration models reject unknown fields). A scenario may carry
  its own overrides (the ``-tol5`` scenarios and ``lat+10-fixed``:
  ``latency_ms.allowed_change=0.05``), applied after ``--set`` and shown in the table.
- **Kayenta-style** (``support/quality/baselines.py``, no coalmine code): a look every
  60 s over the growing window, Mann-Whitney with a two-sided 98% Hodges-Lehmann interval,
  ``allowedIncrease`` 1.0; errors as per-minute error-rate points, latency as the request
  latencies (``--kayenta-latency minutes`` for per-minute mean points, Kayenta's own
  input). A metric is High when the interval's lower bound clears Kayenta's classifier
  tolerance, 0.25 x |HL| (``--kayenta-tolerance``); any High rolls back; otherwise
  promoted at the end of its lifetime (max_duration, 60 min).
- **Kayenta, tolerance 0**: the same judge where any significant increase fails (a plain
  repeated one-sided 1% Mann-Whitney test), the reading "allowedIncrease 1.0, any
  significant increase fails" without the classifier's tolerance.
- **Flagger-style**: every 60 s, the last minute's canary success rate must be >= 99%
  and its p99 latency <= 500 ms (absolute, Flagger's documented example; ``--flagger-latency
  x1.2`` for 1.2 x the baseline's p99 instead); rollback at 5 failed checks; promoted
  after 10 checks (min_duration).
- **oracle SPRT** (error scenarios only): a sequential probability ratio test that knows
  the true error-ratio factor, on the same 10 s request counts, at the profile's alpha per
  metric; it rolls back when the likelihood ratio reaches 1 / alpha and never promotes.
  Its time to detect is the yardstick for the others' in the error scenarios.

Reported per scenario and judge: false rollbacks with a Wilson 95% interval, promote rate
and median time to promote (A/A scenarios); detections within 60 and 30 min, median and
p90 time to detect (missed runs count as never detected), false promotions with a Wilson
95% interval and, in the error scenarios, the median time to detect over the oracle
SPRT's (regressions); the inconclusive rate; for a regression on some instances, how many
of coalmine's rollbacks named the instance; and coalmine's cost per scheduled look (wall
time of the judgement calls, median and p99, in ms). Where statistics.md section 7 sets a
target for a scenario, the table says whether coalmine meets it. ``--json`` gives every
number, ``false_promotion_*`` and ``false_rollback_*`` included.

Runtime: the script prints an estimate after the first runs, the total at the end and
the CPU seconds used. The default set (27 scenarios: 11 A/A at ``--aa-runs`` 2000 and 16
regressions at ``--regression-runs`` 300, 26,800 runs) needs about 40 CPU minutes, an
estimate from the cost per run of each scenario on a few runs, so roughly 20-25 min with
``--processes 2`` on two idle cores. Nine tenths of it are the A/A scenarios, which mostly
run to their end; most of that is coalmine itself (building the events and judging), and
the 10-instance and ``pareto-aa`` scenarios cost most (``pareto-aa`` through the
Kayenta-style judge's histograms, which span its long tail).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.quality.report import as_json, format_table, scenario_stats
from support.quality.runner import Options, build_profile, duration_text, run_all
from support.quality.simulator import DEFAULT_SCENARIOS, SCENARIOS

AA_RUNS = 2000
REGRESSION_RUNS = 300


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n"
        + "\n".join(
            f"  {s.name:<14}{s.description}{'' if s.name in DEFAULT_SCENARIOS else ' (extra)'}"
            + (f" [{' '.join(s.overrides)}]" if s.overrides else "")
            for s in SCENARIOS.values()
        ),
    )
    parser.add_argument("--runs", type=int, help="runs per scenario (overrides the two below)")
    parser.add_argument("--aa-runs", type=int, default=AA_RUNS, help="runs per A/A scenario")
    parser.add_argument(
        "--regression-runs", type=int, default=REGRESSION_RUNS, help="runs per regression"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help="comma-separated scenario names, or 'all' (default: every non-extra scenario)",
    )
    parser.add_argument("--seed", type=int, default=1, help="run i uses seed S + i")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--json-file", type=Path, help="also write the JSON report to this file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="profile override: interval=2m, latency_ms.test=fixed, errors.unit=request",
    )
    parser.add_argument(
        "--kayenta-lifetime", type=float, help="seconds (default: the profile's max_duration)"
    )
    parser.add_argument(
        "--kayenta-latency",
        choices=("requests", "minutes"),
        default="requests",
        help="Kayenta-style latency input: request latencies, or per-minute mean points",
    )
    parser.add_argument(
        "--kayenta-tolerance",
        type=float,
        default=0.25,
        help="Kayenta's classifier tolerance: the interval must clear this x |HL| (0: any)",
    )
    parser.add_argument(
        "--flagger-latency",
        default="500",
        help="p99 limit: milliseconds (500) or x<factor> of the baseline's p99 (x1.2)",
    )
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)} (see --help)")
    args.names = names
    try:
        build_profile(args.overrides)
        for name in names:  # a scenario's own overrides come after the command line's
            build_profile([*args.overrides, *SCENARIOS[name].overrides])
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        parser.error(str(exc))
    return args


def options_from(args: argparse.Namespace) -> Options:
    relative, limit = None, 500.0
    if args.flagger_latency.startswith("x"):
        relative = float(args.flagger_latency[1:])
    else:
        limit = float(args.flagger_latency)
    return Options(
        seed=args.seed,
        overrides=tuple(args.overrides),
        kayenta_lifetime=args.kayenta_lifetime,
        kayenta_latency=args.kayenta_latency,
        kayenta_tolerance=args.kayenta_tolerance,
        flagger_relative_p99=relative,
        flagger_max_p99_ms=limit,
    )


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    options = options_from(args)
    runs = {
        name: args.runs
        if args.runs is not None
        else (args.regression_runs if SCENARIOS[name].regression else args.aa_runs)
        for name in args.names
    }
    started = time.perf_counter()
    cpu_before = _cpu_seconds()
    results = run_all(runs, options, args.processes)
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_before
    stats = [scenario_stats(name, results[name]) for name in args.names if results.get(name)]
    profile = options.profile()
    payload = {
        "seed": args.seed,
        "processes": args.processes,
        "runtime_s": round(elapsed, 1),
        "cpu_s": round(cpu, 1),
        "profile": profile.model_dump(mode="json"),
        "overrides": args.overrides,
        "kayenta": dataclasses.asdict(options.kayenta()),
        "flagger": dataclasses.asdict(options.flagger()),
        "traffic": dataclasses.asdict(options.traffic),
        "scenarios": as_json(stats),
    }
    if args.json_file is not None:
        args.json_file.write_text(json.dumps(payload, indent=2) + "\n")
    if args.json:
        print(json.dumps(payload, indent=2))
        return
    metrics = "; ".join(
        f"{m.name}: {m.kind}" + (f", {m.test}" if hasattr(m, "test") else "")
        for m in profile.metrics
    )
    print(
        f"decision quality: seed {args.seed}, {sum(runs.values())} runs, "
        f"{args.processes} process(es), {duration_text(elapsed)} "
        f"({cpu:.0f} CPU s: {duration_text(cpu / max(1, args.processes))} on idle cores)"
    )
    print(
        f"profile: interval {profile.interval:g}s, min {profile.min_duration:g}s, "
        f"max {profile.max_duration:g}s, alpha {profile.alpha:g}; {metrics}"
    )
    if args.overrides:
        print(f"overrides: {' '.join(args.overrides)}")
    own = [name for name in args.names if SCENARIOS[name].overrides]
    if own:
        print(f"scenarios with their own overrides (after these): {', '.join(own)}")
    print()
    print(format_table(stats), end="")


if __name__ == "__main__":
    main()
