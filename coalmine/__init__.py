"""coalmine: event-driven canary analysis.

Deployment pipelines announce deployments on the bus, services publish metrics tagged
baseline or canary, and coalmine compares the cohorts continuously and publishes
``promote`` / ``rollback`` / ``continue`` / ``inconclusive`` verdicts.

Where a verdict is decided: ``coalmine.judge``.
"""

from importlib.metadata import PackageNotFoundError, version

from coalmine._exceptions import (
    CoalmineError,
    ConfigError,
    ConfigProblem,
    ContractError,
    TransportError,
)
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
