from __future__ import annotations

import json

from pydantic import SecretStr

from coalmine.actions.outgoing import outgoing
from coalmine.actions.signing import verify
from coalmine.config.actions import DiscordAction, TeamsAction, WebhookAction
from coalmine.contract import encode_verdict
from tests.receivers import verdict

SECRET = "whsec-0123456789abcdef"  # noqa: S105 - a test key
NOW = 1_795_000_000.5


def test_a_webhook_posts_the_published_verdict_signed() -> None:
    spec = WebhookAction(
        kind="webhook", name="w", url=SecretStr("https://h/x?t=URLTOKEN"), secret=SecretStr(SECRET)
    )
    value = verdict()
    request = outgoing(spec, value.to_dict(), now=NOW, public_url=None)
    assert request.body == encode_verdict(value)
    assert request.headers["Idempotency-Key"] == "checkout-v42/7"
    assert request.headers["Coalmine-Verdict-Id"] == "checkout-v42/7"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Coalmine-Signature"].startswith("t=1795000000,v1=")
    assert verify(request.headers["Coalmine-Signature"], request.body, SECRET, NOW)
    assert "URLTOKEN" not in repr(request)
    assert "v1=" not in repr(request)


def test_chats_are_unsigned_messages() -> None:
    for spec in (
        TeamsAction(kind="teams", name="t", url=SecretStr("https://h/x")),
        DiscordAction(kind="discord", name="d", url=SecretStr("https://h/x")),
    ):
        request = outgoing(spec, verdict().to_dict(), now=NOW, public_url=None)
        assert "Coalmine-Signature" not in request.headers
        assert request.headers["Idempotency-Key"] == "checkout-v42/7"
        message = json.loads(request.body)
        assert "attachments" in message if spec.kind == "teams" else "content" in message
