"""The actions against real receivers: an aiohttp server on loopback, a flagd provider."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import TYPE_CHECKING

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from pydantic import SecretStr

from coalmine.actions.deliveries import Deliveries
from coalmine.actions.delivery import Sender
from coalmine.actions.flagd import switch_off
from coalmine.actions.signing import SIGNATURE_HEADER, verify
from coalmine.config.actions import GithubAction, WebhookAction
from coalmine.config.settings import Settings
from coalmine.daemon.telemetry import Telemetry
from tests.metrics import sample_value
from tests.receivers import Receiver, free_port, verdict

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

SECRET = "receiver-secret-0123456789"  # noqa: S105 - a test key
URL_TOKEN = "URLTOKEN-d41d8cd98f00b204"  # noqa: S105 - a test key


def webhook(url: str, **extra: object) -> WebhookAction:
    fields = {"kind": "webhook", "name": "deployer", "url": url, "secret": SECRET}
    return WebhookAction.model_validate(fields | {"backoff": 0.01, "timeout": 2.0} | extra)


def counted(telemetry: Telemetry, outcome: str) -> float:
    return sample_value(telemetry, "coalmine_actions_total", kind="webhook", outcome=outcome)


async def deliver(spec: WebhookAction, *, sender: Sender | None = None, **kw: object):
    """Put one verdict through a ``Deliveries`` and drain it; its outcomes and telemetry."""
    telemetry = Telemetry()
    deliveries = Deliveries([spec], sender or Sender(), telemetry=telemetry, **kw)  # type: ignore[arg-type]
    deliveries.start()
    assert deliveries.put(verdict()) == 1
    await deliveries.drain(within=10)
    return deliveries.outcomes("checkout-v42"), telemetry


async def test_delivered_once_signed_with_the_verdict_id_as_key() -> None:
    receiver = await Receiver(secret=SECRET).start()
    try:
        outcomes, telemetry = await deliver(webhook(receiver.url))
    finally:
        await receiver.stop()
    assert [(o.outcome, o.attempts, o.status) for o in outcomes] == [("delivered", 1, 200)]
    (got,) = receiver.received
    assert got.verified
    assert got.idempotency_key == "checkout-v42/7"
    assert json.loads(got.body) == verdict().to_dict()
    assert counted(telemetry, "delivered") == 1


async def test_a_receiver_down_then_up_gets_it_once_with_the_same_key() -> None:
    port = free_port()
    receiver = Receiver(secret=SECRET, port=port)
    waits: list[float] = []

    async def sleep(delay: float) -> None:  # the receiver comes up while coalmine backs off
        waits.append(delay)
        if len(waits) == 2:
            await receiver.start()

    sender = Sender(rng=random.Random(3), sleep=sleep)  # noqa: S311 - jitter
    try:
        outcomes, telemetry = await deliver(
            webhook(f"http://127.0.0.1:{port}/hook", retries=4), sender=sender
        )
    finally:
        await receiver.stop()
    assert [(o.outcome, o.attempts) for o in outcomes] == [("retried", 3)]
    assert [(r.idempotency_key, r.verified) for r in receiver.received] == [
        ("checkout-v42/7", True)
    ]
    assert len(waits) == 2
    assert waits[0] < waits[1]  # exponential backoff
    assert counted(telemetry, "retried") == 1


async def test_500_twice_then_200_is_retried_with_the_same_key() -> None:
    receiver = await Receiver(secret=SECRET, statuses=[500, 500]).start()
    try:
        outcomes, telemetry = await deliver(webhook(receiver.url, retries=3))
    finally:
        await receiver.stop()
    assert [(o.outcome, o.attempts, o.status) for o in outcomes] == [("retried", 3, 200)]
    assert [r.idempotency_key for r in receiver.received] == ["checkout-v42/7"] * 3
    assert all(r.verified for r in receiver.received)
    assert len({r.body for r in receiver.received}) == 1
    assert (counted(telemetry, "retried"), counted(telemetry, "delivered")) == (1, 0)


async def test_forged_changed_and_replayed_requests_are_rejected() -> None:
    receiver = await Receiver(secret=SECRET).start()
    try:
        await deliver(webhook(receiver.url))
    finally:
        await receiver.stop()
    (got,) = receiver.received
    header = got.headers[SIGNATURE_HEADER]
    now = time.time()
    assert verify(header, got.body, SECRET, now)
    assert not verify(header, got.body, "forger-secret-0123456789", now)
    forged = header.split("v1=")[0] + "v1=" + "0" * 64
    assert not verify(forged, got.body, SECRET, now)
    assert not verify(header, got.body.replace(b'"rollback"', b'"promote"'), SECRET, now)
    assert not verify(header, got.body, SECRET, now + 301)  # replayed five minutes later


async def test_a_receiver_refuses_a_signature_dated_too_long_ago() -> None:
    receiver = await Receiver(secret=SECRET).start()
    stale = Sender(clock=lambda: time.time() - 3600)
    try:
        outcomes, telemetry = await deliver(webhook(receiver.url, retries=2), sender=stale)
    finally:
        await receiver.stop()
    assert [(o.outcome, o.status) for o in outcomes] == [("failed", 401)]
    assert len(receiver.received) == 1  # a 401 is not retried
    assert not receiver.received[0].verified
    assert counted(telemetry, "failed") == 1


async def test_the_timeout_is_honoured() -> None:
    receiver = await Receiver(secret=SECRET, delay=3.0).start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        outcomes, _ = await deliver(webhook(receiver.url, timeout=0.2, retries=1))
    finally:
        await receiver.stop()
    elapsed = loop.time() - started
    assert [(o.outcome, o.attempts, o.error) for o in outcomes] == [
        ("failed", 2, "no answer within 0.2s")
    ]
    assert len(receiver.received) == 2
    assert elapsed < 2.0


async def test_a_dry_run_sends_nothing_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    receiver = await Receiver(secret=SECRET).start()
    try:
        with caplog.at_level(logging.INFO, logger="coalmine.actions"):
            outcomes, telemetry = await deliver(webhook(receiver.url, dry_run=True))
    finally:
        await receiver.stop()
    assert [o.outcome for o in outcomes] == ["dry_run"]
    assert receiver.received == []
    assert counted(telemetry, "dry_run") == 1
    assert counted(telemetry, "delivered") == 0
    assert "dry run: action deployer (webhook) would act on verdict checkout-v42/7" in caplog.text


async def test_secrets_never_appear_in_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    down = f"http://127.0.0.1:{free_port()}/hooks/{URL_TOKEN}?token={URL_TOKEN}"
    github = GithubAction(
        kind="github",
        name="gh",
        repository="acme/checkout",
        token=SecretStr(URL_TOKEN),
        api_url=f"http://127.0.0.1:{free_port()}",
        environment="production",
        retries=1,
        backoff=0.01,
    )
    specs = [webhook(down, retries=1), github]
    with caplog.at_level(logging.DEBUG):
        deliveries = Deliveries(specs, Sender(), telemetry=Telemetry())  # type: ignore[arg-type]
        deliveries.start()
        deliveries.put(verdict(index=1))
        deliveries.put(verdict(index=2))
        await deliveries.drain(within=10)
    outcomes = deliveries.outcomes("checkout-v42")
    assert sorted(o.outcome for o in outcomes) == ["failed"] * 4
    warnings = [r for r in caplog.records if r.name == "coalmine.actions"]
    assert len(warnings) == 2  # one per action: the first failure of its streak
    settings = Settings(actions=specs)
    shown = caplog.text + repr(outcomes) + repr(settings) + str(settings) + repr(specs)
    shown += json.dumps([o.to_dict() for o in outcomes])
    assert URL_TOKEN not in shown
    assert SECRET not in shown


# -- flagd, through a real OpenFeature client ----------------------------------------------

FLAG = "new-checkout"


def flag_file(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    definition = {
        "state": "ENABLED",
        "variants": {"control": "v41", "treatment": "v42"},
        "defaultVariant": "treatment",
        "targeting": {"if": [{"==": [{"var": "tier"}, "free"]}, "control", "treatment"]},
    }
    path.write_text(json.dumps({"flags": {FLAG: definition}}), encoding="utf-8")
    return path


async def eventually_value(client, expected: str, within: float) -> str:
    context = EvaluationContext(targeting_key="user-1", attributes={"tier": "paid"})
    deadline = time.monotonic() + within
    while True:
        value = client.get_string_value(FLAG, "unset", context)
        if value == expected or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


async def test_an_openfeature_client_serves_control_after_the_switch(tmp_path: Path) -> None:
    path = flag_file(tmp_path)
    provider = FlagdProvider(
        resolver_type=ResolverType.FILE,  # in-process evaluation of an offline flag file
        offline_flag_source_path=str(path),
        deadline_ms=100,  # how often the file is checked for changes
    )
    domain = f"coalmine-test-{id(path)}"
    api.set_provider_and_wait(provider, domain)
    client = api.get_client(domain)
    try:
        assert await eventually_value(client, "v42", within=2) == "v42"  # treatment
        assert await asyncio.to_thread(switch_off, path, FLAG, "control") is True
        assert await eventually_value(client, "v41", within=2) == "v41"  # control, within 2 s
        assert await asyncio.to_thread(switch_off, path, FLAG, "control") is False
        details = client.get_string_details(FLAG, "unset", EvaluationContext("user-2"))
        assert (details.value, details.variant) == ("v41", "control")
    finally:
        provider.shutdown()
        api.clear_providers()
