"""Replay speed: how many deployments ``coalmine replay`` judges per minute.

Run from the repository root::

    python benchmarks/replay.py [--deployments 1000] [--seed 1] [--chunk-size 1000]
        [--keep FILE.jsonl] [--cli] [--profile]

What happens:

1. **Generate (not timed).** ``coalmine.simulator`` plays ``--deployments`` canaries
   (services ``svc-0000``...), in waves of 100 starting one minute of event time apart,
   for 15 minutes of event time each, one metrics message per deployment every 10 s
   (both cohorts' latency samples, ~20 per cohort, and request counts): 70% healthy,
   15% with +50% latency, 15% whose critical error ratio jumps to 5% from minute 3. The
   waves are merged in event-time order and written as native JSON Lines (one deploy or
   metric event a line), the format ``coalmine replay --input`` reads.
2. **Replay (timed).** ``coalmine.replay.replay_file`` with the profile of the tests
   (interval 60 s, min_duration 5 min, max_duration 15 min; ``latency_ms``
   distribution, ``requests`` ratio, critical): read and parse every line, route, buffer,
   judge, exactly the daemon's ``Router``. Wall time (``perf_counter``) and CPU time.
   ``--cli`` also times the command itself in a subprocess
   (``coalmine replay --json > /dev/null``: interpreter start, imports and output
   included). ``--profile`` runs the in-process replay under pyinstrument (not a
   dependency: ``pip install pyinstrument``) and prints where the time goes.
3. **Report.** Deployments per minute, messages per second, decisions.
"""

from __future__ import annotations

import argparse
import heapq
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coalmine.config.settings import load_settings
from coalmine.replay import replay_file
from coalmine.simulator import Scenario, simulate

T0 = 1_800_000_000.0
WAVE = 100
WAVE_GAP = 60.0
DURATION = 900.0
STEP = 10.0

CONFIG = """\
[profiles.default]
interval = "60s"
min_duration = "5m"
max_duration = "15m"

[[profiles.default.metrics]]
name = "latency_ms"
kind = "distribution"

[[profiles.default.metrics]]
name = "requests"
kind = "ratio"
objective = 0.999
critical = true
"""


def scenarios(count: int) -> list[Scenario]:
    """70% healthy, 15% +50% latency, 15% critical errors from minute 3."""
    out = []
    for i in range(count):
        name, kind = f"svc-{i:04d}", i % 20
        if kind < 14:
            out.append(Scenario(f"{name}-v2", name))
        elif kind < 17:
            out.append(Scenario(f"{name}-v2", name, latency_factor=1.5))
        else:
            out.append(Scenario(f"{name}-v2", name, canary_error_ratio=0.05, regression_from=180.0))
    return out


def generate(path: Path, count: int, seed: int) -> int:
    """Write the recording; return its line count."""
    plays = scenarios(count)
    waves = [
        simulate(
            plays[start : start + WAVE],
            start=T0 + index * WAVE_GAP,
            duration=DURATION,
            step=STEP,
            seed=seed + index,
        )
        for index, start in enumerate(range(0, count, WAVE))
    ]
    lines = 0
    with path.open("wb") as out:
        for message in heapq.merge(*waves, key=lambda m: (m.time, m.topic != "deployments")):
            out.write(message.value)
            out.write(b"\n")
            lines += 1
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--keep", type=Path, help="write the recording here (and keep it)")
    parser.add_argument("--cli", action="store_true", help="also time `coalmine replay`")
    parser.add_argument("--profile", action="store_true", help="profile with pyinstrument")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="coalmine-replay-") as tmp:
        config = Path(tmp) / "coalmine.toml"
        config.write_text(CONFIG)
        recording = args.keep or Path(tmp) / "stream.jsonl"
        began = time.perf_counter()
        lines = generate(recording, args.deployments, args.seed)
        size = recording.stat().st_size
        print(
            f"generated {args.deployments} deployments: {lines:,} lines,"
            f" {size / 1e6:.1f} MB in {time.perf_counter() - began:.1f}s -> {recording}"
        )
        settings = load_settings(config, environ={})

        wall, cpu = time.perf_counter(), time.process_time()
        with recording.open("rb") as stream:
            result = replay_file(settings, stream, chunk_size=args.chunk_size)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        decisions = Counter(o.decision for o in result.outcomes.values())
        print(
            f"replay: {len(result.outcomes)} deployments, {result.records:,} records,"
            f" {result.verdicts:,} verdicts in {wall:.2f}s wall, {cpu:.2f}s CPU"
        )
        print(f"  {len(result.outcomes) / wall * 60:,.0f} deployments/minute")
        print(f"  {result.records / wall:,.0f} messages/s")
        print(f"  decisions: {dict(decisions.most_common())}")
        if sum(result.invalid.values()):
            print(f"  invalid: {dict(result.invalid)}")

        if args.cli:
            began = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "coalmine",
                    "replay",
                    "--config",
                    str(config),
                    "--input",
                    str(recording),
                    "--json",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            took = time.perf_counter() - began
            print(
                f"coalmine replay --json (subprocess): {took:.2f}s,"
                f" {args.deployments / took * 60:,.0f} deployments/minute"
            )

        if args.profile:
            from pyinstrument import Profiler  # noqa: PLC0415 - optional, not a dependency

            profiler = Profiler(interval=0.001)
            with recording.open("rb") as stream:
                profiler.start()
                replay_file(settings, stream, chunk_size=args.chunk_size)
                profiler.stop()
            print(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
