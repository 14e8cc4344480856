"""The daemon's actions: which flag a verdict switches off, and verdicts made again."""

from __future__ import annotations

from coalmine.actions import FlagTarget
from coalmine.config.settings import Settings
from coalmine.contract import encode_verdict
from coalmine.daemon.acting import Acting, flag_target
from coalmine.daemon.router import Router
from coalmine.daemon.telemetry import Telemetry
from support.scenario import PROFILE
from tests.unit.test_http_api import TOPICS, scenario_records


def test_a_flag_rollouts_verdict_names_the_flag_and_its_control() -> None:
    flag = {"key": "new-checkout", "control": "off", "treatment": "on"}
    assert flag_target({"flag": flag}) == FlagTarget("new-checkout", "off")
    assert flag_target({}) is None
    assert flag_target({"flag": {"key": "k"}}) is None
    assert flag_target({"flag": "new-checkout"}) is None


def test_no_actions_configured_no_acting() -> None:
    assert Acting.of(Settings(), Telemetry()) is None


def test_a_rebuilt_deployments_verdicts_are_handed_to_the_actions_again() -> None:
    """Verdicts published before a restart are not published twice but acted on again."""
    records = scenario_records()
    first = Router({"default": PROFILE}, TOPICS).handle(records, now=0.0).verdicts
    assert first
    remade = []
    rebuilt = Router({"default": PROFILE}, TOPICS, on_remade=remade.append)
    rebuilt.recall(encode_verdict(v) for v in first)
    again = rebuilt.handle(records, now=0.0).verdicts
    assert again == []
    assert [v.verdict_id for v in remade] == [v.verdict_id for v in first]
