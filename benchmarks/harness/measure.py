"""Measuring helpers: the daemon's ``/metrics`` read back, histogram quantiles as Prometheus
computes them, percentiles, and the figures written for ``run_all.py``."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``name{label=value,...}`` -> value (labels sorted)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def total(metrics: dict[str, float], name: str) -> float | None:
    """Sum of every sample of ``name`` (any labels); None if there is none."""
    found = [v for k, v in metrics.items() if k == name or k.startswith(name + "{")]
    return sum(found) if found else None


def buckets(metrics: dict[str, float], histogram: str) -> list[tuple[float, float]]:
    """``(le, cumulative count)`` of a histogram, by ``le``."""
    prefix = histogram + "_bucket{le="
    out = [(float(k[len(prefix) : -1]), v) for k, v in metrics.items() if k.startswith(prefix)]
    return sorted(out)


def bucket_quantile(
    counts: list[tuple[float, float]], q: float
) -> tuple[float, float, float] | None:
    """(estimate, bucket low, bucket high) of quantile ``q``, as ``histogram_quantile``.

    Linear interpolation inside the bucket holding the rank; in the +Inf bucket the
    estimate is the highest finite bound (and the high bound is inf).
    """
    if not counts or counts[-1][1] <= 0:
        return None
    rank = q * counts[-1][1]
    low, below = 0.0, 0.0
    for le, cumulative in counts:
        if cumulative >= rank:
            if math.isinf(le):
                return low, low, le
            inside = cumulative - below
            share = (rank - below) / inside if inside > 0 else 1.0
            return low + (le - low) * share, low, le
        low, below = le, cumulative
    return None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of unsorted values; nan if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def write_json(path: str | None, payload: dict) -> None:
    """The figures for ``run_all.py``."""
    if path:
        Path(path).write_text(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
