"""Replay speed: how many deployments ``coalmine replay`` judges per minute.

Run from the repository root::

    python benchmarks/replay.py [--deployments 1000] [--seed 1] [--chunk-size 1000]
        [--keep FILE.jsonl] [--cli] [--profile] [--live] [--partitions 4]

What happens:

1. **Generate (not timed).** ``coalmine.tools.simulator`` plays ``--deployments`` canaries
   (services ``svc-0000``...), in waves of 100 starting one minute of event time apart,
   for 15 minutes of event time each, one metrics message per deployment every 10 s
   (both cohorts' latency samples, ~20 per cohort, and request counts): 70% healthy,
   15% with +50% latency, 15% whose critical error ratio jumps to 5% from minute 3. The
   waves are merged in event-time order and written as native JSON Lines (one deploy or
   metric event a line), the format ``coalmine replay --input`` reads.
2. **Replay (timed).** ``coalmine.tools.replay.replay_file`` with the profile of the tests
   (interval 60 s, min_duration 5 min, max_duration 15 min; ``latency_ms``
   distribution, ``requests`` ratio, critical): read and parse every line, route, buffer,
   judge, exactly the daemon's ``Router``. Wall time (``perf_counter``) and CPU time.
   ``--cli`` also times the command itself in a subprocess
   (``coalmine replay --json > /dev/null``: interpreter start, imports and output
   included). ``--profile`` runs the in-process replay under pyinstrument (not a
   dependency: ``pip install pyinstrument``) and prints where the time goes.
3. **Report.** Deployments per minute, messages per second, decisions.

``--live`` then checks the target, "a replay of 1000 recorded deployments
finishes in under a minute with the same final decisions and verdict ids as the live
daemon gave on the same stream":

4. **Live.** A private tansu (``support.brokers.Tansu``) with the four topics (deployments
   and metrics with ``--partitions`` partitions each, verdicts with as many, dead letters
   with one). The generated stream is produced in file order, keyed by service (one
   batching ``AIOKafkaProducer``, then a flush). The real daemon runs as a subprocess
   (``python -m coalmine run``, the same profile, ``idempotent_producer = false``, HTTP
   off) until every deployment has a final verdict on the verdict topic, or no verdict
   came for 60 s (those without one are listed), and is then stopped with SIGTERM.
5. **Record and replay.** ``coalmine record`` writes the two input topics to a recording;
   ``coalmine replay --json`` judges it (timed: the command in a subprocess, interpreter
   start and JSON output included), and the generated file too.
6. **Compare.** Per deployment, the final decision and final verdict id, live against
   each replay; and every verdict id with its full content (live verdicts deduplicated by
   id, all copies of one id must be equal). Exit status 1 on any mismatch, a deployment
   without a final verdict in one of them, a daemon that did not exit 0, or a replay of
   the recording that took a minute or more.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coalmine.bus.kafka import ensure_topics
from coalmine.config.models import KafkaSettings
from coalmine.config.settings import load_settings
from coalmine.tools.replay import replay_file
from coalmine.tools.simulator import Scenario, simulate
from support.brokers import Tansu
from support.scenario import PROFILE_TOML

ROOT = Path(__file__).resolve().parents[1]

T0 = 1_800_000_000.0
WAVE = 100
WAVE_GAP = 60.0
DURATION = 900.0
STEP = 10.0

CONFIG = PROFILE_TOML.lstrip()
"""The tests' profile (interval 60 s, 5-15 min, latency_ms and the critical requests)."""


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


# -- --live: the daemon on a real broker against the replay of its recording ---------------

LIVE_QUIET = 60.0
"""Give up waiting for final verdicts after this many seconds without a new verdict."""
STOP_TIMEOUT = 30.0
CRITERION = 60.0
"""The done-criterion: a replay of the recording finishes in under a minute."""

LIVE_TOPICS = {
    "deployments": "bench.deployments",
    "metrics": "bench.metrics",
    "verdicts": "bench.verdicts",
    "dead_letter": "bench.dlq",
}

LIVE_CONFIG = """\
log_level = "WARNING"

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "coalmine-replay-bench"
client_id = "coalmine-replay-bench"
idempotent_producer = false   # tansu has no InitProducerId
request_timeout = "10s"

[topics]
deployments = "{deployments}"
metrics = "{metrics}"
verdicts = "{verdicts}"
dead_letter = "{dead_letter}"

[http]
enabled = false

"""


def read_messages(path: Path) -> tuple[list[tuple[str, bytes, bytes]], list[str]]:
    """The recording's lines as ``(topic, key, value)`` in file order, and the started ids.

    A line is a deploy event when it is an object with ``event`` (or ``specversion``), as
    ``coalmine replay`` reads it; the key is the service, as producers key both topics.
    """
    messages: list[tuple[str, bytes, bytes]] = []
    started: list[str] = []
    with path.open("rb") as lines:
        for line in lines:
            value = line.rstrip(b"\n")
            if not value:
                continue
            event = orjson.loads(value)
            if isinstance(event, dict) and ("event" in event or "specversion" in event):
                messages.append(("deployments", event["service"].encode(), value))
                if event.get("event") == "started":
                    started.append(event["deployment_id"])
            else:
                first = event[0] if isinstance(event, list) else event
                messages.append(("metrics", first["service"].encode(), value))
    return messages, started


async def produce(bootstrap: str, messages: list[tuple[str, bytes, bytes]]) -> None:
    """Send every message in order (one partition keeps its order), then flush."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=1024 * 1024,
    )
    await producer.start()
    try:
        sent = [
            await producer.send(LIVE_TOPICS[topic], value, key=key)
            for topic, key, value in messages
        ]
        await producer.flush()
        await asyncio.gather(*sent)  # raise the first failed send, if any
    finally:
        await producer.stop()


@dataclass
class Watch:
    """What the verdict topic showed while the daemon ran."""

    verdicts: list[dict[str, Any]] = field(default_factory=list)
    first_at: float | None = None
    all_final_at: float | None = None
    last_at: float | None = None
    died: str | None = None


async def watch_verdicts(
    bootstrap: str,
    partitions: int,
    expected: set[str],
    daemon: subprocess.Popen[bytes],
    began: float,
) -> Watch:
    """Read the verdict topic until every expected deployment has a final verdict.

    Or until no verdict came for ``LIVE_QUIET`` seconds, or the daemon exited. Then read
    on to the fetch's high watermark (tansu's ListOffsets(latest) answers the last record
    batch's base offset + 1, not the end).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    watch = Watch()
    finals: set[str] = set()

    def take(batches: dict[Any, list[Any]], now: float) -> None:
        for records in batches.values():
            for record in records:
                verdict = orjson.loads(record.value)
                watch.verdicts.append(verdict)
                if verdict["final"]:
                    finals.add(verdict["deployment_id"])
                watch.last_at = now - began
                if watch.first_at is None:
                    watch.first_at = now - began

    try:
        tps = [TopicPartition(LIVE_TOPICS["verdicts"], p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        quiet_since = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            now = time.monotonic()
            if any(batches.values()):
                quiet_since = now
            take(batches, now)
            if expected <= finals:
                watch.all_final_at = now - began
                break
            if daemon.poll() is not None:
                watch.died = f"the daemon exited with {daemon.returncode} while judging"
                break
            if now - quiet_since >= LIVE_QUIET:
                break
        while True:
            behind = [
                tp for tp in tps if await consumer.position(tp) < (consumer.highwater(tp) or 0)
            ]
            if not behind:
                break
            take(await consumer.getmany(*behind, timeout_ms=1000), time.monotonic())
    finally:
        await consumer.stop()
    return watch


def stop_daemon(daemon: subprocess.Popen[bytes]) -> str | None:
    """SIGTERM; None when it then exits 0 in time, else what went wrong."""
    if daemon.poll() is not None:
        return f"the daemon had exited with {daemon.returncode}"
    daemon.send_signal(signal.SIGTERM)
    try:
        code = daemon.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
        return f"the daemon did not stop within {STOP_TIMEOUT:g} s of SIGTERM (killed)"
    return None if code == 0 else f"the daemon exited with {code} on SIGTERM"


def command(*args: str, stdout: Path | None = None) -> tuple[float, str]:
    """Run ``python -m coalmine ARGS``; its wall time and standard error (raise on failure)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALMINE_")}
    began = time.perf_counter()
    with stdout.open("wb") if stdout else open(os.devnull, "wb") as out:  # noqa: PTH123
        done = subprocess.run(
            [sys.executable, "-m", "coalmine", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )
    took = time.perf_counter() - began
    err = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        msg = f"coalmine {args[0]} exited with {done.returncode}:\n{err}"
        raise RuntimeError(msg)
    return took, err


@dataclass
class Verdicts:
    """One side's verdicts, by id (copies of one id must be equal)."""

    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    copies: int = 0
    conflicts: list[str] = field(default_factory=list)
    finals: dict[str, tuple[str, str]] = field(default_factory=dict)
    several_finals: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, verdicts: list[dict[str, Any]]) -> Verdicts:
        side = cls()
        for verdict in verdicts:
            seen = side.by_id.setdefault(verdict["verdict_id"], verdict)
            if seen is not verdict:
                side.copies += 1
                if seen != verdict:
                    side.conflicts.append(verdict["verdict_id"])
        finals: dict[str, list[dict[str, Any]]] = {}
        for verdict in side.by_id.values():
            if verdict["final"]:
                finals.setdefault(verdict["deployment_id"], []).append(verdict)
        for deployment_id, found in finals.items():
            last = found[-1]
            side.finals[deployment_id] = (last["decision"], last["verdict_id"])
            if len(found) > 1:
                side.several_finals[deployment_id] = [v["verdict_id"] for v in found]
        return side

    def decisions(self) -> Counter[str]:
        return Counter(decision for decision, _ in self.finals.values())


def differences(
    live: Verdicts, replayed: Verdicts, expected: list[str]
) -> tuple[list[str], list[str]]:
    """Lines describing every final and every verdict that differs: (finals, verdicts)."""
    finals = []
    for deployment_id in dict.fromkeys([*expected, *live.finals, *replayed.finals]):
        ours, theirs = live.finals.get(deployment_id), replayed.finals.get(deployment_id)
        if ours != theirs:
            finals.append(
                f"{deployment_id}: live {ours or 'no final'}, replay {theirs or 'no final'}"
            )
    verdicts = [f"{i}: only live" for i in live.by_id.keys() - replayed.by_id.keys()]
    verdicts += [f"{i}: only replay" for i in replayed.by_id.keys() - live.by_id.keys()]
    for verdict_id in sorted(live.by_id.keys() & replayed.by_id.keys()):
        ours, theirs = live.by_id[verdict_id], replayed.by_id[verdict_id]
        if ours != theirs:
            keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            verdicts.append(f"{verdict_id}: content differs in {', '.join(keys)}")
    return finals, sorted(verdicts)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def live_check(  # noqa: PLR0912 - one linear procedure, reported as it goes
    generated: Path, lines: int, workdir: Path, partitions: int
) -> int:
    """Steps 4-6 of the module docstring; the exit status."""
    messages, started = read_messages(generated)
    expected = set(started)
    problems: list[str] = []
    config = workdir / "live.toml"
    daemon_log = workdir / "daemon.log"
    recording = workdir / "recorded.jsonl"

    async with Tansu(log_dir=workdir) as broker:
        bootstrap = broker.bootstrap
        await ensure_topics(
            KafkaSettings(bootstrap_servers=bootstrap, idempotent_producer=False),
            {
                LIVE_TOPICS["deployments"]: partitions,
                LIVE_TOPICS["metrics"]: partitions,
                LIVE_TOPICS["verdicts"]: partitions,
                LIVE_TOPICS["dead_letter"]: 1,
            },
        )
        config.write_text(LIVE_CONFIG.format(bootstrap=bootstrap, **LIVE_TOPICS) + CONFIG)
        began = time.perf_counter()
        await produce(bootstrap, messages)
        print(
            f"\nlive: tansu {bootstrap}, {partitions} partitions; produced {len(messages):,}"
            f" messages in {time.perf_counter() - began:.1f}s"
        )
        del messages

        env = {k: v for k, v in os.environ.items() if not k.startswith("COALMINE_")}
        with daemon_log.open("wb") as log:
            spawned = time.monotonic()
            daemon = subprocess.Popen(
                [sys.executable, "-m", "coalmine", "run", "--config", str(config)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            watch = await watch_verdicts(bootstrap, partitions, expected, daemon, spawned)
        finally:
            stopped = stop_daemon(daemon)
        problems += [trouble for trouble in (watch.died, stopped) if trouble is not None]
        log_text = daemon_log.read_text(errors="replace")
        noisy = [ln for ln in log_text.splitlines() if "WARNING" in ln or "ERROR" in ln]
        if watch.all_final_at is not None:
            print(
                f"live daemon: first verdict {watch.first_at:.1f}s after its start, a final"
                f" verdict for every deployment after {watch.all_final_at:.1f}s"
            )
        else:
            print(
                f"live daemon: first verdict after {watch.first_at or 0:.1f}s, last after"
                f" {watch.last_at or 0:.1f}s; stopped waiting {LIVE_QUIET:g}s later"
            )
        if noisy:
            print(f"daemon log: {len(noisy)} warning/error lines ({daemon_log}), first:")
            for line in noisy[:5]:
                print(f"  {line}")

        record_took, record_err = command(
            "record", "--config", str(config), "--output", str(recording), "--since", "1h"
        )
        recorded = sum(1 for _ in recording.open("rb"))
        print(f"coalmine record: {record_took:.1f}s; {record_err.strip()}")
        if recorded != lines:
            problems.append(f"the recording has {recorded:,} lines, the stream {lines:,}")

    replays: dict[str, tuple[float, str, Verdicts]] = {}
    for name, source in (("recorded", recording), ("generated", generated)):
        output = workdir / f"replay-{name}.jsonl"
        took, err = command(
            "replay", "--config", str(config), "--input", str(source), "--json", stdout=output
        )
        totals = " ".join(err.split())
        replays[name] = (took, totals, Verdicts.of(read_json_lines(output)))
        print(f"coalmine replay --json ({name}): {took:.1f}s; {totals}")

    live = Verdicts.of(watch.verdicts)
    deployments = len(started)
    rows: list[tuple[str, str, str, str]] = []
    mismatches = 0
    columns = ("live", "replay recorded", "replay generated")
    sides = [live, *(v for _, _, v in replays.values())]
    rows.append(("deployments started", *(f"{deployments:,}",) * 3))
    rows.append(("final verdicts", *(f"{len(s.finals):,}" for s in sides)))
    rows += [
        (f"  {decision}", *(f"{s.decisions()[decision]:,}" for s in sides))
        for decision in ("promote", "rollback", "inconclusive")
    ]
    rows.append(("verdicts (distinct ids)", *(f"{len(s.by_id):,}" for s in sides)))
    rows.append(
        ("copies of an id: extra / differing", *(f"{s.copies} / {len(s.conflicts)}" for s in sides))
    )
    details: list[str] = []
    final_cells, verdict_cells = ["-"], ["-"]
    for name, (_, _, replayed) in replays.items():
        finals, verdicts = differences(live, replayed, started)
        mismatches += len(finals) + len(verdicts)
        final_cells.append(f"{len(finals):,}")
        verdict_cells.append(f"{len(verdicts):,}")
        details += [f"replay {name}: final {line}" for line in finals[:10]]
        details += [f"replay {name}: verdict {line}" for line in verdicts[:10]]
    rows.append(("final decision/id mismatches", *final_cells))
    rows.append(("verdict id/content mismatches", *verdict_cells))
    drain = watch.all_final_at
    rows.append(
        (
            "wall time",
            f"{drain:.1f}s to the last final" if drain is not None else "(not all final)",
            *(f"{took:.1f}s" for took, _, _ in replays.values()),
        )
    )
    rows.append(
        (
            "deployments/minute",
            f"{deployments / drain * 60:,.0f}" if drain else "-",
            *(f"{deployments / took * 60:,.0f}" for took, _, _ in replays.values()),
        )
    )
    width = max(len(r[0]) for r in rows)
    widths = [max(len(r[i]) for r in [("", *columns), *rows]) for i in (1, 2, 3)]
    print()
    print(" " * width + "  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for label, *cells in rows:
        print(
            label.ljust(width)
            + "  "
            + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        )
    print(f"mismatches: {mismatches}")

    for side_name, side in zip(columns, sides, strict=True):
        for verdict_id in side.conflicts[:10]:
            details.append(f"{side_name}: copies of {verdict_id} differ")
        for deployment_id, ids in list(side.several_finals.items())[:10]:
            details.append(f"{side_name}: {deployment_id} has several final verdicts {ids}")
        mismatches += len(side.conflicts) + len(side.several_finals)
        lacking = [d for d in started if d not in side.finals]
        if lacking:
            problems.append(
                f"{side_name}: {len(lacking)} deployments without a final verdict:"
                f" {', '.join(lacking[:10])}{' ...' if len(lacking) > 10 else ''}"
            )
    for line in details:
        print(f"  {line}")
    took = replays["recorded"][0]
    if took >= CRITERION:
        problems.append(f"the replay of the recording took {took:.1f}s (not under a minute)")
    met = mismatches == 0 and not problems
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(
        f"done-criterion ({deployments:,} recorded deployments replayed in under a minute,"
        f" same finals and verdict ids as the live daemon): {'met' if met else 'NOT met'}"
    )
    if not met:
        print(f"(files kept in {workdir})")
    return 0 if met else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--keep", type=Path, help="write the recording here (and keep it)")
    parser.add_argument("--cli", action="store_true", help="also time `coalmine replay`")
    parser.add_argument("--profile", action="store_true", help="profile with pyinstrument")
    parser.add_argument(
        "--live",
        action="store_true",
        help="also run the daemon on tansu, record, replay and compare the verdicts",
    )
    parser.add_argument("--partitions", type=int, default=4, help="with --live")
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

        if args.live:
            workdir = Path(tempfile.mkdtemp(prefix="coalmine-replay-live-"))
            status = asyncio.run(live_check(recording, lines, workdir, args.partitions))
            if status == 0:
                shutil.rmtree(workdir, ignore_errors=True)
            sys.exit(status)


if __name__ == "__main__":
    main()
