"""`coalmine demo --config`: the demo's traffic, judged on a real Kafka."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from rich.console import Console

from coalmine._exceptions import TransportError
from coalmine.tools.demo import DEMO_SCENARIOS, run_demo
from tests.integration.test_cli_tools_kafka import create_topics, make_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.config.models import KafkaSettings


async def test_the_demo_plays_on_kafka_and_reads_its_verdicts_back(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str]
) -> None:
    settings = make_settings(kafka_settings, topic_name)
    await create_topics(settings)
    console = Console(record=True, width=200)
    result = await run_demo(speed=200.0, console=console, settings=settings)
    decisions = {dep_id.rsplit("-", 1)[0]: v["decision"] for dep_id, v in result.finals.items()}
    assert decisions == {"checkout-v42": "promote", "payments-v8": "rollback"}
    assert len(result.finals) == len(DEMO_SCENARIOS)
    assert all(v["profile"] == "coalmine-demo" for v in result.finals.values())
    assert f"Kafka at {settings.kafka.bootstrap_servers}" in console.export_text()


async def test_the_demo_names_the_topics_it_needs(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str]
) -> None:
    settings = make_settings(kafka_settings, topic_name)  # topics not created
    with pytest.raises(TransportError, match=r"missing topics: .*create them: coalmine topics"):
        await run_demo(speed=200.0, console=Console(record=True), settings=settings)
