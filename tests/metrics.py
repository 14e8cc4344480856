"""The daemon's own Prometheus metrics, read through prometheus_client's public API."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coalmine.daemon.telemetry import Telemetry

_SUFFIXES = ("", "_total", "_sum", "_count")


def sample_value(telemetry: Telemetry, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels``, as ``/metrics`` shows it.

    ``name`` is the sample's name on the exposition, suffix included
    (``coalmine_verdicts_total``, ``coalmine_publish_duration_seconds_count``). A labelled
    sample that never occurred reads 0, as a counter's child does before its first
    increment; a name that no metric of the registry has fails, so a misspelt name cannot
    pass for a count of zero.
    """
    value = telemetry.registry.get_sample_value(name, labels)
    if value is not None:
        return value
    families = [metric.name for metric in telemetry.registry.collect()]
    if not any(name == family + suffix for family in families for suffix in _SUFFIXES):
        msg = f"no metric of the daemon has samples named {name!r}"
        raise AssertionError(msg)
    return 0.0
