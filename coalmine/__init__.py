"""coalmine: event-driven canary analysis.

Deployment pipelines announce deployments on the bus, services publish metrics tagged
baseline or canary, and coalmine compares the cohorts continuously and publishes
``promote`` / ``rollback`` / ``continue`` / ``inconclusive`` verdicts.

Where a verdict is decided: ``coalmine.judge``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from coalmine._exceptions import (
    CoalmineError,
    ConfigError,
    ConfigProblem,
    ContractError,
    TransportError,
)

if TYPE_CHECKING:
    from coalmine.analyzers.result import MetricResult
    from coalmine.config import MetricSpec, Profile, Settings, load_settings
    from coalmine.contract import (
        DeployEvent,
        MetricEvent,
        Verdict,
        decode_deploy_event,
        decode_metric_events,
        encode_verdict,
    )
    from coalmine.daemon.deployment import Deployment
    from coalmine.daemon.router import Router
    from coalmine.judge import Judgement, judge

# Imported on first use: the analyzers bring numpy and scipy (~0.4 s), which the CLI's
# --help, `start` or `wait` do not need.
_LAZY = {
    "MetricResult": "coalmine.analyzers.result",
    "MetricSpec": "coalmine.config",
    "Profile": "coalmine.config",
    "Settings": "coalmine.config",
    "load_settings": "coalmine.config",
    "DeployEvent": "coalmine.contract",
    "MetricEvent": "coalmine.contract",
    "Verdict": "coalmine.contract",
    "decode_deploy_event": "coalmine.contract",
    "decode_metric_events": "coalmine.contract",
    "encode_verdict": "coalmine.contract",
    "Deployment": "coalmine.daemon.deployment",
    "Router": "coalmine.daemon.router",
    "Judgement": "coalmine.judge",
    "judge": "coalmine.judge",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'coalmine' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


try:
    __version__ = version("coalmine")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "CoalmineError",
    "ConfigError",
    "ConfigProblem",
    "ContractError",
    "DeployEvent",
    "Deployment",
    "Judgement",
    "MetricEvent",
    "MetricResult",
    "MetricSpec",
    "Profile",
    "Router",
    "Settings",
    "TransportError",
    "Verdict",
    "__version__",
    "decode_deploy_event",
    "decode_metric_events",
    "encode_verdict",
    "judge",
    "load_settings",
]
