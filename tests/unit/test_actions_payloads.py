from __future__ import annotations

import orjson

from coalmine.actions.payloads import (
    GITHUB_DESCRIPTION_LIMIT,
    discord_message,
    github_state,
    github_status,
    glance,
    report_url,
    slack_message,
    teams_message,
    webhook_body,
)
from coalmine.contract import encode_verdict
from tests.receivers import verdict

BASE = "https://coalmine.example.com"
FAILING = "requests: canary error ratio 2.10% vs baseline 0.10% (burn 21.0x vs 1.0x)"


def test_the_webhook_body_is_the_verdict_as_published() -> None:
    value = verdict()
    assert webhook_body(value) == encode_verdict(value)
    assert webhook_body(value.to_dict()) == encode_verdict(value)


def test_report_links_encode_the_deployment_id() -> None:
    assert report_url(BASE + "/", "checkout-v42") == f"{BASE}/deployments/checkout-v42/report"
    assert report_url(BASE, "a/b c") == f"{BASE}/deployments/a%2Fb%20c/report"
    assert report_url(None, "checkout-v42") is None


def test_the_glance_names_the_failing_metric_and_by_how_much() -> None:
    seen = glance(verdict(), BASE)
    assert seen.title == "❌ checkout: rollback (final)"
    assert seen.failing == FAILING
    assert seen.why == FAILING
    assert seen.report == f"{BASE}/deployments/checkout-v42/report"


def test_critical_failures_come_first_and_the_rest_are_counted() -> None:
    fields = verdict().to_dict()
    fields["metrics"] = [
        {"metric": "cpu", "outcome": "fail", "critical": False, "reason": "+30%"},
        *fields["metrics"],
    ]
    seen = glance(fields)
    assert seen.failing == FAILING
    assert seen.why == f"{FAILING} (+1 more failing)"
    assert glance(fields | {"metrics": fields["metrics"][:1]}).failing == "cpu: +30%"


def test_without_a_failing_metric_the_summary_says_why() -> None:
    fields = verdict("promote").to_dict()
    fields["metrics"] = [m | {"outcome": "pass"} for m in fields["metrics"]]
    seen = glance(fields)
    assert seen.failing is None
    assert seen.why == fields["summary"]
    assert seen.title == "✅ checkout: promote (final)"


def test_slack_escapes_its_markup_and_links_the_report() -> None:
    fields = verdict().to_dict() | {"service": "<!channel> & co"}
    message = slack_message(fields, BASE)
    text = message["blocks"][0]["text"]["text"]
    assert "&lt;!channel&gt; &amp; co" in text
    assert "<!channel>" not in text
    assert FAILING in text
    assert f"<{BASE}/deployments/checkout-v42/report|Report>" in text
    assert message["text"].startswith("❌ <!channel> & co: rollback (final)")  # plain fallback
    assert "Report" not in slack_message(fields)["blocks"][0]["text"]["text"]


def test_teams_gets_an_adaptive_card() -> None:
    message = teams_message(verdict(), BASE)
    (attachment,) = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    texts = [block["text"] for block in card["body"]]
    assert texts[:2] == ["❌ checkout: rollback (final)", FAILING]
    assert card["body"][0]["color"] == "Attention"
    assert card["actions"][0]["url"] == f"{BASE}/deployments/checkout-v42/report"
    assert "actions" not in teams_message(verdict())["attachments"][0]["content"]


def test_discord_resolves_no_mentions_and_stays_short() -> None:
    fields = verdict().to_dict() | {"service": "@everyone"}
    fields["metrics"][1]["reason"] = "requests: " + "x" * 5000
    message = discord_message(fields, BASE)
    assert message["allowed_mentions"] == {"parse": []}
    assert len(message["content"]) <= 2000
    assert message["content"].endswith("…")


def test_discord_shows_values_as_written() -> None:
    fields = verdict().to_dict() | {"service": "my_service*v2"}
    content = discord_message(fields, BASE)["content"]
    assert "my\\_service\\*v2" in content
    assert f"<{BASE}/deployments/checkout-v42/report>" in content


def test_github_state_follows_the_decision() -> None:
    assert github_state("promote") == "success"
    assert github_state("rollback") == "failure"
    assert github_state("inconclusive") == "failure"
    assert github_state("continue") == "in_progress"


def test_github_status_body() -> None:
    body = github_status(verdict(), "production", BASE)
    assert body["state"] == "failure"
    assert body["environment"] == "production"
    assert body["log_url"] == f"{BASE}/deployments/checkout-v42/report"
    assert body["description"] == f"coalmine rollback of checkout: {FAILING}"
    fields = verdict().to_dict()
    fields["metrics"][1]["reason"] = "requests: " + "9" * 500
    long = github_status(fields, "production")["description"]
    assert len(long) == GITHUB_DESCRIPTION_LIMIT
    assert long.startswith("coalmine rollback of checkout: requests: 999")
    assert long.endswith("…")
    assert "log_url" not in github_status(verdict(), "production")
    short = github_status(verdict("continue", final=False).to_dict() | {"metrics": []}, "p")
    assert short["state"] == "in_progress"
    assert len(short["description"]) < GITHUB_DESCRIPTION_LIMIT


def test_values_are_never_evaluated_as_templates() -> None:
    fields = verdict().to_dict() | {"service": "{deployment_id}${HOME}{{7*7}}%(x)s"}
    for message in (slack_message(fields), teams_message(fields), github_status(fields, "p")):
        assert "{deployment_id}${HOME}{{7*7}}%(x)s" in orjson.dumps(message).decode()
