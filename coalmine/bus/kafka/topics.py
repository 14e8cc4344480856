"""Topics as the admin client sees them: which exist, with how many partitions; creating them.

Every question asks for all topics: a metadata request naming a missing topic may create
it (brokers with ``auto.create.topics.enable``, and tansu always), with a broker-default
partition count.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from coalmine._exceptions import CoalmineError, TransportError
from coalmine.bus.kafka.clients import bounded, kafka_client_options, log

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Mapping

    from coalmine.config.models import KafkaSettings

__all__ = [
    "PartitioningError",
    "connected_admin",
    "copartitioning_problem",
    "ensure_topics",
    "existing_topics",
    "new_admin",
    "partition_counts",
]

_TOPIC_EXISTS = 36
"""Kafka error code TOPIC_ALREADY_EXISTS: another process created it first; fine."""


class PartitioningError(CoalmineError):
    """Topics that must be co-partitioned are not: the daemon refuses to run."""


def new_admin(settings: KafkaSettings) -> Any:
    """An admin client, not started."""
    return AIOKafkaAdminClient(**kafka_client_options(settings))


@asynccontextmanager
async def connected_admin(settings: KafkaSettings) -> AsyncIterator[Any]:
    """A started admin client, closed on leaving the block.

    Raises:
        TransportError: the brokers cannot be reached within ``request_timeout``.
    """
    admin = new_admin(settings)
    try:
        async with bounded(
            settings.request_timeout, f"cannot reach Kafka at {settings.bootstrap_servers}"
        ):
            await admin.start()
        yield admin
    finally:
        await admin.close()


async def existing_topics(admin: Any) -> dict[str, int]:
    """Every topic the cluster has, with its partition count."""
    described = await admin.describe_topics()
    return {
        str(topic["topic"]): len(topic["partitions"])
        for topic in described
        if topic["error_code"] == 0
    }


async def partition_counts(settings: KafkaSettings, topics: Iterable[str]) -> dict[str, int]:
    """Partition count of each of ``topics`` that exists; missing topics are left out."""
    wanted = set(topics)
    async with (
        connected_admin(settings) as admin,
        bounded(settings.request_timeout, "describe topics"),
    ):
        existing = await existing_topics(admin)
    return {name: count for name, count in existing.items() if name in wanted}


async def ensure_topics(
    settings: KafkaSettings, topics: Mapping[str, int], *, replication_factor: int = 1
) -> None:
    """Create those of ``topics`` (name -> partition count) that do not exist yet.

    Existing topics are left alone, even with another partition count (logged).
    """
    what = f"create topics {', '.join(sorted(topics))}"
    async with connected_admin(settings) as admin, bounded(settings.request_timeout, what):
        existing = await existing_topics(admin)
        for name, count in existing.items():
            if name in topics and topics[name] != count:
                log.warning(
                    "topic %s exists with %d partitions (wanted %d)", name, count, topics[name]
                )
        missing = {name: count for name, count in topics.items() if name not in existing}
        if not missing:
            return
        response = await admin.create_topics(
            [NewTopic(name, count, replication_factor) for name, count in missing.items()]
        )
        problems = [
            f"{item['topic']}: {item.get('error_message') or 'error ' + str(item['error_code'])}"
            for item in response.to_object()["topic_errors"]
            if item["error_code"] not in (0, _TOPIC_EXISTS)
        ]
        if problems:
            raise TransportError(f"{what}: {'; '.join(problems)}")
        # Creation is asynchronous on a real cluster: poll the metadata until it shows them.
        while not set(missing) <= (await existing_topics(admin)).keys():  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        log.info("created topics %s", ", ".join(f"{n} ({c})" for n, c in missing.items()))


def copartitioning_problem(counts: Mapping[str, int]) -> PartitioningError | None:
    """The error to refuse topics with ``counts`` partitions with, if they differ."""
    if len(set(counts.values())) <= 1:
        return None
    listed = ", ".join(f"{topic} has {count}" for topic, count in counts.items())
    return PartitioningError(
        f"topics must have the same partition count (keyed by service, a service's deploy"
        f" events and metrics must share a partition number): {listed} partitions;"
        " recreate one of them or repartition"
    )
