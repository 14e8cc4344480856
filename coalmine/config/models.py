"""The configuration schema: one TOML file, every key overridable by ``COALMINE_*``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, Self

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from coalmine.config.durations import Duration, format_duration

MetricKind = Literal["distribution", "ratio"]
Direction = Literal["increase", "decrease", "either"]
TestMode = Literal["sequential", "fixed"]
NullHypothesis = Literal["no_change", "tolerance"]
Unit = Literal["auto", "request", "instance"]

DEFAULT_ALLOWED_CHANGE: dict[MetricKind, float] = {"distribution": 0.10, "ratio": 0.5}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """How to reach Kafka. SASL and TLS settings are passed to aiokafka as they are."""

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "coalmine"
    client_id: str = "coalmine"
    idempotent_producer: bool = True
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    request_timeout: Duration = 30.0
    max_poll_records: int = Field(default=2000, gt=0)
    session_timeout: Duration = 10.0
    max_request_bytes: int = Field(default=1_048_576, gt=0)

    @model_validator(mode="after")
    def _sasl_complete(self) -> Self:
        if self.security_protocol.startswith("SASL"):
            missing = [
                key
                for key in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, key) is None
            ]
            if missing:
                msg = f"security_protocol {self.security_protocol} needs {', '.join(missing)}"
                raise ValueError(msg)
        return self


Bus = Literal["kafka", "mqtt"]
"""A message bus coalmine can consume from and publish to."""


def _kafka_only() -> list[Bus]:
    return ["kafka"]


class BusSettings(_Section):
    """Which buses the daemon reads its input from and publishes its output to."""

    consume: list[Bus] = Field(default_factory=_kafka_only)
    publish: list[Bus] = Field(default_factory=_kafka_only)

    @field_validator("consume", "publish")
    @classmethod
    def _some_and_unique(cls, value: list[Bus]) -> list[Bus]:
        if not value:
            raise ValueError('name at least one bus: "kafka", "mqtt" or both')
        dupes = sorted({bus for bus in value if value.count(bus) > 1})
        if dupes:
            raise ValueError(f"each bus at most once: {', '.join(dupes)} repeated")
        return value


class MqttSettings(_Section):
    """How to reach the MQTT broker (MQTT v5). ``""`` for ``username``/``password`` is unset."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    topic_prefix: str = "coalmine"
    client_id: str | None = Field(default=None, min_length=1)
    keepalive: int = Field(default=30, ge=1, le=65535)
    timeout: Duration = Field(default=10.0, gt=0)
    session_expiry: Duration = Field(default=86400.0, ge=0, le=4_294_967_295)

    @field_validator("username", "password", "client_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("password")
    @classmethod
    def _empty_secret_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is not None and not value.get_secret_value() else value

    @field_validator("topic_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        if any(char in value for char in "+#\0"):
            raise ValueError("must not contain the wildcards '+', '#' or a NUL character")
        if value.startswith("$"):
            raise ValueError("must not start with '$' (topics reserved for the broker)")
        if "" in value.split("/"):
            raise ValueError("must not start or end with '/' nor contain '//'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.password is not None and self.username is None:
            raise ValueError("password needs a username")
        files = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k) is not None]
        if files and not self.tls:
            raise ValueError(f"{', '.join(files)} given but tls = false")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file")
        return self


class TopicsSettings(_Section):
    """Topic names (defaults from the wire contract)."""

    deployments: str = "coalmine.deployments"
    metrics: str = "coalmine.metrics"
    verdicts: str = "coalmine.verdicts"
    dead_letter: str = "coalmine.dlq"


class HttpSettings(_Section):
    """The HTTP endpoint serving ``/metrics``, ``/livez`` and ``/readyz``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class LimitSettings(_Section):
    """Caps that keep one producer from exhausting the daemon's memory."""

    max_open_deployments: int = Field(default=10_000, gt=0)
    max_metrics_per_deployment: int = Field(default=64, gt=0)
    max_samples_per_cohort: int = Field(default=200_000, gt=0)
    max_message_bytes: int = Field(default=1_000_000, gt=0)


class MetricSpec(_Section):
    """One metric of an analysis profile and how it is compared."""

    name: str = Field(min_length=1)
    kind: MetricKind = "distribution"
    direction: Direction = "increase"
    allowed_change: float | None = Field(default=None, ge=0)
    critical: bool = False
    min_samples: int = Field(default=50, ge=1)
    objective: float | None = Field(default=None, gt=0, lt=1, validate_default=True)
    fast_burn: float = Field(default=14.4, gt=0)
    slow_burn: float = Field(default=6.0, gt=0)
    weight: float = Field(default=1.0, gt=0)
    group: str = Field(default="default", min_length=1)
    must_have_data: bool = False
    test: TestMode = "sequential"
    null: NullHypothesis = "no_change"
    unit: Unit = "auto"
    remove_outliers: bool = False
    nan_strategy: Literal["remove", "replace"] = "remove"
    prior_width: float = Field(default=0.03, gt=0, le=0.5)

    @field_validator("objective")
    @classmethod
    def _objective_fits_kind(cls, value: float | None, info: ValidationInfo) -> float | None:
        # A field validator (not a model validator) so the problem is reported at
        # ``metrics[i].objective`` and alongside every other problem of the metric.
        kind = info.data.get("kind")
        if kind == "ratio" and value is None:
            raise ValueError("a ratio metric needs an objective, e.g. objective = 0.999")
        if kind == "distribution" and value is not None:
            raise ValueError("objective applies to ratio metrics only")
        return value

    @field_validator("null")
    @classmethod
    def _tolerance_null_is_one_sided(cls, value: str, info: ValidationInfo) -> str:
        if value == "tolerance" and info.data.get("direction") == "either":
            raise ValueError("null = 'tolerance' needs direction 'increase' or 'decrease'")
        return value

    @property
    def tolerance(self) -> float:
        """``allowed_change``, or the kind's default (0.10 distribution, 0.5 ratio)."""
        if self.allowed_change is not None:
            return self.allowed_change
        return DEFAULT_ALLOWED_CHANGE[self.kind]


class Profile(_Section):
    """How a deployment is analysed: its schedule, thresholds and metrics."""

    interval: Duration = Field(default=60.0, gt=0)
    min_duration: Duration = 300.0
    max_duration: Duration = Field(default=1800.0, gt=0, validate_default=True)
    pass_score: float = Field(default=95.0, ge=0, le=100)
    marginal_score: float = Field(default=75.0, ge=0, le=100, validate_default=True)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    groups: dict[str, float] = Field(default_factory=dict)
    slo_period: Duration = Field(default=30 * 86400.0, gt=0)
    sample_ratio_alpha: float = Field(default=0.001, gt=0, lt=0.5)
    metrics: tuple[MetricSpec, ...] = Field(min_length=1)

    # Cross-field checks are field validators on the later field (``info.data`` holds the
    # earlier ones), so each problem gets its own key and all are reported together.

    @field_validator("max_duration")
    @classmethod
    def _max_not_below_min(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("min_duration")
        if low is not None and low > value:
            msg = (
                f"max_duration ({format_duration(value)}) must not be shorter than"
                f" min_duration ({format_duration(low)})"
            )
            raise ValueError(msg)
        return value

    @field_validator("marginal_score")
    @classmethod
    def _marginal_not_above_pass(cls, value: float, info: ValidationInfo) -> float:
        high = info.data.get("pass_score")
        if high is not None and value > high:
            msg = f"marginal_score ({value:g}) must not exceed pass_score ({high:g})"
            raise ValueError(msg)
        return value

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, value: tuple[MetricSpec, ...]) -> tuple[MetricSpec, ...]:
        names = [m.name for m in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"metric names must be unique: {', '.join(dupes)} repeated")
        return value

    @field_validator("groups")
    @classmethod
    def _positive_group_weights(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(name for name, weight in value.items() if not weight > 0)
        if bad:
            raise ValueError(f"group weights must be greater than 0: {', '.join(bad)}")
        return value

    @property
    def metric_alpha(self) -> float:
        """Each metric's share of ``alpha``: false alarms add up across metrics."""
        return self.alpha / len(self.metrics)

    def group_weight(self, group: str) -> float:
        """A group's weight in the score (1 unless ``groups`` says otherwise)."""
        return self.groups.get(group, 1.0)

    def metric(self, name: str) -> MetricSpec | None:
        """The metric spec called ``name``, if the profile has one."""
        for spec in self.metrics:
            if spec.name == name:
                return spec
        return None

    def digest(self) -> str:
        """``sha256:<hex>`` of the profile's canonical JSON; verdicts carry it."""
        canonical = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return "sha256:" + hashlib.sha256(canonical).hexdigest()


DEFAULT_PROFILE = Profile(
    metrics=(
        MetricSpec(name="latency_ms", kind="distribution", direction="increase"),
        MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True),
    )
)
"""The profile used when a configuration names none: latency plus a critical error SLO."""
