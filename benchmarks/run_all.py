"""Every benchmark with a target, one after the other, and one table of the figures.

Run from the repository root, alone on the machine (the figures are times):
``python benchmarks/run_all.py [--quick] [--only NAME ...] [--out DIR]``.

Runs ``judge_cost.py``, ``ingest.py``, ``verdict_latency.py``, ``memory.py`` and
``recovery.py`` as subprocesses (each starts its own broker where it needs one: Apache Kafka,
or tansu with ``--broker tansu``; ``memory.py`` always tansu), keeps
each one's output in ``--out`` (a new temporary folder by default), and prints a table:
figure, measured, baseline, ratio, target, met. ``--quick`` runs smaller sizes (a few
minutes in all instead of about eleven): fine for checking that everything works, but the
targets are stated for the full sizes, so a quick run's "met" column is only indicative.
The soak (``soak.py``, ten minutes) is not part of it.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

FULL = {
    "judge_cost": [],
    "ingest": [],
    "verdict_latency": [],
    "memory": [],
    "recovery": [],
    "recovery_static": ["--static-membership"],
}
QUICK = {
    "judge_cost": ["--repeat", "3"],
    "ingest": ["--messages", "10000", "--runs", "1"],
    "verdict_latency": [
        *("--deployments", "200", "--duration", "20", "--warmup", "5"),
        *("--max-minutes", "3", "--critical", "3", "--probe-seconds", "2"),
    ],
    "memory": ["--deployments", "200", "--minutes", "10"],
    "recovery": ["--deployments", "200", "--minutes", "2"],
    "recovery_static": ["--deployments", "200", "--minutes", "2", "--static-membership"],
}
SCRIPT = {"recovery_static": "recovery"}
"""Entries that run another entry's script with other options."""
ON_A_BROKER = {"ingest", "verdict_latency", "recovery", "recovery_static"}
"""Entries whose script takes ``--broker``."""


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    measured: str
    baseline: str
    ratio: str
    target: str
    met: bool | None


def _float(text: str) -> float:
    return float(text.replace(",", ""))


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None or not math.isfinite(seconds) else f"{seconds * 1e3:.1f} ms"


def judge_cost_rows(out: str, _: dict) -> list[Row]:
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) != 5 or not cells[0].replace(",", "").isdigit():
            continue
        n = int(cells[0])
        scipy_ms = _float(cells[1].split()[0])
        ours_ms = _float(cells[4].split()[0])
        rows.append(
            Row(
                f"one look, analyze_distribution, n = m = {n:,}",
                f"{ours_ms:.2f} ms",
                f"scipy MWU {scipy_ms:.2f} ms",
                f"{ours_ms / scipy_ms:.2f}",
                "-",
                None,
            )
        )
    return rows[-1:]  # the largest size


def ingest_rows(out: str, _: dict) -> list[Row]:
    rows = []
    pattern = re.compile(r"^(bare|bare\+json|coalmine)\s+best\s+([\d,]+)", re.MULTILINE)
    for section in out.split("\n== ")[1:]:
        name = section.split(",", 1)[0]  # "native K=100", "otlp_json", ...
        best = {m.group(1): _float(m.group(2)) for m in pattern.finditer(section)}
        if "coalmine" not in best or "bare" not in best:
            continue
        ratio = best["coalmine"] / best["bare"]
        if name.startswith("native K="):
            samples = int(name.removeprefix("native K="))
            label = f"ingest, {samples} sample(s)/message, messages/s"
            if samples > 1:
                target, met = ">= 0.60 of bare", ratio >= 0.60
            else:
                target, met = ">= 50,000/s", best["coalmine"] >= 50_000
        else:
            label, target, met = f"ingest, {name} messages/s", "-", None
        rows.append(
            Row(
                label,
                f"{best['coalmine']:,.0f}/s",
                f"bare consumer {best['bare']:,.0f}/s",
                f"{ratio:.3f}",
                target,
                met,
            )
        )
    return rows


def latency_rows(_: str, data: dict) -> list[Row]:
    base = data["baseline_p99"]
    rate = f" at {data['rate']:,.0f} msgs/s"
    return [
        Row(
            f"verdict latency p99, inside (histogram){rate}",
            _ms(data["inside_p99"]),
            f"bare round trip p99 {_ms(base)}",
            f"{data['inside_p99'] / base:.1f}" if base else "n/a",
            "<= 50 ms",
            data["inside_p99"] <= data["target_p99"],
        ),
        Row(
            "verdict latency p99, outside (deciding msg -> verdict)",
            _ms(data["outside_p99"]),
            f"bare round trip p99 {_ms(base)}",
            f"{data['outside_p99'] / base:.1f}" if base else "n/a",
            "<= 50 ms",
            data["outside_p99"] <= data["target_p99"],
        ),
        *(
            [
                Row(
                    "verdict latency p99, outside, against the floor",
                    _ms(data["outside_p99"]),
                    f"do-nothing daemon p99 {_ms(data['echo']['outside_p99'])}",
                    f"{data['outside_p99'] / data['echo']['outside_p99']:.1f}",
                    "(reported)",
                    True,
                )
            ]
            if data.get("echo")
            else []
        ),
        Row(
            "critical rollback, deciding msg -> verdict, p99",
            _ms(data["critical_p99"]),
            f"bare round trip p99 {_ms(base)}",
            f"{data['critical_p99'] / base:.1f}" if base else "n/a",
            f"all {data['critical']} before next interval",
            data["critical_rolled_back"] == data["critical"],
        ),
    ]


def memory_rows(_: str, data: dict) -> list[Row]:
    return [
        Row(
            f"daemon RSS, {data['samples']:,} samples held",
            f"{data['loaded']:.0f} MB",
            f"samples as float64 {data['raw_mb']:.0f} MB",
            f"{data['loaded'] / data['raw_mb']:.2f}",
            f"<= {data['target_mb']:g} MB",
            data["met"],
        )
    ]


def recovery_rows(_: str, data: dict, how: str = "") -> list[Row]:
    return [
        Row(
            f"recovery after SIGKILL{how}, {data['reread']:,} records",
            f"{data['rebuilt']:.1f} s",
            f"bare consumer {data['bare']:.2f} s",
            f"{data['ratio']:.1f}",
            f"< {data['target']:g} s",
            data["met"],
        )
    ]


PARSERS = {
    "judge_cost": judge_cost_rows,
    "ingest": ingest_rows,
    "verdict_latency": latency_rows,
    "memory": memory_rows,
    "recovery": recovery_rows,
    "recovery_static": lambda text, data: recovery_rows(text, data, ", static membership"),
}
OURS = {"verdict_latency", "memory", "recovery", "recovery_static"}
"""Scripts that write their figures with ``--json``; the others are read from their output."""


def run(name: str, extra: list[str], out: Path) -> tuple[list[Row], float, int]:
    command = [sys.executable, str(HERE / f"{SCRIPT.get(name, name)}.py"), *extra]
    figures = out / f"{name}.json"
    if name in OURS:
        command += ["--json", str(figures)]
    log = out / f"{name}.txt"
    print(f"-- {name}: {' '.join(command[1:])}", flush=True)
    began = time.monotonic()
    with log.open("w") as sink:
        code = subprocess.run(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - began
    text = log.read_text(errors="replace")
    print(f"   {seconds:.0f} s, exit {code.returncode}; output in {log}", flush=True)
    if code.returncode != 0:
        print("\n".join("   | " + line for line in text.splitlines()[-15:]))
        return [], seconds, code.returncode
    data = orjson.loads(figures.read_bytes()) if name in OURS else {}
    try:
        return PARSERS[name](text, data), seconds, 0
    except (KeyError, ValueError, TypeError, ZeroDivisionError) as exc:
        print(f"   could not read its figures: {exc!r}")
        return [], seconds, 1


def table(rows: list[Row]) -> str:
    header = ("figure", "measured", "baseline", "ratio", "target", "met?")
    cells = [
        (
            r.figure,
            r.measured,
            r.baseline,
            r.ratio,
            r.target,
            "-" if r.met is None else ("yes" if r.met else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a few minutes")
    parser.add_argument("--only", nargs="+", choices=list(FULL), help="run only these")
    parser.add_argument("--out", type=Path, help="folder for each script's output")
    parser.add_argument(
        "--broker",
        choices=("kafka", "tansu"),
        default="kafka",
        help="the broker of the scripts that start one (memory.py always uses tansu)",
    )
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="coalmine-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else FULL
    rows: list[Row] = []
    failed = []
    began = time.monotonic()
    for name in args.only or list(FULL):
        extra = [*sizes[name], *(["--broker", args.broker] if name in ON_A_BROKER else [])]
        found, _, code = run(name, extra, out)
        rows += found
        if code:
            failed.append(name)
    kind = "QUICK sizes: indicative only" if args.quick else "full sizes"
    print(f"\n== coalmine benchmarks ({kind}), {time.monotonic() - began:.0f} s in all\n")
    print(table(rows))
    if failed:
        print(f"\nfailed: {', '.join(failed)} (see their output in {out})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
