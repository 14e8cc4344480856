from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from coalmine.actions.delivery import MAX_BACKOFF, FlagTarget, Sender, backoff_delay
from coalmine.config.actions import FlagdAction, SlackAction, WebhookAction
from tests.receivers import Receiver, free_port, verdict

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "receiver-secret-0123456789"  # noqa: S105 - a test key


def webhook(url: str, **extra: object) -> WebhookAction:
    fields = {"kind": "webhook", "name": "hook", "url": url, "secret": SECRET}
    fields |= {"retries": 3, "backoff": 0.01, "timeout": 2.0} | extra
    return WebhookAction.model_validate(fields)


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - backoff jitter, not cryptography


class Sleeps:
    """Records the backoff waits instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    rng = seeded(7)
    delays = [backoff_delay(1.0, retry, rng) for retry in range(1, 5)]
    for retry, delay in enumerate(delays, start=1):
        assert 0.5 * 2 ** (retry - 1) <= delay < 2 ** (retry - 1)
    again = seeded(7)
    assert [backoff_delay(1.0, r, again) for r in range(1, 5)] == delays  # seeded: repeatable
    assert backoff_delay(1.0, 30, rng) < MAX_BACKOFF


async def test_5xx_is_retried_with_the_same_key_and_backoff() -> None:
    receiver = await Receiver(statuses=[503, 500]).start()
    sleeps = Sleeps()
    sender = Sender(rng=seeded(1), sleep=sleeps)
    try:
        outcome = await sender.send(webhook(receiver.url), verdict())
    finally:
        await sender.close()
        await receiver.stop()
    assert (outcome.outcome, outcome.attempts, outcome.status) == ("retried", 3, 200)
    assert [r.idempotency_key for r in receiver.received] == ["checkout-v42/7"] * 3
    assert len(sleeps.delays) == 2
    assert 0.005 <= sleeps.delays[0] < 0.01 <= sleeps.delays[1] < 0.02


async def test_a_client_error_is_not_retried() -> None:
    receiver = await Receiver(statuses=[404]).start()
    sender = Sender(sleep=Sleeps())
    try:
        outcome = await sender.send(webhook(receiver.url), verdict())
    finally:
        await sender.close()
        await receiver.stop()
    assert (outcome.outcome, outcome.attempts, outcome.status) == ("failed", 1, 404)
    assert outcome.error == "answered 404"
    assert len(receiver.received) == 1


async def test_429_is_retried_until_the_retries_are_spent() -> None:
    receiver = await Receiver(statuses=[429] * 10).start()
    sender = Sender(sleep=Sleeps())
    try:
        outcome = await sender.send(webhook(receiver.url, retries=2), verdict())
    finally:
        await sender.close()
        await receiver.stop()
    assert (outcome.outcome, outcome.attempts, outcome.status) == ("failed", 3, 429)
    assert len(receiver.received) == 3


async def test_a_redirect_is_not_followed() -> None:
    receiver = await Receiver(statuses=[302]).start()
    sender = Sender(sleep=Sleeps())
    try:
        outcome = await sender.send(webhook(receiver.url), verdict())
    finally:
        await sender.close()
        await receiver.stop()
    assert outcome.outcome == "failed"
    assert outcome.error is not None
    assert "redirect" in outcome.error


async def test_connection_refused_fails_after_every_retry_without_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook?token=URLTOKEN"
    sender = Sender(sleep=Sleeps())
    try:
        outcome = await sender.send(webhook(url, retries=1), verdict())
    finally:
        await sender.close()
    assert (outcome.outcome, outcome.attempts, outcome.status) == ("failed", 2, None)
    assert outcome.error is not None
    assert outcome.error.startswith("cannot connect")
    assert "URLTOKEN" not in repr(outcome)
    assert "127.0.0.1" not in outcome.error


async def test_chat_messages_are_posted_as_json() -> None:
    receiver = await Receiver(signed=False).start()
    spec = SlackAction(kind="slack", name="chat", url=SecretStr(receiver.url))
    sender = Sender(public_url="https://coalmine.example.com")
    try:
        outcome = await sender.send(spec, verdict())
    finally:
        await sender.close()
        await receiver.stop()
    assert outcome.outcome == "delivered"
    (got,) = receiver.received
    message = json.loads(got.body)
    assert "/deployments/checkout-v42/report|Report>" in message["blocks"][0]["text"]["text"]
    assert got.headers["Content-Type"] == "application/json"
    assert got.idempotency_key == "checkout-v42/7"


async def test_a_dry_run_sends_nothing() -> None:
    receiver = await Receiver().start()
    sender = Sender()
    try:
        outcome = await sender.send(webhook(receiver.url, dry_run=True), verdict())
    finally:
        await sender.close()
        await receiver.stop()
    assert (outcome.outcome, outcome.attempts) == ("dry_run", 0)
    assert receiver.received == []


def flagd_spec(path: Path, **extra: object) -> FlagdAction:
    return FlagdAction.model_validate({"kind": "flagd", "name": "kill", "path": path} | extra)


def flags(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    flag = {
        "state": "ENABLED",
        "variants": {"control": False, "treatment": True},
        "defaultVariant": "treatment",
    }
    path.write_text(json.dumps({"flags": {"new-checkout": flag}}))
    return path


async def test_flagd_switches_the_flag_the_verdict_names(tmp_path: Path) -> None:
    path = flags(tmp_path)
    sender = Sender(flag_target=lambda _fields: FlagTarget("new-checkout", "control"))
    outcome = await sender.send(flagd_spec(path), verdict())
    assert (outcome.outcome, outcome.attempts) == ("delivered", 1)
    assert json.loads(path.read_text())["flags"]["new-checkout"]["defaultVariant"] == "control"


async def test_flagd_fails_when_no_flag_is_named_or_the_file_is_wrong(tmp_path: Path) -> None:
    path = flags(tmp_path)
    before = path.read_bytes()
    outcome = await Sender().send(flagd_spec(path), verdict())
    assert (outcome.outcome, outcome.error) == ("failed", "the verdict names no flag")
    wrong = Sender(flag_target=lambda _fields: FlagTarget("new-checkout", "nope"))
    outcome = await wrong.send(flagd_spec(path), verdict())
    assert outcome.outcome == "failed"
    assert "has no variant 'nope'" in (outcome.error or "")
    dry = await wrong.send(flagd_spec(path, dry_run=True), verdict())
    assert dry.outcome == "dry_run"
    assert path.read_bytes() == before


@pytest.mark.parametrize("bad", ["http://[::1", "http://127.0.0.1:0/x"])
async def test_an_unusable_url_is_a_failure_not_an_exception(bad: str) -> None:
    spec = webhook("https://placeholder.example/x", retries=0).model_copy(
        update={"url": SecretStr(bad)}
    )
    sender = Sender()
    try:
        outcome = await sender.send(spec, verdict())
    finally:
        await sender.close()
    assert outcome.outcome == "failed"
    assert bad not in (outcome.error or "")
