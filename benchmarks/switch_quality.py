"""Switch quality: coalmine's verdicts on blue-green switches and migration phases.

Run from the repository root::

    python benchmarks/switch_quality.py [--runs N] [--seed S] [--quick] [--processes 2]
        [--replay-seeds K] [--out benchmarks/results/switch_quality.txt]

Each run is one scenario of ``support/quality/switches.py`` (a +-50% daily swing in traffic,
latency following load, the change at a random time of day) for seed ``--seed + i``, fed
through the real ``coalmine.daemon.router.Router`` in process as a live daemon reads it:
deploy events to the deployments topic, metric messages to the metrics topic, one fetch per
event time (the deploy event and the metrics of one instant together), the wall clock equal
to event time. Feeding stops at the deployment's final verdict.

Profiles (interval 60 s, min_duration 10 min, max_duration 30 min, alpha 0.05): blue-green,
``latency_ms`` (distribution, increase, tolerance 0.10, default tails p90 / p99) and
``requests`` (ratio, objective 0.999, critical), ``reference.before = 30m`` (so the daemon
keeps the service's history and the switch compares with blue's last 30 minutes, the
preview's and before it); migration, ``query_ms`` (tail tested at p99, tail_allowed_change 0.10,
effect ``shift``), ``requests``, ``reference.before = 30m``. A scenario whose ``started``
names ``days`` (``healthy-switch-peak``) runs on the blue-green profile with
``reference.days = [1]`` instead: the same hours yesterday, from the router's history.
Scenarios marked ``(reported)`` have no target of their own: the 200-samples-a-minute
migration, a healthy migration, the peak switch against the 30 minutes before it, and a
healthy and a 20%-slower switch whose latency median wobbles 10% from minute to minute
(traffic the judge was not tuned on).

Reported per scenario: decisions of the final verdicts with Wilson 95% intervals; false
rollbacks (a healthy change rolled back); time from the change to the rollback over all
runs (a run not rolled back counts as never: ``never``); whether the final rollback's
summary names the failing metric (and ``p99`` for the migration); ``ref min``, the minutes
of reference the baseline held (its latency samples over the samples per minute, median of
the runs); the target, met or not on the point estimates.
Replay equality: for the first ``--replay-seeds`` seeds of every scenario the whole stream
is fed twice, live (above) and as a replay reads it (every deploy event first, then the
metrics in fetches of 500), and the encoded verdicts must be byte-identical.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.quality.report import wilson
from support.quality.switch_runs import Outcome, one_run, replay_mismatch
from support.quality.switches import SCENARIOS


def pct_ci(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}]" if n else "-"


def minutes(x: float) -> str:
    return "never" if math.isinf(x) else f"{x / 60:.1f}"


TARGETS = {
    "healthy-switch": ">=95% promoted, <=2% false rb",
    "healthy-switch-peak": "<=2% false rollbacks",
    "healthy-switch-peak-before": "(reported)",
    "green-errors-5x": "rolled back, median <=1 min",
    "green-latency-20": ">=95% rolled back in 15 min",
    "migration-p99-30": "rolled back, names p99",
    "migration-p99-30-sparse": "(reported)",
    "healthy-migration": "(reported)",
    "healthy-switch-wobble": "(reported)",
    "green-latency-20-wobble": "(reported)",
}


def row(name: str, outs: list[Outcome]) -> list[str]:
    """One line of the table: rates, times to rollback, naming, the target (point estimates)."""
    n = len(outs)
    count = {d: sum(o.decision == d for o in outs) for d in ("promote", "rollback", "inconclusive")}
    share = {d: k / n for d, k in count.items()}
    ttr = sorted(o.after_change if o.decision == "rollback" else math.inf for o in outs)
    median, p95 = ttr[(n - 1) // 2], ttr[math.ceil(0.95 * n) - 1]
    named = sum(o.named for o in outs)
    met = {
        "healthy-switch": share["promote"] >= 0.95 and share["rollback"] <= 0.02,
        "healthy-switch-peak": share["rollback"] <= 0.02,
        "green-errors-5x": share["rollback"] >= 0.95 and median <= 60,
        "green-latency-20": sum(t <= 900 for t in ttr) >= 0.95 * n,
        "migration-p99-30": share["rollback"] >= 0.95 and named >= 0.95 * n,
    }.get(name)
    healthy = SCENARIOS[name](0).expected == "promote"
    return [
        name,
        str(n),
        *(pct_ci(count[d], n) for d in ("promote", "rollback", "inconclusive")),
        pct_ci(count["rollback"], n) if healthy else "-",
        "-" if healthy else f"{minutes(median)} / {minutes(p95)}",
        "-" if healthy else f"{named}/{count['rollback']}",
        f"{np.median([o.reference_minutes for o in outs]):.0f}",
        TARGETS[name],
        "n/a" if met is None else "yes" if met else "NO",
    ]


COLUMNS = (
    "scenario|runs|promoted [95% CI]|rolled back|inconclusive|false rollbacks"
    "|rollback min p50/p95|names it|ref min|target|met"
)
HEADINGS = COLUMNS.split("|")


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADINGS, *rows]) for i in range(len(HEADINGS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [HEADINGS, ["-" * w for w in widths], *rows]
    ]
    return "\n".join(lines) + "\n"


def header(args: argparse.Namespace, elapsed: float, cpu: float) -> str:
    found = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    model = found.group(1) if found else platform.machine()
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip()
    return (
        f"switch quality: seed {args.seed}, {args.runs} runs per scenario, {args.processes}"
        f" process(es), {elapsed:.0f} s ({cpu:.0f} CPU s)\n"
        f"machine: {os.cpu_count()} CPU(s) {model}; python {platform.python_version()},"
        f" numpy {np.__version__}; commit {commit} (working tree, may hold uncommitted work)\n"
        "profiles: interval 60s, min 10m, max 30m, alpha 0.05; blue-green: latency_ms"
        " (tails p90/p99), requests (ratio 0.999, critical), reference.before 30m;"
        " migration: query_ms (tail p99, +10%), requests, reference.before 30m;"
        " healthy-switch-peak: reference.days [1]\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400, help="runs per scenario")
    parser.add_argument("--seed", type=int, default=1, help="run i uses seed S + i")
    parser.add_argument("--quick", action="store_true", help="20 runs, 1 replay seed")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--replay-seeds", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    logging.getLogger("coalmine").setLevel(logging.ERROR)  # the dropped-event notices
    if args.quick:
        args.runs, args.replay_seeds = 20, 1
    names = args.scenarios.split(",")
    if unknown := [name for name in names if name not in SCENARIOS]:
        parser.error(f"unknown scenarios: {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    started, cpu0 = time.perf_counter(), _cpu()
    tasks = [(name, args.seed + i) for name in names for i in range(args.runs)]
    replays = [(name, args.seed + i) for name in names for i in range(args.replay_seeds)]
    with Pool(args.processes) as pool:
        outcomes = pool.map(one_run, tasks, chunksize=4)
        mismatches = sum(pool.map(replay_mismatch, replays))
    elapsed, cpu = time.perf_counter() - started, _cpu() - cpu0
    rows = [row(name, [o for o in outcomes if o.scenario == name]) for name in names]
    verdict = "(target met)" if mismatches == 0 else "(target NOT met)"
    report = (
        f"{header(args, elapsed, cpu)}\n{table(rows)}\n"
        f"replay (live order vs deploy events first, {len(replays)} runs, whole streams):"
        f" {mismatches} mismatch(es) {verdict}\n"
    )
    print(report, end="")
    if args.out is not None:
        args.out.write_text(report)


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
