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
EffectMeasure = Literal["auto", "shift", "mean"]
Unit = Literal["auto", "request", "instance"]

DEFAULT_ALLOWED_CHANGE: dict[MetricKind, float] = {"distribution": 0.10, "ratio": 0.5}
DEFAULT_QUANTILES = (0.9, 0.99)
"""Tails tested by default on a distribution metric whose increase is harmful."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class KafkaSettings(_Section):
    """How to reach Kafka. SASL and TLS settings are passed to aiokafka as they are."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated ``host:port`` list of the brokers to bootstrap from."""
    group_id: str = "coalmine"
    """Consumer group; daemons sharing it split the deployments and metrics partitions."""
    client_id: str = "coalmine"
    """Client id the brokers see (in their logs and quotas)."""
    idempotent_producer: bool = True
    """Use the idempotent producer; ``false`` for brokers without InitProducerId (tansu)."""
    transactional_id: str | None = Field(default=None, min_length=1)
    """Publish verdicts and dead letters in Kafka transactions that also commit the offsets
    they settle, so ``read_committed`` consumers see each verdict exactly once. Unique per
    daemon instance and stable across its restarts (like ``group_instance_id``)."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How to talk to the brokers; ``SASL_*`` also needs the three ``sasl_*`` keys."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism, for a ``SASL_*`` security_protocol."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password; never shown in logs, reprs or problem messages."""
    ssl_cafile: Path | None = None
    """CA bundle to verify the broker certificates with (``SSL``, ``SASL_SSL``)."""
    ssl_certfile: Path | None = None
    """Client certificate file, for mutual TLS."""
    ssl_keyfile: Path | None = None
    """Client private key file, for mutual TLS."""
    ssl_password: SecretStr | None = None
    """Password of ``ssl_keyfile`` if it is encrypted; never shown."""
    ssl_check_hostname: bool = True
    """Check that each broker certificate matches the broker's host name."""
    request_timeout: Duration = 30.0
    """How long one request to the brokers (connect, metadata, publish, commit) may take."""
    max_poll_records: int = Field(default=2000, gt=0)
    """Most records taken from the consumer in one fetch."""
    fetch_max_wait: Duration = Field(default=0.1, gt=0)
    """Longest a fetch request waits at the broker for new records (``fetch.max.wait.ms``).

    Kafka answers as soon as a record arrives, so this only bounds idle polling there;
    brokers that hold a fetch for the whole wait (tansu) add up to this much verdict
    latency: use 0.01 with them."""
    fetch_min_bytes: int = Field(default=1, gt=0)
    """Bytes a fetch waits for at the broker, up to ``fetch_max_wait`` (``fetch.min.bytes``).

    At 1 the broker answers with the first record: the lowest latency at any rate. At
    sustained high rates, many small fetches cost the daemon more per message than the
    messages themselves; 32768 with ``fetch_max_wait = "10ms"`` takes a sixth off its CPU at
    16,600 messages/s and lowers the verdict latency's p99, while the median rises by up to
    the wait (see ``docs/operations.md``)."""
    session_timeout: Duration = 10.0
    """Consumer-group session timeout: a daemon silent this long loses its partitions."""
    max_request_bytes: int = Field(default=1_048_576, gt=0)
    """Largest produce request in bytes; keep it above ``limits.max_message_bytes``."""
    group_instance_id: str | None = Field(default=None, min_length=1)
    """Static membership id (Kafka ``group.instance.id``), unique per daemon (the pod name).

    A daemon restarted within ``session_timeout`` gets its partitions back without a
    rebalance; unset: dynamic membership."""

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

    @model_validator(mode="after")
    def _transactions_are_idempotent(self) -> Self:
        if self.transactional_id is not None and not self.idempotent_producer:
            msg = "transactional_id needs idempotent_producer = true (transactions build on it)"
            raise ValueError(msg)
        return self


Bus = Literal["kafka", "mqtt"]
"""A message bus coalmine can consume from and publish to."""


def _kafka_only() -> list[Bus]:
    return ["kafka"]


class BusSettings(_Section):
    """Which buses the daemon reads its input from and publishes its output to."""

    consume: list[Bus] = Field(default_factory=_kafka_only)
    """Buses deploy and metric events are read from: ``kafka``, ``mqtt`` or both."""
    publish: list[Bus] = Field(default_factory=_kafka_only)
    """Buses verdicts and dead letters are published to; with both, each goes to both."""

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
    """Broker host name or address."""
    port: int = Field(default=1883, ge=1, le=65535)
    """Broker port (usually 8883 with TLS)."""
    username: str | None = None
    """User to authenticate as; ``""`` means none."""
    password: SecretStr | None = None
    """Password of ``username``; ``""`` means none; never shown."""
    tls: bool = False
    """Connect with TLS; the broker certificate and host name are verified."""
    ca_file: Path | None = None
    """CA bundle to verify the broker with (needs ``tls``); unset: the system CAs."""
    cert_file: Path | None = None
    """Client certificate (PEM, may hold the key too) for mutual TLS (needs ``tls``)."""
    key_file: Path | None = None
    """Client private key, if not in ``cert_file`` (needs ``cert_file``)."""
    topic_prefix: str = "coalmine"
    """First level(s) of every topic; no ``+``, ``#``, leading ``$`` or empty level."""
    client_id: str | None = Field(default=None, min_length=1)
    """Client id, stable across restarts, unique per daemon; unset: ``coalmine-<hostname>``."""
    keepalive: int = Field(default=30, ge=1, le=65535)
    """Keep-alive interval in seconds; a dead connection is noticed within about twice it."""
    timeout: Duration = Field(default=10.0, gt=0)
    """How long connecting, subscribing and each publish acknowledgement may take."""
    session_expiry: Duration = Field(default=86400.0, ge=0, le=4_294_967_295)
    """How long the broker keeps a consuming daemon's session while it is away."""

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
    """Topic deploy events are read from."""
    metrics: str = "coalmine.metrics"
    """Topic metric events are read from."""
    verdicts: str = "coalmine.verdicts"
    """Topic verdicts are published to, keyed by deployment id."""
    dead_letter: str = "coalmine.dlq"
    """Topic invalid input is copied to, unchanged, with the reason in headers."""


class HttpSettings(_Section):
    """The HTTP endpoint serving ``/metrics``, ``/livez`` and ``/readyz``."""

    enabled: bool = True
    """Serve the HTTP endpoint at all."""
    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0`` in a container)."""
    port: int = Field(default=9464, ge=0, le=65535)
    """Port to listen on; 0 picks any free port."""
    api_token: SecretStr | None = None
    """Bearer token the ``/api/v1`` endpoints require; unset: open. Never logged."""
    public_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    """Base URL people reach this endpoint at (through an ingress or proxy): chat actions
    link ``<public_url>/deployments/<id>/report``; unset: no link."""


class LimitSettings(_Section):
    """Caps that keep one producer from exhausting the daemon's memory."""

    max_open_deployments: int = Field(default=10_000, gt=0)
    """Deployments under analysis at once; a ``started`` beyond it is dead-lettered."""
    max_metrics_per_deployment: int = Field(default=64, gt=0)
    """Most metrics a profile may define (checked when the configuration is loaded)."""
    max_samples_per_cohort: int = Field(default=200_000, gt=0)
    """Samples kept per metric and cohort; beyond it, a uniform reservoir sample."""
    max_message_bytes: int = Field(default=1_000_000, gt=0)
    """Largest message accepted, in bytes; a larger one is dead-lettered, truncated."""
    max_instances_per_cohort: int = Field(default=1_000, gt=0)
    """Most instances tracked per cohort for instance-level analysis; more are counted."""
    max_history_events_per_service: int = Field(default=5_000, gt=0)
    """Most recent metric events kept per service for baselines from the past (only when a
    profile has a ``reference``); beyond it the oldest go first."""


class MetricSpec(_Section):
    """One metric of an analysis profile and how it is compared."""

    name: str = Field(min_length=1)
    """The ``metric`` field of the events this reads; unique within the profile."""
    kind: MetricKind = "distribution"
    """``distribution``: samples (Mann-Whitney); ``ratio``: good/total counts (SLO)."""
    direction: Direction = "increase"
    """The change that is a regression: increase (latency), decrease, either."""
    allowed_change: float | None = Field(default=None, ge=0)
    """Relative change tolerated (fraction); unset: 0.10 distribution, 0.5 ratio."""
    critical: bool = False
    """A failure of this metric rolls back at once, whatever the score."""
    critical_change: float | None = Field(default=None, ge=0)
    """Distribution: a critical metric's failure rolls back at once only when its change
    lies beyond this (Kayenta's critical effect size); below, it counts in the score."""
    min_samples: int = Field(default=50, ge=1)
    """Samples per cohort before a distribution metric is judged (below: nodata)."""
    objective: float | None = Field(default=None, gt=0, lt=1, validate_default=True)
    """The SLO as a good/total ratio, e.g. 0.999; required for ratio metrics only."""
    fast_burn: float = Field(default=14.4, gt=0)
    """Ratio: burn rate of the fast rule, over max_duration/6 and 1/12 of that."""
    slow_burn: float = Field(default=6.0, gt=0)
    """Ratio: burn rate of the slow rule, over max_duration and max_duration/12."""
    weight: float = Field(default=1.0, gt=0)
    """Weight of this metric in its group's score."""
    group: str = Field(default="default", min_length=1)
    """Score group of the metric (weighted by the profile's ``groups``)."""
    must_have_data: bool = False
    """Count the metric as failing if it has no data once min_duration has passed."""
    dry_run: bool = False
    """Judged and reported, never deciding: its failure neither rolls back nor lowers the
    score, and it does not hold back promotion (trying a metric, or coalmine beside the
    tool that decides today)."""
    test: TestMode = "sequential"
    """``sequential``: anytime-valid tests; ``fixed``: a fixed-sample test at every look."""
    null: NullHypothesis = "no_change"
    """What the test rejects: ``no_change``, or ``tolerance`` (worse than allowed_change)."""
    unit: Unit = "auto"
    """Distribution unit of analysis: ``request``, ``instance`` or ``auto`` (by the data)."""
    remove_outliers: bool = False
    """Drop samples beyond Tukey's far-out fences (3 x IQR) before comparing."""
    nan_strategy: Literal["remove", "replace"] = "remove"
    """NaN samples: ``remove`` drops them, ``replace`` counts them as 0."""
    prior_width: float = Field(default=0.03, gt=0, le=0.5)
    """Width (sd) of the sequential test's prior on the AUC shift (AUC 0.5 = no effect)."""
    prior_centre: float = Field(default=0.04, ge=0, lt=0.5)
    """Centre of that prior, as a harmful AUC shift (0: centred on no effect). 0.04 is about
    +7% on latency with a log-sd of 0.5: effects a canary must catch, not tiny ones."""
    effect: EffectMeasure = "auto"
    """Distribution: the change a regression is measured by: ``shift`` (Hodges-Lehmann,
    over the baseline median), ``mean`` (ratio of means), or ``auto`` (``mean`` when one
    value holds a quarter or more of the baseline's samples, such as zeros or histogram
    buckets, where the shift is blind; ``shift`` otherwise)."""
    quantiles: tuple[float, ...] | None = None
    """Distribution: tails tested, as quantiles in (0.5, 1) (upper tails for ``increase``,
    the lowest ``1 - q`` for ``decrease``); unset: [0.9, 0.99] for ``increase`` per
    request, none otherwise; [] turns them off."""
    tail_allowed_change: float | None = Field(default=None, ge=0)
    """Relative change of a tail's mean tolerated (fraction); unset: allowed_change."""

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

    @field_validator("quantiles")
    @classmethod
    def _quantiles_fit(
        cls, value: tuple[float, ...] | None, info: ValidationInfo
    ) -> tuple[float, ...] | None:
        if not value:
            return value
        problems = [f"{q:g}" for q in value if not 0.5 < q < 1.0]
        if problems:
            raise ValueError(f"quantiles must lie in (0.5, 1), got {', '.join(problems)}")
        if info.data.get("kind") == "ratio":
            raise ValueError("quantiles apply to distribution metrics only")
        if info.data.get("direction") == "either":
            raise ValueError("quantiles need direction 'increase' or 'decrease'")
        return tuple(sorted(set(value)))

    @property
    def tail_quantiles(self) -> tuple[float, ...]:
        """The tails tested: ``quantiles``, or [0.9, 0.99] for an ``increase`` metric."""
        if self.quantiles is not None:
            return self.quantiles
        if self.kind == "distribution" and self.direction == "increase":
            return DEFAULT_QUANTILES
        return ()

    @property
    def tail_tolerance(self) -> float:
        """``tail_allowed_change``, or the metric's tolerance."""
        if self.tail_allowed_change is not None:
            return self.tail_allowed_change
        return self.tolerance

    @property
    def tolerance(self) -> float:
        """``allowed_change``, or the kind's default (0.10 distribution, 0.5 ratio)."""
        if self.allowed_change is not None:
            return self.allowed_change
        return DEFAULT_ALLOWED_CHANGE[self.kind]


DAY = 86400.0
"""Seconds in a day: the step of a reference's ``days``."""

MAX_REFERENCE_DAYS = 28
"""The furthest back a ``days`` reference reaches."""


class ReferenceSpec(_Section):
    """A baseline from the service's own past, for changes with no concurrent baseline."""

    before: Duration | None = Field(default=None, gt=0)
    """Length of the reference window just before the change (a migration phase's
    ``started``, a blue-green ``switched`` step); the daemon keeps that much of each
    service's recent metrics. 30 minutes when neither this nor ``days`` is set; none when
    only ``days`` is."""
    days: tuple[int, ...] = ()
    """The same hours this many days earlier, e.g. ``[1]`` (yesterday) or ``[1, 7]``: for
    each ``d``, the service's metrics from ``change - d days`` to ``now - d days``, a
    window that grows with the live one, so the daily cycle is compared like with like.
    Read by time from the metrics topic on Kafka; from the per-service history otherwise."""

    @field_validator("days")
    @classmethod
    def _whole_days_back(cls, days: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < 1 or d > MAX_REFERENCE_DAYS for d in days):
            raise ValueError(f"days must be whole days from 1 to {MAX_REFERENCE_DAYS}")
        if len(set(days)) != len(days):
            raise ValueError("days must not repeat")
        return tuple(sorted(days))

    @property
    def window_before(self) -> float:
        """Seconds of the window just before the change (0: only ``days``)."""
        if self.before is not None:
            return self.before
        return 0.0 if self.days else DEFAULT_REFERENCE_BEFORE

    @property
    def span(self) -> float:
        """How far back from the change the reference reaches."""
        return max(self.window_before, max(self.days, default=0) * DAY)


DEFAULT_REFERENCE_BEFORE = 1800.0
"""The window before the change when a reference sets neither ``before`` nor ``days``."""


class Profile(_Section):
    """How a deployment is analysed: its schedule, thresholds and metrics."""

    interval: Duration = Field(default=60.0, gt=0)
    """Event-time spacing of interim judgements."""
    min_duration: Duration = 300.0
    """Event time since ``started`` before a canary can be promoted."""
    min_step_duration: Duration = Field(default=0.0, ge=0)
    """A stepped rollout: event time at a step before it may be told to advance (0: as
    soon as the step is measured healthy)."""
    max_duration: Duration = Field(default=1800.0, gt=0, validate_default=True)
    """A final verdict by then at the latest; not below min_duration."""
    final_grace: Duration = Field(default=60.0, ge=0)
    """Stream time past ``max_duration`` (or the pipeline's ``completed``) after which a
    deployment whose own events stopped gets its final verdict: once coalmine has read any
    event that much later, as Kafka Streams closes a window on stream time plus a grace."""
    pass_score: float = Field(default=95.0, ge=0, le=100)
    """Score (0-100) a canary needs to be promoted."""
    marginal_score: float = Field(default=75.0, ge=0, le=100, validate_default=True)
    """A score (0-100) below this rolls back; not above pass_score."""
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    """False-alarm budget of the profile, split evenly across its metrics."""
    groups: dict[str, float] = Field(default_factory=dict)
    """Weight of each metric group in the score; groups not listed weigh 1."""
    slo_period: Duration = Field(default=30 * 86400.0, gt=0)
    """SLO period an error budget belongs to; verdicts report the share spent."""
    sample_ratio_alpha: float = Field(default=0.001, gt=0, lt=0.5)
    """Level of the sample-ratio-mismatch check (reported, never a rollback)."""
    metrics: tuple[MetricSpec, ...] = Field(min_length=1)
    """The metrics compared, at least one, names unique."""
    reference: ReferenceSpec | None = None
    """Compare with the service's own past (``[profiles.NAME.reference]``): migrations need
    it; a blue-green switch uses it (else the 30 minutes before the switch)."""

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
