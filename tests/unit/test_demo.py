from rich.console import Console

from coalmine.tools.demo import DEMO_SCENARIOS, run_demo


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
