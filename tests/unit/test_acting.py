"""The daemon's actions: which flag a verdict switches off, and verdicts made again."""

from __future__ import annotations

from coalmine.actions import FlagTarget
from coalmine.config.settings import Settings
from coalmine.contract import Verdict, encode_verdict
from coalmine.daemon.acting import Acting, flag_target
from coalmine.daemon.effects import Effects
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
    hooks = Hooks()
    rebuilt = Router({"default": PROFILE}, TOPICS, acting=hooks)
    rebuilt.recall(encode_verdict(v) for v in first)
    again = rebuilt.handle(records, now=0.0).verdicts
    assert again == []
    assert [v.verdict_id for v in hooks.remade_verdicts] == [v.verdict_id for v in first]
    # Each with where a restart would make it once more: the batch's own first offsets.
    assert all(f[(TOPICS.deployments, 0)] == 0 for f in hooks.floors)


class Hooks:
    """What the router asks of the actions, recorded; ``holding`` floors held."""

    def __init__(self, holding: dict[tuple[str, int], int] | None = None) -> None:
        self.remade_verdicts: list[Verdict] = []
        self.floors: list[dict[tuple[str, int], int]] = []
        self.holding = holding or {}

    def remade(self, verdict: Verdict, floors: dict[tuple[str, int], int]) -> None:
        self.remade_verdicts.append(verdict)
        self.floors.append(floors)

    def held(self) -> dict[tuple[str, int], int]:
        return self.holding


def test_a_batchs_effects_carry_where_a_restart_makes_them_again_and_holds_lower_floors():
    records = scenario_records()
    plain = Router({"default": PROFILE}, TOPICS).handle(records, now=0.0)
    assert plain.floors == {}
    held = (TOPICS.metrics, 0)
    router = Router({"default": PROFILE}, TOPICS, acting=Hooks({held: 3}))
    effects = router.handle(records[:40], now=0.0)
    # Before the batch nothing was open: its own first offsets, and what the actions hold.
    assert effects.floors[(TOPICS.deployments, 0)] == 0
    assert effects.floors[held] == 3
    assert router.floors()[held] == 3


async def test_the_commit_is_held_until_a_verdicts_actions_are_done() -> None:
    settings = Settings(
        actions=[{"kind": "webhook", "name": "w", "url": "http://127.0.0.1:9/x",
                  "secret": "s" * 20, "retries": 0, "timeout": "1s"}]
    )  # fmt: skip
    acting = Acting(settings, Telemetry())
    first = Router({"default": PROFILE}, TOPICS).handle(scenario_records(), now=0.0).verdicts
    final = next(v for v in first if v.final)
    acting.start()
    acting.acknowledged(Effects(verdicts=[final], floors={(TOPICS.metrics, 0): 7}))
    assert acting.held() == {(TOPICS.metrics, 0): 7}
    # Made again after a restart, it holds the commit again until acted on again.
    acting.remade(final, {(TOPICS.metrics, 0): 5})
    assert acting.held() == {(TOPICS.metrics, 0): 5}
    await acting.stop()  # the deliveries fail (nothing listens on port 9): done all the same
    assert acting.held() == {}
    assert [o["outcome"] for o in acting.outcomes(final.deployment_id)] == ["failed", "failed"]
