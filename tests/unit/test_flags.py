"""Feature-flag rollouts: a flag's variations are the cohorts, from native or OTLP metrics."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from coalmine._exceptions import ContractError
from coalmine.bus.base import Record
from coalmine.config.models import LimitSettings, MetricSpec, Profile, TopicsSettings
from coalmine.contract import decode_deploy_event, encode_verdict, format_time
from coalmine.daemon.router import Router
from coalmine.formats import InputSettings, OtlpDecoder
from support.scenario import T0

TOPICS = TopicsSettings()
PROFILE = Profile(
    interval=60,
    min_duration=600,
    max_duration=1800,
    metrics=(
        MetricSpec(name="latency_ms"),
        MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True),
    ),
)
FLAG = {"key": "new-checkout", "control": "off", "treatment": "on"}


def started(**extra: object) -> dict[str, object]:
    return {
        "event": "started",
        "deployment_id": "new-checkout-5",
        "service": "web",
        "time": format_time(T0),
        "strategy": "feature_flag",
        "flag": FLAG,
        "traffic_weight": 50,
        **extra,
    }


def test_a_flag_rollout_names_its_flag_and_its_variations_are_the_cohorts() -> None:
    event = decode_deploy_event(orjson.dumps(started()))
    assert event.flag == "new-checkout"
    assert (event.baseline_version, event.canary_version) == ("off", "on")
    assert event.strategy == "feature_flag"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "canary"}, "needs 'strategy': 'feature_flag'"),
        ({"baseline": {"version": "v1"}}, "no baseline or canary"),
        ({"flag": "new-checkout"}, "must be an object"),
        ({"flag": {"key": "k", "control": "off"}}, "'flag.treatment' must be a non-empty"),
        ({"flag": {"key": "", "control": "a", "treatment": "b"}}, "'flag.key' must be"),
        ({"flag": {"key": "k", "control": "on", "treatment": "on"}}, "must differ"),
    ],
)
def test_a_flag_that_does_not_fit_is_refused_saying_why(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ContractError, match=message):
        decode_deploy_event(orjson.dumps(started(**change)))


def _traffic(t: float, rng: np.random.Generator, errors: dict[str, float]) -> bytes:
    """Ten seconds of both variations at 100 requests/s each, tagged by variation."""
    events = []
    for variant in ("off", "on"):
        bad = int(rng.binomial(1000, errors[variant]))
        base = {"service": "web", "version": variant, "time": format_time(t)}
        values = np.round(rng.lognormal(4.6, 0.3, 50), 2).tolist()
        events += [
            base | {"metric": "latency_ms", "values": values},
            base | {"metric": "requests", "good": 1000 - bad, "total": 1000},
        ]
    return orjson.dumps(events)


def test_a_treatment_with_five_times_the_errors_is_rolled_back_naming_the_flag() -> None:
    rng = np.random.default_rng(7)
    router = Router({"default": PROFILE}, TOPICS, LimitSettings())
    records = [Record(TOPICS.deployments, orjson.dumps(started()), b"web", offset=0)]
    verdicts = []
    for i, t in enumerate(np.arange(T0 + 10, T0 + 1800, 10.0)):
        records.append(
            Record(TOPICS.metrics, _traffic(t, rng, {"off": 0.001, "on": 0.005}), b"web", offset=i)
        )
        effects = router.handle(records, now=0.0)
        records = []
        assert not effects.dead_letters
        verdicts += [orjson.loads(encode_verdict(v)) for v in effects.verdicts]
        if verdicts and verdicts[-1]["final"]:
            break
    final = verdicts[-1]
    assert (final["decision"], final["final"]) == ("rollback", True)
    assert "requests" in final["summary"]
    assert final["flag"] == FLAG
    assert final["strategy"] == "feature_flag"
    assert final["checks"]["sample_ratio"]["expected_share"] == 0.5  # the flag's percentage
    assert not final["checks"]["sample_ratio"]["mismatch"]


def test_otlp_metrics_map_the_openfeature_variant_attribute_to_the_variation() -> None:
    """The OpenTelemetry semantic conventions for feature flags, mapped declaratively."""
    decoder = OtlpDecoder(
        InputSettings.model_validate(
            {
                "topic": "otlp",
                "format": "otlp_json",
                "version_label": "feature_flag.result.variant",
                "metrics": [
                    {
                        "metric": "latency_ms",
                        "kind": "distribution",
                        "series": "http.server.request.duration",
                        "labels": {"feature_flag.key": "new-checkout"},
                    }
                ],
            }
        )
    )

    def gauge(flag: str, variant: str, value: float) -> dict[str, object]:
        attrs = [
            {"key": "feature_flag.key", "value": {"stringValue": flag}},
            {"key": "feature_flag.result.variant", "value": {"stringValue": variant}},
        ]
        return {"timeUnixNano": str(int(T0 * 1e9)), "asDouble": value, "attributes": attrs}

    body = {
        "resourceMetrics": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]
                },
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "http.server.request.duration",
                                "gauge": {
                                    "dataPoints": [
                                        gauge("new-checkout", "on", 120.0),
                                        gauge("new-checkout", "off", 100.0),
                                        gauge("other-flag", "on", 999.0),
                                    ]
                                },
                            }
                        ]
                    }
                ],
            }
        ]
    }
    events = decoder.decode(orjson.dumps(body))
    assert sorted((e.service, e.version, tuple(e.values)) for e in events) == [
        ("web", "off", (100.0,)),
        ("web", "on", (120.0,)),
    ]
