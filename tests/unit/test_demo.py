from rich.console import Console

from coalmine.contract import parse_time
from coalmine.tools.demo import (
    DEMO_BLUE_GREEN_PROFILE,
    DEMO_BLUE_GREEN_SCENARIOS,
    DEMO_SCENARIOS,
    run_demo,
)
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
