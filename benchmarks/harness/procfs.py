"""Memory and CPU of a process, of this process's children and of the whole machine, read
from ``/proc`` (Linux; no psutil)."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second: the unit of the CPU times in ``/proc``."""


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as field -> text; empty once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _status_mb(pid: int, field: str) -> float:
    value = proc_status(pid).get(field)
    return int(value.split()[0]) / 1024 if value else 0.0


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MB (0 once it is gone)."""
    return _status_mb(pid, "VmRSS")


def peak_mb(pid: int) -> float:
    """Peak resident set size of a process in MB (``VmHWM``; 0 once it is gone)."""
    return _status_mb(pid, "VmHWM")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_fds(pid: int) -> int:
    """Open file descriptors of a process (0 once it is gone)."""
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return 0


def _children() -> list[tuple[int, str, list[str]]]:
    """(pid, command name, stat fields after the name) of this process's live children."""
    me = str(os.getpid())
    out = []
    try:
        entries = [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    except OSError:
        return out
    for entry in entries:
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == me:  # ppid
            out.append((int(entry.name), stat[stat.index("(") + 1 : stat.rindex(")")], fields))
    return out


def children_cpu() -> float:
    """User + system CPU seconds of this process's live children (a broker it started)."""
    return sum(int(fields[11]) + int(fields[12]) for _, _, fields in _children()) / TICKS


def child_pid(name: str) -> int | None:
    """A live child of this process whose command name starts with ``name`` (tansu)."""
    return next((pid for pid, comm, _ in _children() if comm.startswith(name)), None)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, every core, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return total - idle, total


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every core, every process): over a
    window, minus what a benchmark's own processes used, it tells how much other work
    shared the cores."""
    return machine_cpu()[0] / TICKS
