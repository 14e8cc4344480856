from __future__ import annotations

from pydantic import SecretStr

from coalmine.actions.matching import passes, triggered
from coalmine.config.actions import OnFilter, SlackAction
from tests.receivers import verdict


def slack(name: str, **on: object) -> SlackAction:
    return SlackAction(
        kind="slack", name=name, url=SecretStr("https://h/x"), on=OnFilter.model_validate(on)
    )


def test_the_decision_must_be_listed() -> None:
    on = OnFilter(decisions=("rollback",))
    assert passes(on, verdict("rollback"))
    assert not passes(on, verdict("promote"))


def test_interim_verdicts_only_when_asked() -> None:
    interim = verdict("continue", final=False)
    assert not passes(OnFilter(), interim)
    assert passes(OnFilter(decisions=("continue",), final_only=False), interim)
    assert not passes(OnFilter(decisions=("rollback",)), verdict("rollback", final=False))
    assert passes(
        OnFilter(decisions=("rollback",), final_only=False), verdict("rollback", final=False)
    )


def test_services_and_profiles_narrow_it() -> None:
    on = OnFilter(services=("checkout",), profiles=("strict",))
    assert passes(on, verdict(service="checkout", profile="strict"))
    assert not passes(on, verdict(service="search", profile="strict"))
    assert not passes(on, verdict(service="checkout", profile="default"))


def test_the_published_dict_and_the_verdict_match_alike() -> None:
    on = OnFilter(decisions=("rollback",), services=("checkout",))
    for value in (verdict("rollback"), verdict("promote"), verdict(service="other")):
        assert passes(on, value) == passes(on, value.to_dict())


def test_triggered_keeps_configuration_order() -> None:
    actions = [
        slack("promotions", decisions=["promote"]),
        slack("all"),
        slack("rollbacks", decisions=["rollback"]),
    ]
    assert [a.name for a in triggered(actions, verdict("rollback"))] == ["all", "rollbacks"]
    assert [a.name for a in triggered(actions, verdict("promote"))] == ["promotions", "all"]
    assert triggered(actions, verdict("continue", final=False)) == []
