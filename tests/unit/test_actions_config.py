from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import SecretStr, TypeAdapter, ValidationError

from coalmine._exceptions import ConfigError
from coalmine.config.actions import (
    Actions,
    FlagdAction,
    GithubAction,
    OnFilter,
    SlackAction,
    WebhookAction,
)
from coalmine.config.settings import load_settings

SECRET = "s3cret-hmac-key-0123456789"  # noqa: S105 - a test key
ACTIONS = TypeAdapter(Actions)


def load(tmp_path: Path, text: str):
    path = tmp_path / "coalmine.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_settings(path, {})


def problems(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return [(p.key, p.message) for p in info.value.problems]


def test_every_kind_loads_from_toml(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        f"""
        [[actions]]
        kind = "webhook"
        name = "deployer"
        url = "https://hooks.example.com/coalmine?token=abc"
        secret = "{SECRET}"
        timeout = "2s"
        retries = 5
        backoff = "250ms"
        on = {{ decisions = ["rollback"], services = ["checkout"] }}

        [[actions]]
        kind = "slack"
        name = "team-chat"
        url = "https://hooks.slack.com/services/T000/B000/XXXX"

        [[actions]]
        kind = "teams"
        name = "teams"
        url = "https://example.webhook.office.com/webhookb2/x"

        [[actions]]
        kind = "discord"
        name = "discord"
        url = "https://discord.com/api/webhooks/1/abc"
        dry_run = true

        [[actions]]
        kind = "flagd"
        name = "kill-switch"
        path = "/etc/flagd/flags.json"

        [[actions]]
        kind = "github"
        name = "gh"
        repository = "acme/checkout"
        token = "ghp_token"
        environment = "production"
        """,
    )
    kinds = [a.kind for a in settings.actions]
    assert kinds == ["webhook", "slack", "teams", "discord", "flagd", "github"]
    hook = settings.actions[0]
    assert isinstance(hook, WebhookAction)
    assert (hook.timeout, hook.retries, hook.backoff) == (2.0, 5, 0.25)
    assert hook.on == OnFilter(decisions=("rollback",), services=("checkout",))
    assert hook.secret == SecretStr(SECRET)
    assert settings.actions[3].dry_run is True
    flagd = settings.actions[4]
    assert isinstance(flagd, FlagdAction)
    assert flagd.on.decisions == ("rollback",)  # a kill switch acts on rollbacks by default
    github = settings.actions[5]
    assert isinstance(github, GithubAction)
    assert github.api_url == "https://api.github.com"


def test_defaults_act_on_every_final_verdict() -> None:
    slack = SlackAction(kind="slack", name="s", url=SecretStr("https://hooks.slack.com/x"))
    assert slack.on.decisions == ("promote", "rollback", "inconclusive")
    assert slack.on.final_only is True
    assert (slack.on.services, slack.on.profiles) == (None, None)
    assert slack.dry_run is False


def test_no_actions_by_default(tmp_path: Path) -> None:
    assert load(tmp_path, "").actions == ()


def test_a_webhook_without_secret_is_refused(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        [[actions]]
        kind = "webhook"
        name = "deployer"
        url = "https://hooks.example.com/x"
        """,
    )
    assert found == [("actions[0].webhook.secret", "required key is missing")]


def test_a_short_secret_is_refused_without_showing_it(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        [[actions]]
        kind = "webhook"
        name = "deployer"
        url = "https://hooks.example.com/x"
        secret = "tiny-secret"
        """,
    )
    ((key, message),) = found
    assert key == "actions[0].webhook.secret"
    assert "at least 16 characters" in message
    assert "tiny-secret" not in message


def test_a_relative_flagd_path_is_refused(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        [[actions]]
        kind = "flagd"
        name = "kill"
        path = "flags/flags.json"
        """,
    )
    assert found == [("actions[0].flagd.path", "path must be absolute (got 'flags/flags.json')")]


def test_a_kill_switch_on_promote_is_refused() -> None:
    with pytest.raises(ValidationError, match="only rollback and inconclusive, not promote"):
        FlagdAction(kind="flagd", name="k", path=Path("/f.json"), on=OnFilter())


def test_bad_urls_are_refused_without_showing_them(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        [[actions]]
        kind = "slack"
        name = "chat"
        url = "ftp://hooks.example.com/T000/SECRETPATH"
        """,
    )
    assert found == [("actions[0].slack.url", "url must be an http:// or https:// URL with a host")]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"kind": "pager", "name": "x"}, "does not match any of the expected tags"),
        ({"kind": "slack", "name": "a b", "url": "https://h/x"}, "may hold only letters"),
        (
            {"kind": "slack", "name": "s", "url": "https://h/x", "on": {"decisions": ["continue"]}},
            "'continue' verdicts are never final: set final_only = false",
        ),
        (
            {"kind": "teams", "name": "t", "url": "https://h/x", "on": {"decisions": ["advance"]}},
            "'advance' verdicts are never final",
        ),
        (
            {"kind": "slack", "name": "s", "url": "https://h/x", "on": {"services": []}},
            "an empty list matches nothing",
        ),
        (
            {"kind": "github", "name": "g", "repository": "acme", "token": "t", "environment": "p"},
            "repository must be 'owner/name'",
        ),
        ({"kind": "slack", "name": "s", "url": "https://h/x", "retries": -1}, "greater than"),
    ],
)
def test_bad_entries_are_refused_with_a_reason(entry: dict[str, object], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        ACTIONS.validate_python([entry])


def test_names_are_unique() -> None:
    entry = {"kind": "slack", "name": "chat", "url": "https://h/x"}
    with pytest.raises(ValidationError, match="action names must be unique: chat repeated"):
        ACTIONS.validate_python([entry, entry])


def test_actions_from_the_environment_as_json() -> None:
    value = '[{"kind": "discord", "name": "d", "url": "https://discord.com/api/webhooks/1/x"}]'
    settings = load_settings(None, {"COALMINE_ACTIONS": value})
    assert [a.name for a in settings.actions] == ["d"]


def test_secrets_stay_out_of_reprs() -> None:
    hook = WebhookAction(
        kind="webhook", name="w", url=SecretStr("https://h/x?token=URLTOKEN"), secret=SECRET
    )
    github = GithubAction(
        kind="github", name="g", repository="a/b", token=SecretStr("ghp_TOKEN"), environment="p"
    )
    shown = repr(hook) + str(hook) + repr(github) + str(github)
    for secret in ("URLTOKEN", SECRET, "ghp_TOKEN"):
        assert secret not in shown
