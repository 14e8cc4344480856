"""Errors about the broker that name their fix."""

from __future__ import annotations

import pytest

from coalmine._exceptions import TransportError
from coalmine.bus.kafka import KafkaTransport
from coalmine.config.models import KafkaSettings
from tests.brokers import Tansu


async def test_a_broker_without_the_idempotent_producer_is_named_with_the_fix() -> None:
    # tansu answers every request but InitProducerId, as a broker without it does.
    async with Tansu() as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap, request_timeout=10.0)
        transport = KafkaTransport(settings, [], produce=["verdicts"])
        with pytest.raises(TransportError) as raised:
            await transport.start()
        message = str(raised.value)
        assert "answers but refused a producer id" in message
        assert "[kafka] idempotent_producer = false" in message
        assert "COALMINE_KAFKA__IDEMPOTENT_PRODUCER=false" in message
        # Without the idempotent producer the same broker is fine.
        plain = KafkaTransport(
            settings.model_copy(update={"idempotent_producer": False}), [], produce=["verdicts"]
        )
        await plain.start()
        await plain.stop()
