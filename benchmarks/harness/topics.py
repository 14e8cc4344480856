"""A run's four topics, fresh names each time, and their creation on the broker."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic


@dataclass(frozen=True, slots=True)
class Topics:
    """The four topics of one run, as the daemon's ``[topics]`` names them."""

    deployments: str
    metrics: str
    verdicts: str
    dead_letter: str

    @classmethod
    def fresh(cls, prefix: str) -> Topics:
        """New names, ``<prefix>.<random tag>.<topic>``: a run never meets another's data."""
        tag = f"{prefix}.{uuid.uuid4().hex[:6]}"
        return cls(f"{tag}.deployments", f"{tag}.metrics", f"{tag}.verdicts", f"{tag}.dlq")

    def layout(self, partitions: int) -> dict[str, int]:
        """Topic -> partition count: deployments and metrics co-partitioned."""
        return {
            self.deployments: partitions,
            self.metrics: partitions,
            self.verdicts: partitions,
            self.dead_letter: 1,
        }


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create topic -> partition count (replication 1) and wait until the broker lists them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, count, 1) for name, count in topics.items()])
        while not set(topics) <= set(await admin.list_topics()):
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
