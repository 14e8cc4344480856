"""aiokafka clients built from ``[kafka]`` settings, and what every part of the transport shares.

:func:`kafka_client_options` is the one place connection and security settings become
client options; the command-line tools build their clients from it as well.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from coalmine._exceptions import TransportError
from coalmine.bus.base import make_record

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator

    from coalmine.bus.base import Record
    from coalmine.config.models import KafkaSettings

__all__ = [
    "Clients",
    "IsolationLevel",
    "bounded",
    "describe",
    "group_consumer",
    "kafka_client_options",
    "log",
    "ms",
    "producer",
    "reader",
    "to_record",
]

log = logging.getLogger("coalmine.bus.kafka")
"""The transport's one logger: a line reads the same whichever part of it wrote it."""

METADATA_MAX_AGE_MS = 30_000
"""How often a consumer refreshes metadata: a topic created later is picked up by then."""
_METADATA_RETRY_PAUSE = 0.5
"""Seconds between the consumer's metadata updates while no broker answers them."""

IsolationLevel = Literal["read_committed", "read_uncommitted"]


@dataclass(slots=True)
class Clients:
    """The transport's aiokafka clients while it runs (None otherwise), shared by its parts."""

    consumer: Any = None
    producer: Any = None
    admin: Any = None


def ms(seconds: float) -> int:
    """``seconds`` as the whole milliseconds aiokafka takes, at least 1."""
    return max(1, round(seconds * 1000))


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """A TLS context from the ``ssl_*`` settings, for SSL and SASL_SSL."""
    if not settings.security_protocol.endswith("SSL"):
        return None
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.ssl_cafile,
        certfile=settings.ssl_certfile,
        keyfile=settings.ssl_keyfile,
        password=(
            settings.ssl_password.get_secret_value() if settings.ssl_password is not None else None
        ),
    )
    context.check_hostname = settings.ssl_check_hostname
    return context


def kafka_client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by every consumer, producer and admin client.

    Build it right at the client's constructor and drop it: it holds the SASL password.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "request_timeout_ms": ms(settings.request_timeout),
        "security_protocol": settings.security_protocol,
        "ssl_context": _ssl_context(settings),
    }
    if settings.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options


def producer(settings: KafkaSettings) -> Any:
    """The transport's producer: every publish acknowledged by all in-sync replicas."""
    return AIOKafkaProducer(
        **kafka_client_options(settings),
        acks="all",
        enable_idempotence=settings.idempotent_producer,
        transactional_id=settings.transactional_id,
        max_request_size=settings.max_request_bytes,
    )


def group_consumer(
    settings: KafkaSettings,
    group_id: str,
    auto_offset_reset: str,
    session_timeout: float,
) -> Any:
    """A member of ``group_id`` that commits only when told to."""
    consumer = AIOKafkaConsumer(
        **kafka_client_options(settings),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        max_poll_records=settings.max_poll_records,
        fetch_max_wait_ms=ms(settings.fetch_max_wait),
        fetch_min_bytes=settings.fetch_min_bytes,
        session_timeout_ms=ms(session_timeout),
        heartbeat_interval_ms=ms(session_timeout / 3),
        metadata_max_age_ms=METADATA_MAX_AGE_MS,
        group_instance_id=settings.group_instance_id,
        # Range gives each member the same partition numbers of every topic (equal
        # counts): a service's deploy events and metrics stay together.
        partition_assignment_strategy=(RangePartitionAssignor,),
    )
    _pace_failed_metadata_updates(consumer._client)  # noqa: SLF001 - see the function
    return consumer


def reader(settings: KafkaSettings, isolation_level: IsolationLevel, **options: Any) -> Any:
    """A consumer outside any group, reading from the beginning of what it is assigned."""
    return AIOKafkaConsumer(
        **kafka_client_options(settings),
        isolation_level=isolation_level,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **options,
    )


def _pace_failed_metadata_updates(client: Any, pause: float = _METADATA_RETRY_PAUSE) -> None:
    """Make a failed metadata update of ``client`` answer its waiters only after ``pause``.

    aiokafka's fetcher asks for a metadata update whenever a partition has no known leader
    and waits for it with no backoff; with every broker refusing connections the update
    fails at once, so it spins (thousands of attempts a second, two log lines each, a
    core busy) until a broker is back. Waiting here paces every caller of the update.
    """
    update = client._metadata_update  # noqa: SLF001 - aiokafka has no option for this

    async def paced(cluster: Any, topics: Any) -> bool:
        ok = bool(await update(cluster, topics))
        if not ok:
            await asyncio.sleep(pause)
        return ok

    client._metadata_update = paced  # noqa: SLF001


def describe(error: BaseException) -> str:
    """``error`` as one line: its type, then its text unless the text names the type."""
    name, text = type(error).__name__, str(error)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


@asynccontextmanager
async def bounded(seconds: float, what: str) -> AsyncIterator[None]:
    """Turn a timeout or a Kafka/socket error inside the block into ``TransportError``."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as err:
        raise TransportError(f"{what}: no answer within {seconds:g}s") from err
    except (KafkaError, OSError) as err:
        raise TransportError(f"{what}: {describe(err)}") from err


def to_record(message: Any) -> Record:
    """The :class:`~coalmine.bus.base.Record` of one aiokafka ``ConsumerRecord``."""
    value, headers = message.value, message.headers
    return make_record(
        message.topic,
        value if value is not None else b"",
        message.key,
        tuple([(name, data or b"") for name, data in headers]) if headers else (),
        message.partition,
        message.offset,
        message.timestamp,
    )
