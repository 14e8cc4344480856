from rich.console import Console

from coalmine.contract import parse_time
from coalmine.tools.demo import (
    DEMO_BLUE_GREEN_PROFILE,
    DEMO_BLUE_GREEN_SCENARIOS,
    DEMO_SCENARIOS,
    run_demo,
)
from coalmine.tools.flag_demo import run_flag_demo
from coalmine.tools.simulator import simulate


async def test_demo_ends_with_a_promote_and_a_rollback():
    console = Console(record=True, width=200)
    result = await run_demo(speed=400.0, console=console)
    assert {k: v["decision"] for k, v in result.finals.items()} == {
        "checkout-v42": "promote",
        "payments-v8": "rollback",
    }
    assert len(result.finals) == len(DEMO_SCENARIOS)
    assert "critical" in result.finals["payments-v8"]["summary"]
    shown = console.export_text()
    assert "final verdicts" in shown
    assert "continue" in shown  # interim verdicts are shown live


async def test_blue_green_demo_switches_one_back_within_seconds_and_promotes_the_other():
    console = Console(record=True, width=400)
    result = await run_demo(speed=400.0, console=console, strategy="blue_green")
    switched = result.start + 60.0
    assert {k: v["decision"] for k, v in result.finals.items()} == {
        "search-v19": "promote",
        "orders-v5": "rollback",
    }
    assert [v["decision"] for v in result.seen].count("promote") == 1
    assert [v["decision"] for v in result.seen].count("rollback") == 1

    rollback = result.finals["orders-v5"]
    assert switched < parse_time(rollback["time"]) <= switched + 120.0
    assert "critical" in rollback["summary"]
    assert rollback["checks"]["reference"]["baseline"] == "past"
    promote = result.finals["search-v19"]
    assert parse_time(promote["time"]) >= switched + DEMO_BLUE_GREEN_PROFILE.min_duration

    preview = [v for v in result.seen if parse_time(v["time"]) <= switched]
    assert preview
    assert {v["decision"] for v in preview} == {"continue"}
    assert all(v["strategy"] == "blue_green" for v in result.seen)

    shown = console.export_text()
    assert "switch back to blue: critical" in shown
    assert "blue can be scaled down" in shown
    assert "preview" in shown
    assert "final verdicts" in shown


def test_blue_green_demo_traffic_carries_versions_and_the_phases_come_through_the_contract():
    # the numbers the demo's explanation states
    assert DEMO_BLUE_GREEN_PROFILE.reference is not None
    assert DEMO_BLUE_GREEN_PROFILE.reference.before == 600.0
    for scenario in DEMO_BLUE_GREEN_SCENARIOS:
        assert (scenario.switch_at, scenario.history, scenario.mirrored_share) == (60, 540, 0.1)
    messages = list(simulate(DEMO_BLUE_GREEN_SCENARIOS, start=0.0, duration=120.0, step=5.0))
    deploys = [m for m in messages if m.topic == "deployments"]
    assert [(m.time, b'"phase":"preview"' in m.value) for m in deploys] == [
        (0.0, True),
        (0.0, True),
        (60.0, False),
        (60.0, False),
    ]
    assert all(b'"phase":"switched"' in m.value for m in deploys[2:])
    assert min(m.time for m in messages) == -535.0  # blue alone, 9 minutes before the preview
    assert [m.time for m in messages] == sorted(m.time for m in messages)
    for message in messages:
        if message.topic == "metrics":
            assert b'"version"' in message.value
            assert b'"cohort"' not in message.value


async def test_flag_demo_steps_one_rollout_to_promotion_and_switches_the_other_off():
    console = Console(record=True, width=120)
    result, flags = await run_flag_demo(speed=100.0, console=console)
    search, checkout = result.finals["search-flag"], result.finals["checkout-flag"]
    assert (checkout["decision"], checkout["flag"]["key"]) == ("rollback", "one-click-pay")
    assert flags["one-click-pay"]["defaultVariant"] == "control"
    assert "targeting" not in flags["one-click-pay"]  # switched off for everyone
    assert "targeting" in flags["new-ranking"]  # the healthy one is left as rolled out
    advances = [
        v["traffic_weight"]
        for v in result.seen
        if v["deployment_id"] == "search-flag" and v["decision"] == "advance"
    ]
    assert advances == [5, 25, 50]
    assert (search["decision"], search["traffic_weight"]) == ("promote", 100)
    text = console.export_text()
    assert "flag new-ranking raised to 100%" in text
    assert "flag one-click-pay: switched off: serves control to everyone" in text
