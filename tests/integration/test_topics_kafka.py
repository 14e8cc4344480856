"""`coalmine topics`: the configuration's topics created on a real broker, co-partitioned."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coalmine.bus.kafka import ensure_topics, partition_counts
from tests.integration.test_cli_tools_kafka import coalmine, make_settings, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from coalmine.config.models import KafkaSettings


async def test_topics_creates_what_is_missing_and_leaves_the_rest(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    settings = make_settings(kafka_settings, topic_name)
    config = str(write_config(settings, tmp_path / "coalmine.toml"))
    t = settings.topics
    wanted = [t.deployments, t.metrics, t.verdicts, t.dead_letter]
    code, out, err = await coalmine("topics", "--config", config, "--partitions", "4")
    assert code == 0, err.decode()
    assert out.decode().splitlines() == [f"{name}: created, 4 partitions" for name in wanted]
    assert await partition_counts(settings.kafka, wanted) == dict.fromkeys(wanted, 4)
    code, out, err = await coalmine("topics", "--config", config, "--partitions", "2")
    assert code == 0, err.decode()
    assert out.decode().splitlines() == [f"{name}: exists, 4 partitions" for name in wanted]


async def test_topics_gives_a_missing_deployments_topic_the_metrics_topics_count(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    settings = make_settings(kafka_settings, topic_name)
    config = str(write_config(settings, tmp_path / "coalmine.toml"))
    t = settings.topics
    await ensure_topics(settings.kafka, {t.metrics: 3})
    code, out, err = await coalmine("topics", "--config", config)
    assert code == 0, err.decode()
    assert out.decode().splitlines() == [
        f"{t.deployments}: created, 3 partitions",
        f"{t.metrics}: exists, 3 partitions",
        f"{t.verdicts}: created, 6 partitions",
        f"{t.dead_letter}: created, 6 partitions",
    ]


async def test_topics_refuses_a_configuration_without_kafka(tmp_path: Path) -> None:
    config = tmp_path / "mqtt.toml"
    config.write_text('[bus]\nconsume = ["mqtt"]\npublish = ["mqtt"]\n')
    code, _, err = await coalmine("topics", "--config", str(config))
    assert code == 2
    assert "MQTT has no topics" in err.decode()
