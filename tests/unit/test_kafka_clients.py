import asyncio

from coalmine.bus.kafka.clients import group_consumer
from coalmine.config.models import KafkaSettings


def test_the_group_consumer_fetches_as_configured():
    async def options() -> tuple[int, int, int]:
        settings = KafkaSettings(
            bootstrap_servers="127.0.0.1:1",
            fetch_min_bytes=32768,
            fetch_max_wait=0.01,
            max_poll_records=500,
        )
        consumer = group_consumer(settings, "g", "earliest", 10.0)
        try:
            # aiokafka keeps them as given (nothing is sent before start)
            return (
                consumer._fetch_min_bytes,
                consumer._fetch_max_wait_ms,
                consumer._max_poll_records,
            )
        finally:
            await consumer.stop()

    assert asyncio.run(options()) == (32768, 10, 500)


def test_by_default_a_fetch_is_answered_with_the_first_record():
    assert KafkaSettings(bootstrap_servers="x:1").fetch_min_bytes == 1
